"""Pure policies: functions of their arguments, with no I/O, tested as tables."""

from __future__ import annotations

import hmac
import ipaddress


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is on loopback (127.0.0.0/8, ::1, or IPv4-mapped loopback).

    A UNIX-socket peer (no address) is *not* loopback: a reverse proxy on the same host often
    forwards outside traffic over a UNIX socket.
    """
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def may_shutdown(
    *, client_host: str | None, authorization: str | None, token: str | None, trust_loopback: bool
) -> bool:
    """Whether a caller may start the drain.

    allowed = (token configured and the request's bearer token equals it, compared in constant time)
              or (trust_loopback and the peer is on loopback)
    A wrong token is refused even from loopback: a caller that sends one meant to authenticate.
    """
    provided = bearer_token(authorization)
    if provided is not None:
        return token is not None and hmac.compare_digest(provided.encode(), token.encode())
    return trust_loopback and is_loopback(client_host)


def drain_deadline(drain_started_at: float | None, drain_delay: float) -> float | None:
    """When serving ends: drain start + delay (None while not draining)."""
    return None if drain_started_at is None else drain_started_at + drain_delay


def query_flag(query: str, name: str) -> bool:
    """Whether ``name`` is set to a true value in a URL query (``wait``, ``wait=1``, ``wait=true``)."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value.lower() in ("", "1", "true", "yes")
    return False
