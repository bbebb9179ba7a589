"""Endpoint sources: what ``Transport(endpoints=...)`` turns into a live set of addresses.

``make_source`` accepts, for ``endpoints``:

| value                               | source         | refreshed                                  |
|-------------------------------------|----------------|--------------------------------------------|
| ``["10.0.0.5:8000", "[::1]:8000"]`` | static list    | never (validated at construction)          |
| ``"10.0.0.5:8000,10.0.0.6:8000"``   | static list    | never                                      |
| ``"dns:///api.internal:8000"``      | DnsSource      | every ``refresh`` s, system resolver       |
| ``"dns://10.96.0.10/api:8000"``     | DnsSource      | every ``refresh`` s, that DNS server       |
| ``"file:///run/endpoints"``         | FileSource     | when the file changes (stat polled, ≤ 1 s) |
| a callable returning addresses      | CallableSource | every ``refresh`` s                        |
| an ``EndpointSource``               | itself         | as it decides                              |

The ``dns://SERVER[:PORT]/name:port`` form is gRPC's naming (doc/naming.md): the authority is the
DNS server to ask, not part of the name. It queries A and AAAA through dnspython (the ``client``
extra); ``dns:///name:port`` uses the system resolver (``getaddrinfo``, so /etc/hosts and the search
domains of /etc/resolv.conf apply).

A resolution that fails (an exception, or no address at all) keeps the last good set: a registry or
DNS server that is down for a moment must not empty the balancer. It is logged once at WARNING on
the ``graceful.client`` logger, and once at INFO when a resolution succeeds again. Before the first
good set ``current()`` and ``refresh_now()`` return None; the transport then fails the request with
an error naming the source.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from graceful._settings import SettingsError
from graceful.client._policies import _check_positive_seconds

if TYPE_CHECKING:
    import dns.resolver

logger = logging.getLogger("graceful.client")

#: Re-resolve this often by default: Kubernetes' endpoint propagation takes seconds, and gRPC's
#: DNS resolver is no faster (it re-resolves at most every 30 s, and on connection failures).
DEFAULT_REFRESH = 5.0
#: A file is stat()ed at most this often, however long ``refresh`` is: a stat is cheap, and the
#: agent that writes the file (a sidecar, consul-template) expects its change to be seen at once.
FILE_POLL_CAP = 1.0
#: dnspython gives up on a query after this long. A DNS server on the cluster network answers in
#: milliseconds; this bounds how long ``refresh_now()`` can block on one that is gone.
DNS_TIMEOUT = 2.0
DNS_PORT = 53

# A host name (RFC 1123 labels, "_" allowed as in SRV-style names, a trailing root dot allowed) or
# a dotted IPv4 address; IPv6 goes in brackets.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_IPV4ISH = re.compile(r"[0-9.]+")
_FORMS = "expected host:port or [IPv6]:port"


@dataclasses.dataclass(frozen=True, order=True)
class Address:
    """One endpoint: a host (an IPv4 or IPv6 address without brackets, or a name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``"10.0.0.5:8000"``, ``"api:8000"`` or ``"[::1]:8000"`` as an Address.

    Raises ValueError, naming the text and what is wrong with it, for anything else: a missing
    port, a port outside 1..65535, an IPv6 address without brackets, a malformed host.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an address: {_FORMS} (a string)")
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{text!r} is not an address: an IPv6 address needs ']:port' after it")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} is not an address: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not an address: the port is missing; {_FORMS}")
        if ":" in host:
            raise ValueError(f"{text!r} is not an address: an IPv6 address needs brackets, '[{host}]:{port}'")
        if not _NAME.fullmatch(host):
            raise ValueError(f"{text!r} is not an address: {host!r} is not a host name or IPv4 address")
        if _IPV4ISH.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{text!r} is not an address: {host!r} is not an IPv4 address") from None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"{text!r} is not an address: the port {port!r} is not a whole number from 1 to 65535"
        )
    return Address(host, int(port))


def _normalize(addresses: Iterable[str | Address]) -> tuple[Address, ...]:
    """Sorted and deduplicated; strings parsed (ValueError on the first bad one)."""
    return tuple(sorted({a if isinstance(a, Address) else parse_address(a) for a in addresses}))


@runtime_checkable
class EndpointSource(Protocol):
    """A live set of addresses. ``make_source`` builds one; any object with these members will do."""

    #: For logs and errors: "dns:///api.internal:8000".
    description: str

    def current(self) -> tuple[Address, ...] | None:
        """The last good set (sorted, deduplicated), never blocking: None before the first resolution.
        When a refresh is due it starts one in the background (one at a time, a daemon thread)."""

    def refresh_now(self) -> tuple[Address, ...] | None:
        """Resolve now, blocking (used for the first request, or by an async caller via a worker thread)."""

    def close(self) -> None:
        """Start no more refreshes (one in flight finishes on its own; its thread is a daemon)."""


