"""Endpoint sources: address parsing, static lists, files, callables, the system resolver and a real
DNS server (dnsmasq, tests/dnsmasq.py) whose records change under the source."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graceful import SettingsError
from graceful.client._sources import (
    Address,
    CallableSource,
    DnsSource,
    EndpointSource,
    FileSource,
    StaticSource,
    make_source,
    parse_address,
)
from graceful.verify._cluster import _wait_until
from tests.dnsmasq import Dnsmasq, dnsmasq_binary

REFRESH = 0.2
WAIT = 5.0  # bound of every wait for a background refresh; they take about REFRESH


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.01) -> bool:
    """The harness's bounded poll, with this file's bound."""
    return _wait_until(condition, timeout, interval)


def addresses(*texts: str) -> tuple[Address, ...]:
    return tuple(sorted(parse_address(t) for t in texts))


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "graceful.client" and r.levelno == level]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("10.0.0.5:8000", "10.0.0.5", 8000, "10.0.0.5:8000"),
        ("api.internal:80", "api.internal", 80, "api.internal:80"),
        ("api.ns.svc.cluster.local.:443", "api.ns.svc.cluster.local.", 443, "api.ns.svc.cluster.local.:443"),
        ("_grpc.api:1", "_grpc.api", 1, "_grpc.api:1"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        ("[::1]:8000", "::1", 8000, "[::1]:8000"),
        ("[2001:db8::5]:443", "2001:db8::5", 443, "[2001:db8::5]:443"),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80, "[fe80::1%eth0]:80"),
    ],
)
def test_good_addresses_parse_and_print_back(text: str, host: str, port: int, shown: str) -> None:
    """host:port and [IPv6]:port parse to host (no brackets) and port, and print as they came."""
    address = parse_address(text)
    assert address == Address(host, port)
    assert str(address) == shown


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.5", "the port is missing"),
        ("", "the port is missing"),
        ("::1:8000", "an IPv6 address needs brackets, '[::1]:8000'"),
        ("[::1]8000", "needs ']:port' after it"),
        ("[::1]", "needs ']:port' after it"),
        ("[10.0.0.5]:80", "'10.0.0.5' is not an IPv6 address"),
        ("host:0", "the port '0' is not a whole number from 1 to 65535"),
        ("host:65536", "the port '65536' is not a whole number from 1 to 65535"),
        ("host:", "the port '' is not a whole number"),
        ("host:http", "the port 'http' is not a whole number"),
        ("host:-1", "the port '-1' is not"),
        ("host:\u0668\u0660", "is not a whole number"),  # Arabic-Indic digits: str.isdigit() says yes
        (":80", "'' is not a host name or IPv4 address"),
        ("ho st:80", "'ho st' is not a host name"),
        ("-api:80", "'-api' is not a host name"),
        ("http://api:80", "an IPv6 address needs brackets"),  # "http" + "//api" has two colons
        ("999.0.0.1:80", "'999.0.0.1' is not an IPv4 address"),
    ],
)
def test_bad_addresses_are_refused_saying_why(text: str, why: str) -> None:
    """A bad address raises ValueError naming the text and what is wrong with it."""
    with pytest.raises(ValueError, match="is not an address") as info:
        parse_address(text)
    assert repr(text) in str(info.value)
    assert why in str(info.value)


def test_addresses_sort_by_host_then_port() -> None:
    """Address is ordered (host, port), so a set of them has one canonical order."""
    assert sorted([Address("b", 1), Address("a", 2), Address("a", 1)]) == [
        Address("a", 1),
        Address("a", 2),
        Address("b", 1),
    ]


# -- make_source and static lists --------------------------------------------------------------------


def test_a_static_list_is_sorted_and_deduplicated() -> None:
    """A list of host:port is the set it names, sorted and without duplicates, from the start."""
    source = make_source(["10.0.0.6:80", "[::1]:80", "10.0.0.5:80", "10.0.0.6:80", Address("api", 81)])
    expected = addresses("10.0.0.5:80", "10.0.0.6:80", "[::1]:80", "api:81")
    assert source.current() == expected
    assert source.refresh_now() == expected
    assert isinstance(source, StaticSource)


def test_a_plain_string_is_a_comma_separated_static_list() -> None:
    """A string without a scheme (an environment variable's value) is a list separated by commas."""
    source = make_source("10.0.0.5:80, 10.0.0.6:80")
    assert source.current() == addresses("10.0.0.5:80", "10.0.0.6:80")


@pytest.mark.parametrize(
    ("endpoints", "field", "message"),
    [
        (
            ["10.0.0.5:80", "10.0.0.6"],
            "endpoints",
            "endpoints contains '10.0.0.6' is not an address: the port is missing",
        ),
        ([], "endpoints", "endpoints=[] is empty; allowed: at least one host:port"),
        ("10.0.0.5:80,", "endpoints", "endpoints contains '' is not an address"),
        (
            "consul://api",
            "endpoints",
            "endpoints='consul://api' has an unknown scheme 'consul'; allowed: a list of host:port",
        ),
        (
            "dns:///api.internal",
            "endpoints",
            "endpoints='dns:///api.internal' is not usable: 'api.internal' is not an address: the port is missing",
        ),
        ("dns://api.internal:80", "endpoints", "expected dns:///name:port or dns://SERVER[:PORT]/name:port"),
        ("dns://ns1.internal/api:80", "endpoints", "the DNS server 'ns1.internal' must be an IP address"),
        ("dns://10.96.0.10:0/api:80", "endpoints", "the port '0' is not a whole number from 1 to 65535"),
        ("file://endpoints.txt", "endpoints", "is not a file URL; allowed: file:///absolute/path"),
        ("file:///run/", "endpoints", "is not a file URL"),
        (42, "endpoints", "endpoints=42 is not usable; allowed:"),
    ],
)
def test_bad_endpoints_fail_at_construction(endpoints: object, field: str, message: str) -> None:
    """Every unusable ``endpoints`` raises SettingsError naming the field and the value."""
    with pytest.raises(SettingsError) as info:
        make_source(endpoints)  # type: ignore[arg-type]
    assert info.value.field == field
    assert message in str(info.value)


@pytest.mark.parametrize("refresh", [0, -1, 3601, float("nan"), "5", True])
def test_refresh_is_validated(refresh: object) -> None:
    """refresh must be more than 0 and at most an hour."""
    with pytest.raises(SettingsError, match="refresh=") as info:
        make_source(["10.0.0.5:80"], refresh=refresh)  # type: ignore[arg-type]
    assert info.value.field == "refresh"


@pytest.mark.parametrize(
    ("url", "server", "description"),
    [
        ("dns:///api.internal:8000", None, "dns:///api.internal:8000"),
        ("dns://10.96.0.10/api:80", Address("10.96.0.10", 53), "dns://10.96.0.10:53/api:80"),
        ("dns://127.0.0.1:5353/api:80", Address("127.0.0.1", 5353), "dns://127.0.0.1:5353/api:80"),
        ("dns://[fd00::10]/api:80", Address("fd00::10", 53), "dns://[fd00::10]:53/api:80"),
        ("dns://[::1]:5353/api:80", Address("::1", 5353), "dns://[::1]:5353/api:80"),
        ("dns://::1/api:80", Address("::1", 53), "dns://[::1]:53/api:80"),
    ],
)
def test_dns_urls_name_the_server_in_the_authority(
    url: str, server: Address | None, description: str
) -> None:
    """gRPC's naming: dns:///name:port asks the system resolver, dns://SERVER[:PORT]/ that server."""
    source = make_source(url)
    assert isinstance(source, DnsSource)
    assert source.server == server
    assert str(Address(source.name, source.port)) == url.rpartition("/")[2]
    assert source.description == description


def test_an_endpoint_source_is_used_as_it_is() -> None:
    """Any object with the EndpointSource members passes through make_source unchanged."""

    class Mine:
        description = "mine"

        def current(self) -> tuple[Address, ...] | None:
            return (Address("10.0.0.5", 80),)

        def refresh_now(self) -> tuple[Address, ...] | None:
            return self.current()

        def close(self) -> None:
            pass

    mine = Mine()
    assert isinstance(mine, EndpointSource)
    assert make_source(mine) is mine


# -- callables: the polling machinery ----------------------------------------------------------------


def test_current_never_blocks_and_resolves_in_the_background() -> None:
    """Before the first resolution current() returns None at once, and starts one in a daemon thread."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def fetch() -> list[str]:
        threads.append(threading.current_thread())
        release.wait(WAIT)
        return ["10.0.0.5:80"]

    source = CallableSource(fetch, refresh=REFRESH)
    started = time.monotonic()
    assert source.current() is None
    assert time.monotonic() - started < 0.1
    assert wait_until(lambda: len(threads) == 1)
    assert source.current() is None  # still resolving
    release.set()
    assert wait_until(lambda: source.current() == addresses("10.0.0.5:80"))
    assert threads[0].daemon and threads[0] is not threading.current_thread()


def test_one_resolution_at_a_time_and_refresh_now_reuses_the_one_in_flight() -> None:
    """While a refresh runs, current() starts no other; refresh_now() waits for it and takes its result."""
    clock = FakeClock()
    release = threading.Event()
    calls = []

    def fetch() -> list[str]:
        calls.append(clock.now)
        release.wait(WAIT)
        return [f"10.0.0.{len(calls)}:80"]

    source = CallableSource(fetch, refresh=5.0, clock=clock)
    for _ in range(20):
        source.current()
    assert wait_until(lambda: len(calls) == 1)
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(source.refresh_now()))
    waiter.start()
    for _ in range(20):
        source.current()
    release.set()
    waiter.join(WAIT)
    assert result == [addresses("10.0.0.1:80")]
    assert len(calls) == 1
    # Not due again until `refresh` seconds later; then one more resolution.
    clock.now += 4.9
    assert source.current() == addresses("10.0.0.1:80")
    assert len(calls) == 1
    clock.now += 0.2
    source.current()
    assert wait_until(lambda: source.current() == addresses("10.0.0.2:80"))
    assert len(calls) == 2


def test_a_failing_callable_keeps_the_last_good_set_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    """Failures (exceptions, bad addresses, nothing at all) keep the last good set; one WARNING, one INFO on recovery."""
    results: list[object] = [
        ["10.0.0.5:80", "10.0.0.6:80"],
        ConnectionError("registry unreachable"),
        [],
        ["10.0.0.7"],
        ConnectionError("registry unreachable"),
        ["10.0.0.7:80"],
        ["10.0.0.7:80"],
    ]

    def fetch() -> list[str]:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, list)
        return result

    source = CallableSource(fetch, refresh=REFRESH, clock=FakeClock())
    with caplog.at_level(logging.INFO, logger="graceful.client"):
        assert source.refresh_now() == addresses("10.0.0.5:80", "10.0.0.6:80")
        for _ in range(4):
            assert source.refresh_now() == addresses("10.0.0.5:80", "10.0.0.6:80")
        assert source.refresh_now() == addresses("10.0.0.7:80")
        assert source.refresh_now() == addresses("10.0.0.7:80")
    assert lines(caplog, logging.WARNING) == [
        "endpoints callable test_a_failing_callable_keeps_the_last_good_set_and_logs_once.<locals>.fetch: "
        "resolution failed (ConnectionError: registry unreachable); keeping the last good set of 2"
    ]
    assert lines(caplog, logging.INFO) == [
        "endpoints callable test_a_failing_callable_keeps_the_last_good_set_and_logs_once.<locals>.fetch: "
        "resolved again (1 addresses)"
    ]
    assert source.resolutions == 7


def test_before_any_good_set_both_calls_return_none(caplog: pytest.LogCaptureFixture) -> None:
    """A source that never resolved answers None (the transport raises), and says so once."""

    def fetch() -> list[str]:
        raise TimeoutError("consul timed out")

    source = CallableSource(fetch, refresh=REFRESH, clock=FakeClock())
    with caplog.at_level(logging.INFO, logger="graceful.client"):
        assert source.refresh_now() is None
        assert source.refresh_now() is None
        assert source.current() is None
    (warning,) = lines(caplog, logging.WARNING)
    assert warning.endswith("resolution failed (TimeoutError: consul timed out); no addresses yet")


def test_a_closed_source_starts_no_refresh() -> None:
    """After close() current() keeps answering the last set and calls nothing."""
    calls = []
    clock = FakeClock()
    source = CallableSource(lambda: calls.append(1) or ["10.0.0.5:80"], refresh=REFRESH, clock=clock)
    source.refresh_now()
    source.close()
    clock.now += 60
    assert source.current() == addresses("10.0.0.5:80")
    assert calls == [1]


def test_make_source_calls_a_callable_every_refresh() -> None:
    """make_source(callable) re-fetches on its own as current() is asked, about every `refresh`."""
    calls: list[float] = []

    def fetch() -> list[str]:
        calls.append(time.monotonic())
        return [f"10.0.0.{len(calls)}:80"]

    source = make_source(fetch, refresh=REFRESH)
    assert source.refresh_now() == addresses("10.0.0.1:80")
    assert wait_until(lambda: source.current() == addresses("10.0.0.3:80"))
    assert all(later - earlier >= REFRESH * 0.9 for earlier, later in itertools.pairwise(calls))


# -- files -------------------------------------------------------------------------------------------


def write_by_rename(path: Path, text: str) -> None:
    """What a sidecar or consul-template does: write aside, rename over (rename(2) is atomic)."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


@pytest.fixture
def endpoints_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "endpoints"
    write_by_rename(path, "# pods of api\n10.0.0.5:8000\n\n  10.0.0.6:8000   # the new one\n[::1]:8000\n")
    yield path


def test_a_file_lists_one_address_a_line(endpoints_file: Path) -> None:
    """Comments (whole lines or trailing) and blank lines are ignored."""
    source = make_source(f"file://{endpoints_file}", refresh=REFRESH)
    assert isinstance(source, FileSource)
    assert source.refresh_now() == addresses("10.0.0.5:8000", "10.0.0.6:8000", "[::1]:8000")
    assert source.description == f"file://{endpoints_file}"


def test_a_file_renamed_over_is_followed(endpoints_file: Path) -> None:
    """A rewrite by rename (a new inode) is seen within the poll interval."""
    source = FileSource(str(endpoints_file), refresh=REFRESH)
    source.refresh_now()
    write_by_rename(endpoints_file, "10.0.0.7:8000\n")
    changed = time.monotonic()
    assert wait_until(lambda: source.current() == addresses("10.0.0.7:8000"))
    assert time.monotonic() - changed < REFRESH + 1.0


def test_a_file_rewritten_in_place_is_followed(endpoints_file: Path) -> None:
    """An in-place rewrite of the same size is seen too (mtime_ns changes)."""
    source = FileSource(str(endpoints_file), refresh=REFRESH)
    source.refresh_now()
    text = endpoints_file.read_text().replace("10.0.0.5", "10.0.0.9")
    endpoints_file.write_text(text)
    assert wait_until(lambda: source.current() == addresses("10.0.0.9:8000", "10.0.0.6:8000", "[::1]:8000"))


def test_an_unchanged_file_is_not_read_again(endpoints_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between changes a poll costs one stat(), not a read."""
    source = FileSource(str(endpoints_file), refresh=REFRESH, clock=FakeClock())
    source.refresh_now()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    for _ in range(3):
        assert source.refresh_now() == addresses("10.0.0.5:8000", "10.0.0.6:8000", "[::1]:8000")
    assert opened == []


def test_the_poll_interval_is_at_most_a_second(endpoints_file: Path) -> None:
    """However long refresh is, the file is stat()ed again after one second."""
    clock = FakeClock()
    source = FileSource(str(endpoints_file), refresh=60.0, clock=clock)
    source.refresh_now()
    write_by_rename(endpoints_file, "10.0.0.7:8000\n")
    clock.now += 0.99
    assert source.current() == addresses("10.0.0.5:8000", "10.0.0.6:8000", "[::1]:8000")
    clock.now += 0.02
    assert wait_until(lambda: source.current() == addresses("10.0.0.7:8000"))


def test_a_deleted_or_broken_file_keeps_the_last_good_set(
    endpoints_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleted, then written with a bad line: the last good set stays, one WARNING; fixed: one INFO."""
    source = FileSource(str(endpoints_file), refresh=REFRESH)
    good = source.refresh_now()
    with caplog.at_level(logging.INFO, logger="graceful.client"):
        endpoints_file.unlink()
        before = source.resolutions
        assert wait_until(lambda: source.current() == good and source.resolutions >= before + 3)
        write_by_rename(endpoints_file, "10.0.0.7:8000\n10.0.0.8\n")
        before = source.resolutions
        assert wait_until(lambda: source.current() == good and source.resolutions >= before + 3)
        (warning,) = lines(caplog, logging.WARNING)
        assert "resolution failed (FileNotFoundError: [Errno 2] No such file or directory" in warning
        assert warning.endswith("keeping the last good set of 3")
        write_by_rename(endpoints_file, "10.0.0.7:8000\n10.0.0.8:8000\n")
        assert wait_until(lambda: source.current() == addresses("10.0.0.7:8000", "10.0.0.8:8000"))
    assert len(lines(caplog, logging.WARNING)) == 1
    assert lines(caplog, logging.INFO) == [f"endpoints file://{endpoints_file}: resolved again (2 addresses)"]


def test_a_bad_line_is_named(endpoints_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The WARNING for a file that does not parse names the line and what is wrong with it."""
    write_by_rename(endpoints_file, "10.0.0.7:8000\n\n10.0.0.8\n")
    source = FileSource(str(endpoints_file), refresh=REFRESH)
    with caplog.at_level(logging.WARNING, logger="graceful.client"):
        assert source.refresh_now() is None
    (warning,) = lines(caplog, logging.WARNING)
    assert "(ValueError: line 3: '10.0.0.8' is not an address: the port is missing" in warning


# -- DNS ---------------------------------------------------------------------------------------------


def test_the_system_resolver_resolves_localhost() -> None:
    """dns:///localhost:8000 goes through getaddrinfo: /etc/hosts' 127.0.0.1 and/or ::1."""
    source = make_source("dns:///localhost:8000", refresh=REFRESH)
    found = source.refresh_now()
    assert found, "localhost did not resolve"
    assert set(found) <= {Address("127.0.0.1", 8000), Address("::1", 8000)}


def test_the_system_resolver_failing_keeps_none(caplog: pytest.LogCaptureFixture) -> None:
    """A name that does not exist (RFC 6761 reserves .invalid) is a failed resolution, not an empty set."""
    source = make_source("dns:///no-such-host.invalid:8000", refresh=REFRESH)
    with caplog.at_level(logging.WARNING, logger="graceful.client"):
        assert source.refresh_now() is None
    (warning,) = lines(caplog, logging.WARNING)
    assert "dns:///no-such-host.invalid:8000: resolution failed (gaierror" in warning


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """A dnsmasq of this test's own; skipped (failed under CI) where the binary is missing."""
    if dnsmasq_binary() is None:
        reason = "dnsmasq is not installed (Debian: dnsmasq-base, see bin/setup)"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must provide it)")
        pytest.skip(reason)
    server = Dnsmasq(tmp_path / "dnsmasq")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.dnsmasq
def test_a_dns_server_source_follows_record_changes(dnsmasq: Dnsmasq) -> None:
    """Records added and removed at a real DNS server reach current() within about `refresh`."""
    dnsmasq.set_records("api.test", ["127.0.0.11"])
    source = make_source(f"dns://{dnsmasq.authority}/api.test:8000", refresh=REFRESH)
    assert source.refresh_now() == addresses("127.0.0.11:8000")
    for records in (["127.0.0.11", "127.0.0.12"], ["127.0.0.12"], ["127.0.0.12", "fd00::12"]):
        dnsmasq.set_records("api.test", records)
        changed = time.monotonic()
        expected = tuple(sorted(Address(ip, 8000) for ip in records))
        assert wait_until(lambda expected=expected: source.current() == expected), source.current()
        assert time.monotonic() - changed < REFRESH + 1.0


@pytest.mark.dnsmasq
def test_a_name_gone_from_the_dns_server_keeps_the_last_good_set(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """NXDOMAIN after a good answer is a failure: the set stays, and the WARNING says why."""
    dnsmasq.set_records("api.test", ["127.0.0.11"])
    source = DnsSource("api.test", 8000, server=Address("127.0.0.1", dnsmasq.port), refresh=REFRESH)
    assert source.refresh_now() == addresses("127.0.0.11:8000")
    with caplog.at_level(logging.WARNING, logger="graceful.client"):
        dnsmasq.set_records("api.test", [])
        assert source.refresh_now() == addresses("127.0.0.11:8000")
    (warning,) = lines(caplog, logging.WARNING)
    assert "resolution failed (NXDOMAIN" in warning


@pytest.mark.dnsmasq
def test_a_stopped_dns_server_keeps_the_last_good_set_and_logs_once(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """With the server gone every query times out: the set stays, one WARNING; back: one INFO."""
    dnsmasq.set_records("api.test", ["127.0.0.11", "127.0.0.12"])
    source = DnsSource(
        "api.test", 8000, server=Address("127.0.0.1", dnsmasq.port), refresh=REFRESH, timeout=0.3
    )
    good = source.refresh_now()
    assert good == addresses("127.0.0.11:8000", "127.0.0.12:8000")
    with caplog.at_level(logging.INFO, logger="graceful.client"):
        dnsmasq.stop()
        before = source.resolutions
        assert wait_until(lambda: source.current() == good and source.resolutions >= before + 3)
        (warning,) = lines(caplog, logging.WARNING)
        assert "resolution failed (LifetimeTimeout" in warning
        assert warning.endswith("keeping the last good set of 2")
        dnsmasq.start()
        assert wait_until(lambda: source.current() == good and bool(lines(caplog, logging.INFO)))
    assert source.current() == good
    assert len(lines(caplog, logging.WARNING)) == 1
    assert lines(caplog, logging.INFO) == [
        f"endpoints dns://127.0.0.1:{dnsmasq.port}/api.test:8000: resolved again (2 addresses)"
    ]
