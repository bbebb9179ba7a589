"""graceful.client's client-side balancing (issue 12) against real HTTP servers on 127.0.0.1.

Each "pod" is a ThreadingHTTPServer on its own port that counts what it receives and answers as
its script says (its name, a drain notice, 500s); one port is closed (a dead pod). Only the slow
start and picker arithmetic use an injected clock and randomness, where the point is the figures.
"""

from __future__ import annotations

import collections
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from graceful import SettingsError
from graceful._warmup import warmup_share
from graceful.client import (
    AsyncTransport,
    BalancePolicy,
    OutlierPolicy,
    RetriesExhausted,
    SlowStart,
    Transport,
)
from graceful.client._balancing import Balancer
from graceful.client._sources import Address, parse_address
from tests.conftest import free_port

LOCALHOST = "127.0.0.1"


@dataclass
class Pod:
    """One endpoint: a real server that counts requests and answers by ``script``."""

    name: str
    port: int = 0
    #: (handler) -> (status, extra headers); default 200 with the pod's name as the body.
    script: Callable[[http.server.BaseHTTPRequestHandler], tuple[int, dict[str, str]]] = field(
        default=lambda handler: (200, {})
    )
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # (time, path, host header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def count(self, path_prefix: str = "/work") -> int:
        with self.lock:
            return sum(1 for _, path, _ in self.requests if path.startswith(path_prefix))


class PodHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod: Pod

    def do_GET(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with self.pod.lock:
            self.pod.requests.append((time.monotonic(), self.path, self.headers.get("host", "")))
        status, headers = self.pod.script(self)
        body = self.pod.name.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def pods() -> Iterator[Callable[[str], Pod]]:
    servers: list[tuple[QuietServer, threading.Thread]] = []

    def start(name: str) -> Pod:
        pod = Pod(name)
        handler = type("Handler", (PodHandler,), {"pod": pod})
        server = QuietServer((LOCALHOST, 0), handler)
        pod.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return pod

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


class MutableSource:
    """An endpoint source the test changes (an object with the EndpointSource methods is used as is)."""

    description = "the test's list"

    def __init__(self, addresses: list[str]) -> None:
        self.set(addresses)

    def set(self, addresses: list[str]) -> None:
        self.addresses: tuple[Address, ...] = tuple(sorted(parse_address(a) for a in addresses))

    def current(self) -> tuple[Address, ...] | None:
        return self.addresses

    def refresh_now(self) -> tuple[Address, ...] | None:
        return self.addresses

    def close(self) -> None:
        pass


def names(responses: list[httpx.Response]) -> collections.Counter[str]:
    return collections.Counter(response.text for response in responses)


# -- routing ----------------------------------------------------------------------------------------


def test_round_robin_spreads_evenly_and_keeps_host_path_and_query(pods: Callable[[str], Pod]) -> None:
    a, b, c = pods("a"), pods("b"), pods("c")
    transport = Transport(endpoints=[a.address, b.address, c.address])
    with httpx.Client(transport=transport, base_url="http://api.internal") as client:
        responses = [client.get("/work/item?x=1") for _ in range(30)]
    assert names(responses) == {"a": 10, "b": 10, "c": 10}
    for pod in (a, b, c):
        assert {(path, host) for _, path, host in pod.requests} == {("/work/item?x=1", "api.internal")}
    view = {v.address: v for v in transport.endpoints()}
    assert set(view) == {a.address, b.address, c.address}
    assert all(v.state == "ready" and v.requests == 10 and v.in_flight == 0 for v in view.values())


def test_pick_first_stays_on_one_endpoint_until_it_fails(pods: Callable[[str], Pod]) -> None:
    a, b = pods("a"), pods("b")
    dead = f"{LOCALHOST}:{free_port()}"
    policy = BalancePolicy(picker="pick_first")
    with httpx.Client(transport=Transport(endpoints=[a.address, b.address], balance=policy)) as client:
        first = {client.get(f"http://svc/work/{n}").text for n in range(10)}
    assert len(first) == 1
    # The dead endpoint sorts first here or not: either way every call succeeds on a live one.
    with httpx.Client(transport=Transport(endpoints=[dead, a.address], balance=policy)) as client:
        assert {client.get("http://svc/work").text for _ in range(5)} == {"a"}


def test_least_request_prefers_the_endpoint_with_fewer_requests_in_flight() -> None:
    """Power of two choices: between two candidates, the one with fewer in flight (per weight)."""
    source = MutableSource(["10.0.0.1:80", "10.0.0.2:80"])
    balancer = Balancer(source, BalancePolicy(picker="least_request"))
    busy = [balancer.pick() for _ in range(1)]  # one request in flight on one of them
    loaded = busy[0].endpoint.address
    picks = [balancer.pick() for _ in range(20)]
    # Each new pick goes where fewer are in flight: the counts stay within one of each other.
    counts = collections.Counter(p.endpoint.address for p in [*busy, *picks])
    assert abs(counts[parse_address("10.0.0.1:80")] - counts[parse_address("10.0.0.2:80")]) <= 1, counts
    assert loaded in counts


def test_a_dead_endpoint_costs_no_call_and_is_ejected_after_five_refusals(pods: Callable[[str], Pod]) -> None:
    """Plain servers, one gone (refuses connections): every GET and POST succeeds, moved to a
    live endpoint by the transparent retry, and the dead one is ejected at its 5th refusal."""
    a, b = pods("a"), pods("b")
    dead = f"{LOCALHOST}:{free_port()}"
    transport = Transport(endpoints=[a.address, b.address, dead])
    with httpx.Client(transport=transport) as client:
        responses = [client.get("http://svc/work") for _ in range(30)]
        responses += [client.post("http://svc/work", content=b"x") for _ in range(30)]
    assert all(r.status_code == 200 for r in responses)
    view = {v.address: v for v in transport.endpoints()}
    assert view[dead].state == "ejected" and view[dead].failures == 5, view[dead]
    assert view[dead].requests == 5  # no request after the ejection
    retried = [r for r in responses if len(r.extensions["graceful.attempts"]) > 1]
    assert retried and all(r.extensions["graceful.attempts"][0].endpoint == dead for r in retried)


def test_a_retry_goes_to_another_endpoint(pods: Callable[[str], Pod]) -> None:
    a, b = pods("a"), pods("b")
    a.script = lambda handler: (503, {})
    b.script = lambda handler: (503, {})
    with httpx.Client(transport=Transport(endpoints=[a.address, b.address])) as client:
        response = client.get("http://svc/work")
    places = [attempt.endpoint for attempt in response.extensions["graceful.attempts"]]
    assert len(places) == 3 and places[0] != places[1], places


def test_no_endpoint_at_all_is_a_clear_error() -> None:
    transport = Transport(endpoints=MutableSource([]))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError) as caught:
        client.get("http://svc/")
    assert isinstance(caught.value, RetriesExhausted)
    assert "no endpoints: the test's list resolved to none" in str(caught.value)


# -- the drain notice -------------------------------------------------------------------------------


def test_the_first_drain_notice_stops_new_requests_to_that_endpoint(pods: Callable[[str], Pod]) -> None:
    """After one response carrying Graceful-Drain, the pod gets nothing new; it comes back once
    its readiness answers 200 without the notice after the drain it announced."""
    a, b = pods("a"), pods("b")
    draining = threading.Event()
    a.script = lambda handler: (200, {"graceful-drain": "1"} if draining.is_set() else {})
    transport = Transport(endpoints=[a.address, b.address])
    with httpx.Client(transport=transport) as client:
        for _ in range(4):
            client.get("http://svc/work")
        draining.set()
        noticed_at = None
        for _ in range(10):  # the next request to a carries the notice
            if client.get("http://svc/work").headers.get("graceful-drain") is not None:
                noticed_at = a.count()
                break
        assert noticed_at is not None
        for _ in range(20):
            assert client.get("http://svc/work").text == "b"
        assert a.count() == noticed_at
        assert {v.address: v.state for v in transport.endpoints()}[a.address] == "draining"
        # The pod "restarts" on the same address: ready, no notice. The transport probes it
        # after the announced drain (1 s) and takes it back, warming.
        draining.clear()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if {v.address: v.state for v in transport.endpoints()}[a.address] != "draining":
                break
            time.sleep(0.05)
        assert {v.address: v.state for v in transport.endpoints()}[a.address] in ("warming", "ready")
        assert any(path == "/healthz/ready" for _, path, _ in a.requests)
        for _ in range(40):
            client.get("http://svc/work")
        assert a.count() > noticed_at


