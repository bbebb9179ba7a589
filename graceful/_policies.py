"""Pure policies: functions of their arguments, with no I/O, tested as tables."""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Iterable

#: Request headers that proxies add and direct callers (curl in a preStop hook, the kubelet) never
#: send, lower case; any header starting with one of ``PROXY_HEADER_PREFIXES`` counts too. Checked
#: against the real programs (docs/architecture.md, "Who may shut down"):
#: - Envoy's HTTP connection manager adds x-forwarded-proto, x-request-id and
#:   x-envoy-expected-rq-timeout-ms with its default config; with ``use_remote_address``
#:   x-forwarded-for and x-envoy-external-address; Istio's sidecars x-forwarded-client-cert and
#:   x-envoy-peer-metadata*. x-forwarded-proto stays even with ``suppress_envoy_headers``.
#: - nginx adds nothing of its own (``proxy_pass`` sends Host and ``Connection: close``); the usual
#:   configs add X-Real-IP and X-Forwarded-For/-Proto, ingress-nginx also X-Request-ID and
#:   X-Original-Forwarded-For.
#: - HAProxy in ``mode http`` adds nothing unless ``option forwardfor`` (X-Forwarded-For) or
#:   ``option forwarded`` (RFC 7239 Forwarded, 2.7+).
#: - Traefik and Caddy add X-Forwarded-*; Via is the forwarding mark of RFC 9110 section 7.6.3.
#: An L4 proxy (HAProxy ``mode tcp``, Envoy ``tcp_proxy``) adds nothing: only the address tells.
PROXY_HEADERS = frozenset({"forwarded", "via", "x-real-ip", "x-request-id", "x-original-forwarded-for"})
PROXY_HEADER_PREFIXES = ("x-forwarded-", "x-envoy-")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str | None) -> bool:
    """Whether an address is on loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback).

    A UNIX-socket peer (no address) is *not* loopback: a reverse proxy on the same host often
    forwards outside traffic over a UNIX socket. Names ("localhost") are not addresses.
    """
    address = _address(host) if host else None
    return address is not None and address.is_loopback


def is_forwarded(header_names: Iterable[str]) -> bool:
    """Whether a request carries a header that a proxy adds (``PROXY_HEADERS``, any case)."""
    for name in header_names:
        lower = name.lower()
        if lower in PROXY_HEADERS or lower.startswith(PROXY_HEADER_PREFIXES):
            return True
    return False


def is_direct_local(*, client_host: str | None, server_host: str | None, forwarded: bool) -> bool:
    """Whether a request comes straight from a process on this host, not through a proxy.

    direct = not forwarded
             and the peer is on loopback
             and the connection arrived on a loopback address, where the server says which one

    ``server_host`` is the connection's local address. None, or an unspecified address (0.0.0.0,
    ::: a server that reports its listener instead), means the server does not say: then only the
    first two count. The third catches what headers cannot: Istio's inbound sidecar connects from
    127.0.0.6 to the pod IP, and an L4 proxy adds no header at all. A proxy on this host that
    connects to 127.0.0.1 without adding a header stays indistinguishable (see the README).
    """
    if forwarded or not is_loopback(client_host):
        return False
    if server_host is None:
        return True
    address = _address(server_host)
    if address is not None and address.is_unspecified:
        return True
    return address is not None and address.is_loopback


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def may_shutdown(
    *,
    client_host: str | None,
    server_host: str | None,
    forwarded: bool,
    authorization: str | None,
    token: str | None,
    trust_loopback: bool,
) -> bool:
    """Whether a caller is trusted: may start the drain, see /healthz detail (and, to come, metrics).

    allowed = (token configured and the request's bearer token equals it, compared in constant time)
              or (trust_loopback and is_direct_local(client_host, server_host, forwarded))
    A wrong token is refused even from loopback: a caller that sends one meant to authenticate.
    """
    provided = bearer_token(authorization)
    if provided is not None:
        return token is not None and hmac.compare_digest(provided.encode(), token.encode())
    return trust_loopback and is_direct_local(
        client_host=client_host, server_host=server_host, forwarded=forwarded
    )


