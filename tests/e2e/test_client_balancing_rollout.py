"""graceful.client as its own load balancer through a rollout: pods resolved by DNS, no balancer.

Three pods, each PID 1 of its own PID namespace on its own loopback address (127.0.0.11, ...) and
one common port, are listed by a real DNS server (dnsmasq, tests/e2e/dns_registry.py) that learns
of every change 5 s late, as a registry does. They are replaced one by one under load from one
shared ``httpx.Client(transport=Transport(endpoints="dns://.../api.graceful.test:PORT"))``:

- graceful pods (drain delay 2 s): no request fails, and once the first response carrying the
  drain notice came back from a pod, that pod receives no new request (its own log of arrivals),
  seconds before DNS stops listing it;
- plain uvicorn pods (no notice; the listener closes at SIGTERM): no GET fails (a refused
  connection is retried at once on another endpoint), and each dead endpoint is ejected after its
  first failures, before DNS drops it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from graceful._warmup import warmup_share
from graceful.client import BalancePolicy, SlowStart, Transport
from tests.dnsmasq import dnsmasq_binary
from tests.e2e.cluster import Cluster, Pod, PodSpec, free_port
from tests.e2e.dns_registry import DnsRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.dnsmasq, pytest.mark.timeout(150)]

LAG = 5.0  # the registry's propagation: DNS answers change 5 s after the event
DRAIN_DELAY = 2.0
REFRESH = 1.0  # the client re-resolves every second: the DNS change is seen within LAG + 1 s
GRACE = 30.0
OLD_IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
NEW_IPS = ("127.0.0.14", "127.0.0.15", "127.0.0.16")
GET_THREADS = 4
POST_THREADS = 1
PAUSE = 0.005
MAX_SECONDS = 90.0
MAX_ITERATIONS = 100_000
#: A request picked just before the notice came back may still arrive a moment after it.
IN_FLIGHT_SLACK = 0.05


def graceful_spec(workdir: Path) -> PodSpec:
    return PodSpec(
        argv=[
            "python",
            "-m",
            "graceful.uvicorn",
            "tests.e2e.record_app:app",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
        env={
            "RECORD_PATH": str(workdir / "executed.txt"),
            "ARRIVALS_PATH": str(workdir / "arrivals.txt"),
            "GRACEFUL_DRAIN_DELAY": str(DRAIN_DELAY),
        },
    )


def plain_spec(workdir: Path) -> PodSpec:
    return PodSpec(
        argv=["python", "-m", "uvicorn", "tests.e2e.record_app:app", "--host", "{host}", "--port", "{port}"],
        env={"RECORD_PATH": str(workdir / "executed.txt"), "ARRIVALS_PATH": str(workdir / "arrivals.txt")},
    )


@dataclass
class Load:
    """GET and POST threads through one shared client; what each saw, with monotonic times."""

    client: httpx.Client
    transport: Transport
    ok: int = 0
    get_failures: list[str] = field(default_factory=list)
    post_failures: list[str] = field(default_factory=list)
    #: pod name -> when the client first got a response from it carrying the drain notice.
    first_notice: dict[str, float] = field(default_factory=dict)
    #: (time, endpoint, state) whenever an endpoint's state changed in the transport's view.
    states: list[tuple[float, str, str]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _get(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_ITERATIONS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                response = self.client.get("/fast")
            except httpx.HTTPError as exc:
                with self._lock:
                    self.get_failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self._heard(response)
                with self._lock:
                    if response.status_code != 200:
                        self.get_failures.append(
                            f"HTTP {response.status_code} from {response.headers.get('x-pod')}"
                        )
                    else:
                        self.ok += 1
            self._stop.wait(PAUSE)

    def _heard(self, response: httpx.Response) -> None:
        """Note when the first drain notice from each pod came back (any request, GET or POST)."""
        if "graceful-drain" in response.headers:
            now = time.monotonic()
            with self._lock:
                self.first_notice.setdefault(response.headers.get("x-pod", "?"), now)

    def _post(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_ITERATIONS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            request_id = uuid.uuid4().hex
            try:
                response = self.client.post(
                    "/record", headers={"x-request-id": request_id}, content=request_id
                )
            except httpx.HTTPError as exc:
                with self._lock:
                    self.post_failures.append(f"{type(exc).__name__}: {exc}")
            else:
                self._heard(response)
                if response.status_code != 200:
                    with self._lock:
                        self.post_failures.append(f"HTTP {response.status_code}")
            self._stop.wait(PAUSE)

    def _watch(self) -> None:
        """The transport's view every 50 ms: when did an endpoint become draining or ejected?"""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + MAX_SECONDS
        while not self._stop.wait(0.05) and time.monotonic() < deadline:
            for view in self.transport.endpoints():
                if seen.get(view.address) != view.state:
                    seen[view.address] = view.state
                    self.states.append((time.monotonic(), view.address, view.state))

    def _guarded(self, worker: Callable[[], None]) -> None:
        try:
            worker()
        except Exception as exc:  # a client bug fails the test instead of vanishing with its thread
            with self._lock:
                self.crashes.append(repr(exc))

    def start(self) -> None:
        workers = [self._get] * GET_THREADS + [self._post] * POST_THREADS + [self._watch]
        for number, worker in enumerate(workers):
            thread = threading.Thread(
                target=self._guarded, args=(worker,), name=f"load-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self.crashes.extend(f"{t.name} still running" for t in self._threads if t.is_alive())

    def first_state(self, address: str, state: str) -> float | None:
        return next((at for at, where, what in self.states if where == address and what == state), None)


def arrivals(workdir: Path) -> dict[str, list[float]]:
    by_pod: dict[str, list[float]] = {}
    path = workdir / "arrivals.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        at, pod = line.split()
        by_pod.setdefault(pod, []).append(float(at))
    return by_pod


def rollout(tmp_path: Path, spec: PodSpec) -> tuple[Load, list[Pod], list[str]]:
    """Start 3 pods, load them, replace each in turn (surge one, wait listed, delete one)."""
    kube: Cluster | None = None
    registry = DnsRegistry(tmp_path, 8, service_port=free_port())
    try:
        registry.start()
        kube = Cluster(
            tmp_path, registry, lag=LAG, grace=GRACE, pod_ips=OLD_IPS + NEW_IPS, pod_port=registry.port
        )
        old = [kube.start_pod(f"old{n}", spec) for n in range(3)]
        for pod in old:
            kube.wait_added(pod, timeout=LAG + 20)
        transport = Transport(endpoints=registry.endpoints_url(), balance=BalancePolicy(refresh=REFRESH))
        client = httpx.Client(base_url="http://api.graceful.test", transport=transport, timeout=5.0)
        load = Load(client, transport)
        load.start()
        time.sleep(1.0)  # a steady state first
        try:
            for number, pod in enumerate(old):
                replacement = kube.start_pod(f"new{number}", spec)
                kube.wait_added(replacement, timeout=LAG + 20)
                kube.delete_pod(pod)
            if not kube.wait_exited(old, GRACE + 15):
                kube.errors.append("old pods still running after the grace period")
            deadline = time.monotonic() + LAG + 10
            while time.monotonic() < deadline and any(p.removed_at is None for p in old):
                time.sleep(0.05)
            time.sleep(REFRESH + 0.5)  # the client has seen the last DNS change
        finally:
            load.stop()
            client.close()
        return load, old, list(kube.errors)
    finally:
        if kube is not None:
            kube.close()
        registry.stop()


def summary(load: Load, old: list[Pod], seen: dict[str, list[float]]) -> str:
    lines = [
        f"ok={load.ok} get_failures={len(load.get_failures)} post_failures={len(load.post_failures)}",
        *(f"  GET failure: {f}" for f in load.get_failures[:10]),
        *(f"  POST failure: {f}" for f in load.post_failures[:5]),
        *(f"  crash: {c}" for c in load.crashes),
    ]
    for pod in old:
        notice = load.first_notice.get(pod.name)
        lines.append(
            f"  {pod.name} {pod.host}: sigterm={pod.sigterm_at} first notice={notice} removed={pod.removed_at} "
            f"exited={pod.exited_at} last arrival={max(seen.get(pod.name, [0.0]))}"
        )
    lines += [f"  state t={at:.2f} {where} {what}" for at, where, what in load.states]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _needs_dnsmasq() -> None:
    import os

    if dnsmasq_binary() is None:
        reason = "dnsmasq is not installed (Debian: apt-get install dnsmasq-base; bin/setup does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_graceful_pods_resolved_by_dns_lose_nothing_and_get_nothing_after_their_notice(
    tmp_path: Path,
) -> None:
    load, old, errors = rollout(tmp_path, graceful_spec(tmp_path))
    seen = arrivals(tmp_path)
    details = summary(load, old, seen)
    print(details)
    assert not errors and not load.crashes, details
    assert load.ok > 1000, f"too little load\n{details}"
    assert not load.get_failures and not load.post_failures, details
    for pod in old:
        notice = load.first_notice.get(pod.name)
        assert notice is not None and pod.sigterm_at is not None and pod.removed_at is not None, details
        late = [at for at in seen.get(pod.name, []) if at > notice + IN_FLIGHT_SLACK]
        assert not late, f"{pod.name} got {len(late)} requests after its drain notice came back\n{details}"
        # Heard from the pod itself within a moment of SIGTERM, seconds before DNS changed.
        assert notice - pod.sigterm_at < 1.0 and pod.removed_at - notice > 3.0, details