class StaticSource:
    """A fixed list, validated at construction."""

    def __init__(self, addresses: Iterable[str | Address], *, description: str | None = None) -> None:
        addresses = list(addresses)
        for entry in addresses:
            if not isinstance(entry, Address):
                try:
                    parse_address(entry)
                except ValueError as exc:
                    raise SettingsError(field="endpoints", message=f"endpoints contains {exc}") from None
        self._addresses = _normalize(addresses)
        if not self._addresses:
            raise SettingsError(
                field="endpoints",
                message="endpoints=[] is empty; allowed: at least one host:port, or a dns://, file:// "
                "URL, a callable or an EndpointSource",
            )
        self.description = description or ",".join(map(str, self._addresses))

    def current(self) -> tuple[Address, ...]:
        return self._addresses

    def refresh_now(self) -> tuple[Address, ...]:
        return self._addresses

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"StaticSource({self.description!r})"


class PollingSource:
    """A source that calls ``resolve`` again every ``interval`` seconds; the others build on it.

    State changes happen only inside a resolution, and resolutions run one at a time (``_resolving``
    is held by whichever thread resolves: the background thread ``current()`` started, or the
    caller of ``refresh_now()``).
    """

    def __init__(
        self,
        description: str,
        resolve: Callable[[], Iterable[str | Address]],
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self._resolve = resolve
        self._interval = interval
        self._clock = clock
        self._addresses: tuple[Address, ...] | None = None
        self._due = -math.inf  # the first current() starts a resolution
        self._resolutions = 0
        self._failing = False
        self._closed = False
        self._resolving = threading.Lock()

    def current(self) -> tuple[Address, ...] | None:
        if not self._closed and self._clock() >= self._due and self._resolving.acquire(blocking=False):
            try:  # the lock passes to the thread, which releases it (a Lock may be released by any thread)
                threading.Thread(
                    target=self._resolve_in_background,
                    name=f"graceful-endpoints {self.description}",
                    daemon=True,
                ).start()
            except BaseException:
                self._resolving.release()
                raise
        return self._addresses

    def refresh_now(self) -> tuple[Address, ...] | None:
        seen = self._resolutions
        with self._resolving:
            # A resolution that ended while this caller waited for it is as fresh as a new one.
            if self._resolutions == seen:
                self._resolve_once()
            return self._addresses

    def close(self) -> None:
        self._closed = True

    @property
    def resolutions(self) -> int:
        """How many resolutions have ended, good or failed (for tests and metrics)."""
        return self._resolutions

    def _resolve_in_background(self) -> None:
        try:
            self._resolve_once()
        finally:
            self._resolving.release()

    def _resolve_once(self) -> None:
        """One resolution; the caller holds ``_resolving``."""
        try:
            addresses = _normalize(self._resolve())
            if not addresses:
                raise LookupError("no addresses")
        except Exception as exc:  # any failure of a foreign resolver keeps the last good set
            if not self._failing:
                self._failing = True
                kept = (
                    "no addresses yet"
                    if self._addresses is None
                    else f"keeping the last good set of {len(self._addresses)}"
                )
                logger.warning(
                    "endpoints %s: resolution failed (%s: %s); %s",
                    self.description,
                    type(exc).__name__,
                    exc,
                    kept,
                )
        else:
            if self._failing:
                self._failing = False
                logger.info("endpoints %s: resolved again (%d addresses)", self.description, len(addresses))
            if addresses != self._addresses:
                logger.debug("endpoints %s: now %s", self.description, ", ".join(map(str, addresses)))
            self._addresses = addresses
        finally:
            self._resolutions += 1
            self._due = self._clock() + self._interval

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


class DnsSource(PollingSource):
    """A name's A and AAAA records: through the system resolver, or asking ``server`` (dnspython)."""

    def __init__(
        self,
        name: str,
        port: int,
        *,
        server: Address | None = None,
        refresh: float = DEFAULT_REFRESH,
        timeout: float = DNS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.port, self.server = name, port, server
        authority = "" if server is None else str(server)
        resolve = self._ask_system if server is None else self._ask_server
        super().__init__(f"dns://{authority}/{Address(name, port)}", resolve, interval=refresh, clock=clock)
        self._resolver: dns.resolver.Resolver | None = None
        if server is not None:
            try:
                import dns.resolver
            except ImportError as exc:
                raise ImportError(
                    f"endpoints={self.description!r} asks a DNS server through dnspython, which is not "
                    "installed: pip install 'graceful-rollout[client]'"
                ) from exc
            self._resolver = dns.resolver.Resolver(configure=False)  # no /etc/resolv.conf, no search list
            self._resolver.nameservers = [server.host]
            self._resolver.port = server.port
            self._resolver.timeout = self._resolver.lifetime = timeout

    def _ask_system(self) -> list[Address]:
        infos = socket.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        return [Address(str(info[4][0]), self.port) for info in infos]

    def _ask_server(self) -> list[Address]:
        assert self._resolver is not None
        found = []
        for rdtype in ("A", "AAAA"):
            # A name with only A (or only AAAA) records answers the other type with no data: not an
            # error. Anything else (NXDOMAIN, a timeout) fails the whole resolution, since half an
            # answer would drop the endpoints of the family that did not answer.
            answer = self._resolver.resolve(self.name, rdtype, search=False, raise_on_no_answer=False)
            found += [Address(rdata.to_text(), self.port) for rdata in answer]
        return found


class FileSource(PollingSource):
    """One address per line; ``#`` starts a comment. Re-read when its stat (mtime, size, inode) changes.

    The agent writing it (a sidecar, consul-template) should write a new file and rename it over
    the old one (rename(2) is atomic); a half-written file fails to parse and keeps the last good set
    until the next poll.
    """

    def __init__(
        self, path: str, *, refresh: float = DEFAULT_REFRESH, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._stat: tuple[int, int, int, int] | None = None
        super().__init__(f"file://{path}", self._read, interval=min(refresh, FILE_POLL_CAP), clock=clock)

    def _read(self) -> Iterable[str | Address]:
        stat = os.stat(self.path)
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)
        if signature == self._stat and self._addresses is not None:
            return self._addresses
        with open(self.path, encoding="utf-8") as file:
            lines = [line.partition("#")[0].strip() for line in file]
        addresses = []
        for number, line in enumerate(lines, 1):
            if line:
                try:
                    addresses.append(parse_address(line))
                except ValueError as exc:
                    raise ValueError(f"line {number}: {exc}") from None
        self._stat = signature
        return addresses


class CallableSource(PollingSource):
    """Whatever ``fetch()`` returns (strings or Addresses), called every ``refresh`` seconds.

    For a service registry; with Consul's health API, only the instances passing their checks::

        def consul(name: str) -> Callable[[], list[str]]:
            def fetch() -> list[str]:
                url = f"http://127.0.0.1:8500/v1/health/service/{name}"
                entries = httpx.get(url, params={"passing": "true"}, timeout=2.0).raise_for_status().json()
                return [
                    f"{e['Service']['Address'] or e['Node']['Address']}:{e['Service']['Port']}"
                    for e in entries
                ]
            return fetch

        Transport(endpoints=consul("api"))
    """

    def __init__(
        self,
        fetch: Callable[[], Iterable[str | Address]],
        *,
        refresh: float = DEFAULT_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        name = getattr(fetch, "__qualname__", None) or repr(fetch)
        super().__init__(f"callable {name}", fetch, interval=refresh, clock=clock)


def make_source(
    endpoints: str | Sequence[str | Address] | Callable[[], Iterable[str | Address]] | EndpointSource,
    *,
    refresh: float = DEFAULT_REFRESH,
) -> EndpointSource:
    """The EndpointSource for ``endpoints`` (the table of this module's docstring).

    Raises SettingsError (field ``endpoints`` or ``refresh``) for a value that cannot work.
    """
    _check_positive_seconds("refresh", refresh)
    if isinstance(endpoints, str):
        return _source_from_text(endpoints, refresh)
    if isinstance(endpoints, EndpointSource):
        return endpoints
    if callable(endpoints):
        return CallableSource(endpoints, refresh=refresh)
    if isinstance(endpoints, Sequence):
        return StaticSource(endpoints)
    raise SettingsError(field="endpoints", message=f"endpoints={endpoints!r} is not usable; {_ALLOWED}")


_ALLOWED = (
    "allowed: a list of host:port, 'dns:///name:port', 'dns://SERVER[:PORT]/name:port', "
    "'file:///path', a callable returning addresses, or an EndpointSource"
)


def _source_from_text(text: str, refresh: float) -> EndpointSource:
    scheme, sep, rest = text.partition("://")
    if not sep:
        return StaticSource(entry.strip() for entry in text.split(","))
    if scheme == "file":
        if not rest.startswith("/") or rest.endswith("/"):
            raise SettingsError(
                field="endpoints",
                message=f"endpoints={text!r} is not a file URL; "
                "allowed: file:///absolute/path (three slashes)",
            )
        return FileSource(rest, refresh=refresh)
    if scheme == "dns":
        authority, slash, target = rest.partition("/")
        try:
            if not slash:
                raise ValueError("expected dns:///name:port or dns://SERVER[:PORT]/name:port")
            address = parse_address(target)
            server = _parse_server(authority) if authority else None
        except ValueError as exc:
            raise SettingsError(
                field="endpoints", message=f"endpoints={text!r} is not usable: {exc}"
            ) from None
        return DnsSource(address.host, address.port, server=server, refresh=refresh)
    raise SettingsError(
        field="endpoints", message=f"endpoints={text!r} has an unknown scheme {scheme!r}; {_ALLOWED}"
    )


def _parse_server(authority: str) -> Address:
    """The DNS server of ``dns://SERVER[:PORT]/``: an IP address, port 53 unless given."""
    if authority.startswith("[") and authority.endswith("]"):  # "[v6]"
        server = Address(authority[1:-1], DNS_PORT)
    elif authority.startswith("[") or authority.count(":") == 1:  # "[v6]:port", "v4:port", "name:port"
        server = parse_address(authority)
    else:  # "v4", "name", or a bare "v6"
        server = Address(authority, DNS_PORT)
    try:
        ipaddress.ip_address(server.host)
    except ValueError:
        raise ValueError(f"the DNS server {server.host!r} must be an IP address") from None
    return server