def drain_deadline(drain_started_at: float | None, drain_delay: float) -> float | None:
    """When serving ends: drain start + delay (None while not draining)."""
    return None if drain_started_at is None else drain_started_at + drain_delay


def drain_notice_seconds(drain_started_at: float | None, drain_delay: float, now: float) -> int:
    """Whole seconds of drain delay left, the value of the ``Graceful-Drain`` response header.

    seconds = max(0, ceil(drain_started_at + drain_delay - now)); 0 when no drain began.
    Rounded up, so a client reads 0 only once the delay is over (the listener may close any moment).
    """
    deadline = drain_deadline(drain_started_at, drain_delay)
    return 0 if deadline is None else max(0, math.ceil(deadline - now))


def query_flag(query: str, name: str) -> bool:
    """Whether ``name`` is set to a true value in a URL query (``wait``, ``wait=1``, ``wait=true``)."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value.lower() in ("", "1", "true", "yes")
    return False


#: Share of the drain delay after which the last arrival means the delay is too short (issue 13).
LATE_ARRIVAL_SHARE = 0.8
#: The suggested delay keeps at least this much room after the last arrival measured.
LATE_ARRIVAL_ROOM = 1.0


def drain_delay_advice(
    last_arrival: float | None, drain_delay: float, *, share: float = LATE_ARRIVAL_SHARE
) -> tuple[bool, float | None, float | None]:
    """Whether the drain delay is too short for the propagation lag this drain measured.

    ``last_arrival``: seconds from the drain's start to the last new request (None: none came).
    Returns ``(too_short, fraction, suggested)``:
        fraction  = last_arrival / drain_delay                     (None without an arrival or a delay)
        too_short = last_arrival > share * drain_delay             (share 0.8: the 80 % rule)
        suggested = ceil_0.1(max(last_arrival / share, last_arrival + LATE_ARRIVAL_ROOM)) if too_short
    so the suggested delay would not warn again at the same lag, and leaves a second at least.
    """
    if last_arrival is None:
        return False, None, None
    fraction = last_arrival / drain_delay if drain_delay > 0 else None
    if last_arrival <= share * drain_delay:
        return False, fraction, None
    wanted = max(last_arrival / share, last_arrival + LATE_ARRIVAL_ROOM)
    return True, fraction, math.ceil(round(wanted * 10, 6)) / 10


def drain_report_message(fields: dict[str, object]) -> str:
    """The text of a drain report, from its fields (``too_short`` adds the advice)."""

    def seconds(name: str) -> str:
        value = fields.get(name)
        return "-" if not isinstance(value, (int, float)) else f"{value:.2f} s"

    text = (
        f"graceful: drain report ({fields.get('reason')}): delay {seconds('drain_delay')}, "
        f"{fields.get('requests_during_delay')} requests served during it, "
        + (
            "no new request after the drain began"
            if fields.get("last_arrival_seconds") is None
            else f"last new request {seconds('last_arrival_seconds')} after the drain began"
        )
        + f"; {fields.get('in_flight_at_close')} in "
        f"flight when the listener closed, finished in {seconds('finish_seconds')}, "
        f"{fields.get('cut')} cut"
    )
    if fields.get("exit_status") is not None:
        text += f"; exit status {fields['exit_status']}"
    if fields.get("too_short"):
        arrival, delay = fields["last_arrival_seconds"], fields["drain_delay"]
        assert isinstance(arrival, float) and isinstance(delay, (int, float))
        fraction = fields.get("last_arrival_fraction")
        share = f"{fraction * 100:.0f} %" if isinstance(fraction, float) else "all"
        text += (
            f". The drain delay is too short for this cluster: the last request arrived {arrival:.1f} s "
            f"after the drain began, {share} of the {delay:.1f} s drain delay: raise "
            f"GRACEFUL_DRAIN_DELAY to at least {fields['suggested_drain_delay']:.1f} s"
        )
    return text