def test_a_draining_endpoint_still_serves_when_it_is_the_only_one(pods: Callable[[str], Pod]) -> None:
    a = pods("a")
    a.script = lambda handler: (200, {"graceful-drain": "30"})
    with httpx.Client(transport=Transport(endpoints=[a.address])) as client:
        assert all(client.get("http://svc/work").status_code == 200 for _ in range(3))


def test_the_async_transport_hears_the_drain_too(pods: Callable[[str], Pod]) -> None:
    a, b = pods("a"), pods("b")
    a.script = lambda handler: (200, {"graceful-drain": "20"})

    async def main() -> list[str]:
        transport = AsyncTransport(endpoints=[a.address, b.address])
        async with httpx.AsyncClient(transport=transport) as client:
            return [(await client.get("http://svc/work")).text for _ in range(10)]

    texts = anyio.run(main)
    assert texts.count("a") == 1 and texts.count("b") == 9, texts


# -- outlier ejection -------------------------------------------------------------------------------


def test_a_pod_answering_500_is_ejected_within_five_requests_and_readmitted(
    pods: Callable[[str], Pod],
) -> None:
    a, b, c = pods("a"), pods("b"), pods("c")
    a.script = lambda handler: (500, {})
    outlier = OutlierPolicy(base_ejection=2.0)
    transport = Transport(endpoints=[a.address, b.address, c.address], balance=BalancePolicy(outlier=outlier))
    with httpx.Client(transport=transport) as client:
        for _ in range(30):
            client.get("http://svc/work")
        ejected_at = time.monotonic()
        assert a.count() == 5, a.count()
        view = {v.address: v for v in transport.endpoints()}[a.address]
        assert view.state == "ejected" and view.ejections == 1, view
        # The ejection time (2 s) over, a is tried again: 5 more 500s eject it for twice as long.
        time.sleep(max(0.0, ejected_at + 2.1 - time.monotonic()))
        for _ in range(30):
            client.get("http://svc/work")
        assert a.count() == 10, a.count()
    view = {v.address: v for v in transport.endpoints()}[a.address]
    assert view.state == "ejected" and view.ejections == 2, view


def test_ejection_never_takes_out_more_than_half_the_set(pods: Callable[[str], Pod]) -> None:
    a, b, c = pods("a"), pods("b"), pods("c")
    a.script = b.script = lambda handler: (500, {})
    transport = Transport(endpoints=[a.address, b.address, c.address], retry=None)
    with httpx.Client(transport=transport) as client:
        for _ in range(90):
            client.get("http://svc/work")
    states = collections.Counter(v.state for v in transport.endpoints())
    assert states["ejected"] == 1, transport.endpoints()


def test_shed_503s_do_not_eject_a_warming_pod(pods: Callable[[str], Pod]) -> None:
    a, b = pods("a"), pods("b")
    a.script = lambda handler: (503, {"graceful-shed": "1", "retry-after": "0"})
    transport = Transport(endpoints=[a.address, b.address])
    with httpx.Client(transport=transport) as client:
        assert all(client.get("http://svc/work").status_code == 200 for _ in range(30))
    assert {v.address: v.state for v in transport.endpoints()}[a.address] == "ready"


# -- slow start ----------------------------------------------------------------------------------


