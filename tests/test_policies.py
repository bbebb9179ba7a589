"""Pure policies, as tables."""

from __future__ import annotations

import pytest

from graceful._policies import bearer_token, is_loopback, may_shutdown, query_flag

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
    """/shutdown is refused to everyone but loopback callers and holders of the configured token."""
    assert (
        may_shutdown(
            client_host=client, authorization=authorization, token=token, trust_loopback=trust_loopback
        )
        is allowed
    )


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