def test_plain_pods_resolved_by_dns_lose_no_get_and_dead_ones_are_ejected(tmp_path: Path) -> None:
    load, old, errors = rollout(tmp_path, plain_spec(tmp_path))
    seen = arrivals(tmp_path)
    details = summary(load, old, seen)
    print(details)
    assert not errors and not load.crashes, details
    assert load.ok > 1000, f"too little load\n{details}"
    assert not load.get_failures, details
    for pod in old:
        ejected = load.first_state(f"{pod.host}:{pod.port}", "ejected")
        assert ejected is not None and pod.removed_at is not None, details
        assert ejected < pod.removed_at, f"{pod.name} was not ejected before DNS dropped it\n{details}"


def test_a_pod_joining_two_warm_ones_gets_the_slow_start_share_counted_at_the_pods(tmp_path: Path) -> None:
    """Real graceful pods resolved by DNS: a third joins two warm ones under steady load. Per
    second of the slow-start window, its arrivals per warm pod's arrivals follow the curve within
    10 points (the arrivals are each pod's own log)."""
    window, curve, min_share = 6.0, 2.0, 0.1
    registry = DnsRegistry(tmp_path, 8, service_port=free_port())
    kube: Cluster | None = None
    try:
        registry.start()
        kube = Cluster(tmp_path, registry, lag=0.5, grace=GRACE, pod_ips=OLD_IPS, pod_port=registry.port)
        spec = graceful_spec(tmp_path)
        warm = [kube.start_pod(f"warm{n}", spec) for n in range(2)]
        for pod in warm:
            kube.wait_added(pod, timeout=20)
        balance = BalancePolicy(
            refresh=0.2, slow_start=SlowStart(window=window, curve=curve, min_share=min_share)
        )
        transport = Transport(endpoints=registry.endpoints_url(), balance=balance)
        client = httpx.Client(base_url="http://api.graceful.test", transport=transport, timeout=5.0)
        load = Load(client, transport)
        load.start()
        try:
            time.sleep(1.0)
            newcomer = kube.start_pod("newcomer", spec)
            kube.wait_added(newcomer, timeout=20)
            time.sleep(window + 2.0)
        finally:
            load.stop()
            client.close()
        errors = list(kube.errors)
    finally:
        if kube is not None:
            kube.close()
        registry.stop()
    seen = arrivals(tmp_path)
    assert not errors and not load.crashes and not load.get_failures, (
        errors,
        load.crashes,
        load.get_failures,
    )
    joined = min(seen["newcomer"])  # its first request: the moment the transport listed it
    rows = []
    for second in range(int(window)):

        def count(pod: str, second: int = second) -> int:
            return sum(1 for at in seen[pod] if joined + second <= at < joined + second + 1)

        per_warm = (count("warm0") + count("warm1")) / 2
        measured = count("newcomer") / per_warm
        expected = warmup_share(second + 0.5, window=window, curve=curve, min_share=min_share)
        rows.append((second, round(measured, 3), round(expected, 3), per_warm, count("newcomer")))
    print(rows)
    assert all(per_warm >= 30 for *_, per_warm, _ in rows), f"too little load to measure a share: {rows}"
    assert all(abs(measured - expected) <= 0.10 for _, measured, expected, *_ in rows), rows