def test_a_joining_endpoint_ramps_by_the_servers_curve() -> None:
    """Round robin picks per simulated second, new endpoint beside two warm ones: its picks per
    warm endpoint's picks follow warmup_share within 5 points every second of the window."""
    now = [100.0]
    source = MutableSource(["10.0.0.1:80", "10.0.0.2:80"])
    slow = SlowStart(window=10.0, curve=2.0, min_share=0.1)
    balancer = Balancer(source, BalancePolicy(slow_start=slow), clock=lambda: now[0])
    balancer.pick().finish()  # the first resolution: these two are warm from the start
    source.set(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
    joined = now[0]
    newcomer = parse_address("10.0.0.3:80")
    for second in range(12):
        counts: collections.Counter[Address] = collections.Counter()
        for step in range(300):
            now[0] = joined + second + step / 300
            pick = balancer.pick()
            counts[pick.endpoint.address] += 1
            pick.finish()
        warm_mean = (counts[parse_address("10.0.0.1:80")] + counts[parse_address("10.0.0.2:80")]) / 2
        measured = counts[newcomer] / warm_mean
        expected = warmup_share(second + 0.5, window=10.0, curve=2.0, min_share=0.1)
        assert abs(measured - expected) <= 0.05, (second, measured, expected)


def test_policies_fail_at_construction_naming_the_field() -> None:
    for make, field_name in [
        (lambda: BalancePolicy(picker="random"), "picker"),
        (lambda: BalancePolicy(refresh=0), "refresh"),
        (lambda: BalancePolicy(readiness_path="healthz"), "readiness_path"),
        (lambda: OutlierPolicy(consecutive_5xx=0), "consecutive_5xx"),
        (lambda: OutlierPolicy(max_ejection_percent=101), "max_ejection_percent"),
        (lambda: OutlierPolicy(base_ejection=60, max_ejection=30), "max_ejection"),
        (lambda: SlowStart(curve=0), "curve"),
    ]:
        with pytest.raises(SettingsError) as caught:
            make()
        assert caught.value.field == field_name and "allowed" in str(caught.value)


def test_a_joining_pod_gets_the_curves_share_measured_at_the_pods(pods: Callable[[str], Pod]) -> None:
    """Real servers, real time: a third pod joins two warm ones under steady load; per second of
    the window, the requests it received per warm pod's requests follow warmup_share within 10 points."""
    warm_a, warm_b, newcomer = pods("a"), pods("b"), pods("new")
    window, curve, min_share = 5.0, 2.0, 0.1
    source = MutableSource([warm_a.address, warm_b.address])
    policy = BalancePolicy(slow_start=SlowStart(window=window, curve=curve, min_share=min_share))
    with httpx.Client(transport=Transport(endpoints=source, balance=policy)) as client:
        for _ in range(10):
            client.get("http://svc/work")  # the first resolution: a and b are warm
        source.set([warm_a.address, warm_b.address, newcomer.address])
        joined = time.monotonic()
        for _ in range(100_000):  # steady closed-loop load through the window and a second more
            if time.monotonic() - joined > window + 1:
                break
            client.get("http://svc/work")

    def per_second(pod: Pod) -> collections.Counter[int]:
        with pod.lock:
            return collections.Counter(
                int(at - joined) for at, path, _ in pod.requests if path == "/work" and at >= joined
            )

    a, b, new = per_second(warm_a), per_second(warm_b), per_second(newcomer)
    rows = []
    for second in range(int(window) + 1):
        warm = (a[second] + b[second]) / 2
        measured = new[second] / warm
        expected = warmup_share(second + 0.5, window=window, curve=curve, min_share=min_share)
        rows.append((second, round(measured, 3), round(expected, 3), a[second], b[second], new[second]))
    print(rows)
    assert all(warm >= 15 for _, _, _, warm, _, _ in rows), rows  # enough load to measure a share
    assert all(abs(measured - expected) <= 0.10 for _, measured, expected, *_ in rows), rows
