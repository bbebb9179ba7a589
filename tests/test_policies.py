"""Pure policies, as tables."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graceful._policies import (
    PROXY_HEADERS,
    bearer_token,
    drain_delay_advice,
    drain_notice_seconds,
    drain_report_message,
    is_direct_local,
    is_forwarded,
    is_loopback,
    may_shutdown,
    query_flag,
)

TOKEN = "s3cret-token-0123456789"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("localhost", False),  # names are not addresses; the server always gives addresses
    ],
)
def test_is_loopback(host: str | None, expected: bool) -> None:
    """Only loopback addresses count; a UNIX-socket peer (no address) does not."""
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("Basic abc", None), ("Bearer ", None), (None, None)],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    """The token is read from the Bearer scheme only (RFC 6750 2.1), case-insensitively."""
    assert bearer_token(header) == expected


@pytest.mark.parametrize(
    ("client", "authorization", "token", "trust_loopback", "allowed"),
    [
        ("10.0.0.9", None, None, True, False),  # remote, nothing configured: refused
        ("10.0.0.9", None, TOKEN, True, False),  # remote without the token
        ("10.0.0.9", f"Bearer {TOKEN}", TOKEN, True, True),  # remote with the token
        ("10.0.0.9", "Bearer wrong", TOKEN, True, False),
        ("127.0.0.1", None, None, True, True),  # loopback trusted by default
        ("127.0.0.1", None, None, False, False),  # unless trust is off (a local proxy)
        ("127.0.0.1", None, TOKEN, False, False),
        ("127.0.0.1", f"Bearer {TOKEN}", TOKEN, False, True),
        ("127.0.0.1", "Bearer wrong", TOKEN, True, False),  # a wrong token is refused even locally
        ("127.0.0.1", "Bearer anything", None, True, False),  # no token configured: a bearer is wrong
        (None, None, None, True, False),  # UNIX-socket peer
    ],
)
def test_may_shutdown(
    client: str | None, authorization: str | None, token: str | None, trust_loopback: bool, allowed: bool
) -> None:
    """/shutdown is refused to everyone but direct loopback callers and holders of the configured token."""
    assert (
        may_shutdown(
            client_host=client,
            server_host=client,
            forwarded=False,
            authorization=authorization,
            token=token,
            trust_loopback=trust_loopback,
        )
        is allowed
    )


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        # Envoy's HTTP connection manager, default config (seen with envoy 1.40)
        (
            [
                "host",
                "user-agent",
                "accept",
                "x-forwarded-proto",
                "x-request-id",
                "x-envoy-expected-rq-timeout-ms",
            ],
            True,
        ),
        (["x-forwarded-proto"], True),  # Envoy with suppress_envoy_headers and no request id
        (["x-envoy-external-address"], True),  # Envoy with use_remote_address
        (["X-Forwarded-For"], True),  # HAProxy option forwardfor, nginx's usual config
        (["X-Real-IP"], True),  # nginx's usual config
        (["Forwarded"], True),  # RFC 7239 (HAProxy option forwarded)
        (["Via"], True),  # RFC 9110 7.6.3
        (["x-forwarded-client-cert"], True),  # Istio with mTLS
        (["x-request-id"], True),  # Envoy, ingress-nginx
        (["host", "user-agent", "accept"], False),  # curl in a preStop exec hook
        (["host", "user-agent", "accept-encoding", "connection"], False),  # the kubelet's httpGet
        (["host", "connection", "user-agent", "accept"], False),  # nginx's default proxy_pass: no sign
        (["authorization", "content-length", "x-forwarded"], False),  # only the listed names and prefixes
        ([], False),
    ],
)
def test_is_forwarded(names: list[str], expected: bool) -> None:
    """A header that a proxy adds marks the request as forwarded; what direct callers send does not."""
    assert is_forwarded(names) is expected


@pytest.mark.parametrize(
    ("client", "server", "forwarded", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", False, True),  # curl localhost:PORT in the pod
        ("::1", "::1", False, True),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", False, True),  # dual-stack listener
        ("127.0.0.1", None, False, True),  # the server does not say (waitress, wsgiref)
        ("127.0.0.1", "0.0.0.0", False, True),  # a server reporting its listener: does not say either
        ("127.0.0.1", "::", False, True),
        ("127.0.0.6", "10.1.2.3", False, False),  # Istio inbound passthrough (L4): to the pod IP
        ("127.0.0.1", "192.0.2.2", False, False),
        ("127.0.0.1", "127.0.0.1", True, False),  # an HTTP proxy on this host, connecting to loopback
        ("127.0.0.1", "/run/app.sock", False, False),  # a UNIX socket path is no loopback address
        ("127.0.0.1", "", False, False),  # a socket that could not say: refused
        ("127.0.0.1", "testserver", False, False),  # a name, not an address
        ("10.0.0.9", "127.0.0.1", False, False),
        (None, None, False, False),
    ],
)
def test_is_direct_local(client: str | None, server: str | None, forwarded: bool, expected: bool) -> None:
    """Direct local = loopback peer, no proxy header, and arrived on loopback where the server says."""
    assert is_direct_local(client_host=client, server_host=server, forwarded=forwarded) is expected


def _unspecified(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_unspecified


addresses = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
    st.sampled_from(
        ["127.0.0.1", "127.0.0.6", "::1", "0.0.0.0", "::ffff:0.0.0.0", "localhost", "", "/tmp/s.sock"]
    ),
)


@given(
    client=addresses,
    server=addresses,
    names=st.lists(
        st.sampled_from([*PROXY_HEADERS, "x-forwarded-host", "x-envoy-attempt-count"]), min_size=1
    ),
    others=st.lists(st.sampled_from(["host", "accept", "user-agent", "content-length"])),
    trust_loopback=st.booleans(),
)
def test_forwarded_requests_need_the_token(
    client: str | None, server: str | None, names: list[str], others: list[str], trust_loopback: bool
) -> None:
    """Whatever the addresses, a request with a proxy header is trusted with the token and only then."""
    forwarded = is_forwarded([*others, *names])
    common = {"client_host": client, "server_host": server, "forwarded": forwarded, "token": TOKEN}
    assert forwarded
    assert not may_shutdown(**common, authorization=None, trust_loopback=trust_loopback)
    assert may_shutdown(**common, authorization=f"Bearer {TOKEN}", trust_loopback=trust_loopback)


@given(client=addresses, server=addresses)
def test_a_non_loopback_end_is_never_trusted_without_the_token(
    client: str | None, server: str | None
) -> None:
    """Either end off loopback (an address that is not unspecified) means: not a direct local caller."""
    trusted = is_direct_local(client_host=client, server_host=server, forwarded=False)
    server_says_other = server is not None and not is_loopback(server) and not _unspecified(server)
    if not is_loopback(client) or server_says_other:
        assert not trusted


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("wait=1", True),
        ("wait", True),
        ("a=b&wait=true", True),
        ("wait=0", False),
        ("", False),
        ("waits=1", False),
    ],
)
def test_query_flag(query: str, expected: bool) -> None:
    """?wait, ?wait=1 and ?wait=true ask /shutdown to hold its answer."""
    assert query_flag(query, "wait") is expected


@pytest.mark.parametrize(
    ("started", "delay", "now", "expected"),
    [
        (None, 5.0, 100.0, 0),  # no drain began
        (100.0, 5.0, 100.0, 5),  # at the start: the whole delay
        (100.0, 5.0, 100.001, 5),  # rounded up: 4.999 s left still reads 5
        (100.0, 5.0, 101.5, 4),
        (100.0, 5.0, 104.999, 1),  # never 0 while any of the delay is left
        (100.0, 5.0, 105.0, 0),  # the delay is over
        (100.0, 5.0, 130.0, 0),  # long over (finishing in-flight work): never negative
        (100.0, 0.0, 100.0, 0),  # no delay at all
        (100.0, 2.5, 100.0, 3),  # a fractional delay rounds up
        (100.0, 5.0, 99.0, 6),  # a clock read just before the stamp: the delay plus that
    ],
)
def test_drain_notice_seconds(started: float | None, delay: float, now: float, expected: int) -> None:
    """graceful-drain = max(0, ceil(started + delay - now)): whole seconds left, rounded up."""
    assert drain_notice_seconds(started, delay, now) == expected


@pytest.mark.parametrize(
    ("last_arrival", "drain_delay", "too_short", "fraction", "suggested"),
    [
        (None, 3.0, False, None, None),  # no request came during the drain
        (0.0, 3.0, False, 0.0, None),
        (2.0, 3.0, False, 2 / 3, None),
        (2.4, 3.0, False, 0.8, None),  # exactly 80 %: not late yet
        (2.41, 3.0, True, 2.41 / 3, 3.5),  # ceil(3.41)
        (2.7, 3.0, True, 0.9, 3.7),  # the example of issue 13: +1 s wins over /0.8 (3.375)
        (3.2, 3.0, True, 3.2 / 3, 4.2),  # after the delay: a keep-alive request, or a late listener close
        (12.0, 10.0, True, 1.2, 15.0),  # /0.8 wins for long lags: the next run would not warn again
        (0.5, 0.0, True, None, 1.5),  # no delay at all: any arrival is late
    ],
)
def test_drain_delay_advice(
    last_arrival: float | None,
    drain_delay: float,
    too_short: bool,
    fraction: float | None,
    suggested: float | None,
) -> None:
    """The 80 % rule and the suggested delay: max(last / 0.8, last + 1 s), rounded up to 0.1 s."""
    got = drain_delay_advice(last_arrival, drain_delay)
    assert got[0] is too_short
    assert got[1] == pytest.approx(fraction) if fraction is not None else got[1] is None
    assert got[2] == pytest.approx(suggested) if suggested is not None else got[2] is None
    if suggested is not None:
        assert drain_delay_advice(last_arrival, suggested)[0] is False  # following the advice settles it


def test_drain_report_message_says_how_much_to_raise_the_delay() -> None:
    """A late arrival adds the advice with the measured figures; an on-time one does not."""
    fields: dict[str, object] = {
        "reason": "SIGTERM", "drain_delay": 3.0, "requests_during_delay": 40, "last_arrival_seconds": 2.7,
        "in_flight_at_close": 1, "finish_seconds": 0.4, "cut": 0, "too_short": True,
        "last_arrival_fraction": 0.9, "suggested_drain_delay": 3.7,
    }  # fmt: skip
    text = drain_report_message(fields)
    assert "last request arrived 2.7 s after the drain began, 90 % of the 3.0 s drain delay" in text
    assert "raise GRACEFUL_DRAIN_DELAY to at least 3.7 s" in text
    assert "too short" not in drain_report_message({**fields, "too_short": False})
