"""graceful.client (issue 11) through a rollout of plain uvicorn pods under load behind HAProxy.

Two pods of plain uvicorn (no graceful in the app or the entrypoint: tests/e2e/record_app.py) are
replaced in turn behind HAProxy in mode tcp, retries 0, with 2 s of propagation lag: for 2 s after
each deletion HAProxy still sends new connections to a pod whose listener is closed, and the client
sees a connection closed without a response. The same rollout runs three times:

- with ``httpx.Client(transport=Transport())`` (defaults): no POST runs twice (every pod appends
  the id it executed to one file); every POST that failed failed in a way that says it may have
  reached the app (never a never-sent error, which the transport would have retried); GET losses
  cut to a fifth of plain httpx's or less;
- with ``Transport(retry=PATIENT)``, retries that outlast the lag: no GET fails;
- with a plain ``httpx.Client``: GETs fail, so the transport is what made the difference.

Then twice behind kube-proxy's own mechanism (iptables DNAT, tests/e2e/kube_proxy.py), where the
dead pod refuses new connections as in a cluster: ``Transport()`` with its defaults loses no GET
(refusals are retried transparently), plain httpx does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from graceful.client import ATTEMPTS_EXTENSION, Failure, RetriesExhausted, RetryPolicy, Transport
from graceful.client._errors import classify_error
from tests.e2e.cluster import LOCALHOST, Cluster, Pod, PodSpec, cluster

pytestmark = [pytest.mark.e2e, pytest.mark.haproxy, pytest.mark.timeout(120)]

LAG = 2.0
GRACE = 30.0
KEEPALIVE_CLIENTS = 3
NEWCONN_CLIENTS = 3
POST_CLIENTS = 2
PAUSE = 0.005  # between requests of one client: 2 shared cores, HAProxy, 3 pods and these threads
CLIENT_TIMEOUT = 5.0
MAX_ITERATIONS = 100_000
MAX_LOAD_SECONDS = 40.0
SETTLE = 0.5  # load after the last endpoint removal
#: Retries spread over longer than the propagation lag: 10 attempts, full-jitter backoffs whose
#: ceilings add up to 5.5 s (on average 2.8 s), so the last ones start after the dead pod is gone.
PATIENT = RetryPolicy(max_attempts=10)


def plain_uvicorn_spec(record_path: Path) -> PodSpec:
    """Stock uvicorn as PID 1 serving an app without graceful: closes its listener on SIGTERM."""
    return PodSpec(
        argv=["python", "-m", "uvicorn", "tests.e2e.record_app:app", "--host", LOCALHOST, "--port", "{port}"],
        env={"RECORD_PATH": str(record_path)},
        readiness_path="/healthz/ready",
    )


@dataclass
class ClientLoad:
    """GET and POST clients against the balancer; every outcome kept for the report."""

    base_url: str
    #: "plain" (no transport), "defaults" (Transport()) or "patient" (PATIENT: retries that outlast the lag).
    transport: str
    get_ok: int = 0
    get_attempts: Counter[int] = field(default_factory=Counter)  # attempts of the GETs that succeeded
    get_failures: list[str] = field(default_factory=list)
    post_ok: list[str] = field(default_factory=list)
    post_failed: list[tuple[str, BaseException]] = field(default_factory=list)
    post_attempts: Counter[int] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    started: float = 0.0

    def _client(self, **kwargs: object) -> httpx.Client:
        transport = {"plain": None, "defaults": Transport(), "patient": Transport(retry=PATIENT)}[
            self.transport
        ]
        return httpx.Client(
            base_url=self.base_url,
            timeout=CLIENT_TIMEOUT,
            trust_env=False,
            transport=transport,
            **kwargs,  # type: ignore[arg-type]
        )

    def _running(self, iteration: int, deadline: float) -> bool:
        return not self._stop.is_set() and iteration < MAX_ITERATIONS and time.monotonic() < deadline

    def _gets(self, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        with self._client(headers=headers) as client:
            iteration = 0
            while self._running(iteration, deadline):
                iteration += 1
                try:
                    response = client.get("/fast")
                except httpx.HTTPError as exc:
                    attempts = getattr(exc, "attempts", ())
                    detail = f"t={time.monotonic() - self.started:.2f}s {type(exc).__name__}: {exc}"
                    if not isinstance(exc, RetriesExhausted):
                        detail += f" (no attempts record: {attempts!r})"
                    with self._lock:
                        self.get_failures.append(detail)
                else:
                    attempts = response.extensions.get(ATTEMPTS_EXTENSION, ())
                    with self._lock:
                        if response.status_code == 200:
                            self.get_ok += 1
                            self.get_attempts[len(attempts)] += 1
                        else:
                            self.get_failures.append(f"HTTP {response.status_code} attempts={attempts}")
                self._stop.wait(PAUSE)

    def _posts(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        with self._client() as client:
            iteration = 0
            while self._running(iteration, deadline):
                iteration += 1
                request_id = uuid.uuid4().hex
                try:
                    response = client.post(
                        "/record", headers={"x-request-id": request_id}, content=request_id
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.post_failed.append((request_id, exc))
                else:
                    with self._lock:
                        if response.status_code == 200 and response.text.strip() == request_id:
                            self.post_ok.append(request_id)
                            self.post_attempts[len(response.extensions.get(ATTEMPTS_EXTENSION, ()))] += 1
                        else:
                            self.crashes.append(
                                f"POST {request_id}: HTTP {response.status_code} {response.text!r}"
                            )
                self._stop.wait(PAUSE)

    def _guarded(self, worker: Callable[[], None]) -> None:
        try:
            worker()
        except Exception as exc:  # a bug in a client must fail the test, not vanish with its thread
            with self._lock:
                self.crashes.append(repr(exc))

    def start(self) -> None:
        self.started = time.monotonic()
        workers: list[Callable[[], None]] = [
            *(lambda: self._gets({}) for _ in range(KEEPALIVE_CLIENTS)),
            *(lambda: self._gets({"connection": "close"}) for _ in range(NEWCONN_CLIENTS)),
            *(self._posts for _ in range(POST_CLIENTS)),
        ]
        for number, worker in enumerate(workers):
            thread = threading.Thread(
                target=self._guarded, args=(worker,), name=f"client-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            self.crashes.append(f"clients still running after stop: {stuck}")


@dataclass
class Run:
    load: ClientLoad
    executed: Counter[str]  # request id -> times the pods executed it
    timeline: list[str]
    errors: list[str]
    seconds: float

    def summary(self) -> str:
        load = self.load
        executed_failed = sum(1 for request_id, _ in load.post_failed if self.executed[request_id])
        lines = [
            f"{load.transport}: {self.seconds:.1f} s; "
            f"GET ok={load.get_ok} failed={len(load.get_failures)} attempts of ok GETs={dict(load.get_attempts)}; "
            f"POST ok={len(load.post_ok)} failed={len(load.post_failed)} (of which executed: {executed_failed}) "
            f"attempts of ok POSTs={dict(load.post_attempts)}; "
            f"duplicates={sum(1 for count in self.executed.values() if count > 1)}",
            *(f"  GET failure: {failure}" for failure in load.get_failures[:20]),
            *(f"  POST failure: {type(exc).__name__}: {exc}" for _, exc in load.post_failed[:5]),
            *(f"  timeline: {line}" for line in self.timeline),
            *(f"  harness/client error: {error}" for error in [*self.errors, *load.crashes]),
        ]
        return "\n".join(lines)

    def never_sent_post_failures(self) -> list[str]:
        return [
            f"{type(exc).__name__}: {exc}"
            for _, exc in self.load.post_failed
            if classify_error(exc) is Failure.NEVER_SENT
        ]

    def check_load_and_records(self, details: str) -> None:
        """Enough load ran, the record works, and no POST ran twice."""
        assert not self.errors and not self.load.crashes, details
        assert self.load.get_ok > 500 and len(self.load.post_ok) > 100, f"too little load\n{details}"
        # The record works: every POST answered 200 was executed, once.
        assert all(self.executed[request_id] == 1 for request_id in self.load.post_ok), details
        duplicates = [request_id for request_id, count in self.executed.items() if count > 1]
        assert not duplicates, f"POSTs executed more than once: {duplicates}\n{details}"


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 2):
        if condition() or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return condition()


def _replace_all(kube: Cluster, spec: PodSpec, name: str, load: ClientLoad) -> list[Pod]:
    old = [kube.start_pod(f"{name}-old{number}", spec) for number in range(2)]
    for pod in old:
        kube.wait_added(pod)
    load.start()
    for number, pod in enumerate(old):
        replacement = kube.start_pod(f"{name}-new{number}", spec)
        kube.wait_added(replacement)  # ready, then `lag` later in the balancer
        kube.delete_pod(pod)
    if not kube.wait_exited(old, GRACE + 15):
        kube.errors.append("old pods still running after the grace period")
    # Plain uvicorn exits within the lag: keep the load on until HAProxy forgot both old pods.
    if not _wait(lambda: all(pod.removed_at is not None for pod in old), LAG + 10):
        kube.errors.append("old pods' endpoints not removed")
    time.sleep(SETTLE)
    return old


def run(tmp_path: Path, *, transport: str, balancer: str = "haproxy") -> Run:
    name = f"{balancer}-{transport}"
    record_path = tmp_path / f"{name}-executed.txt"
    record_path.touch()
    began = time.monotonic()
    with cluster(balancer=balancer, lag=LAG, grace=GRACE) as kube:
        load = ClientLoad(f"http://{LOCALHOST}:{kube.balancer.port}", transport=transport)
        try:
            old = _replace_all(kube, plain_uvicorn_spec(record_path), name, load)
        finally:
            load.stop()
        zero = load.started
        timeline = [
            f"{pod.name}: deleted t={(pod.deleted_at or zero) - zero:.2f} removed t={(pod.removed_at or zero) - zero:.2f} "
            f"exited t={(pod.exited_at or zero) - zero:.2f} status {pod.exit_status}"
            for pod in old
        ]
        errors = list(kube.errors)
    executed = Counter(line.split()[0] for line in record_path.read_text().splitlines() if line.strip())
    return Run(load, executed, timeline, errors, time.monotonic() - began)


def test_client_transport_through_a_plain_uvicorn_rollout(tmp_path: Path) -> None:
    """Plain uvicorn pods replaced behind HAProxy (lag 2 s), the same load three ways.

    - ``Transport()`` (defaults): no POST runs twice, every failed POST is one that may have reached
      the app, and GET losses fall to a fifth of plain httpx's or less (measured: 96 % fewer). Not
      to zero: HAProxy accepts the connection and closes it when the pod refuses, which the client
      cannot tell from a crash (no transparent retry), and three counted attempts within ~150 ms
      all meet the dead pod for a few of the GETs whose first attempt did.
    - ``Transport(retry=PATIENT)``: retries that outlast the lag lose no GET.
    - plain ``httpx.Client``: GETs fail, so the transport is what made the difference.
    """
    defaults = run(tmp_path, transport="defaults")
    patient = run(tmp_path, transport="patient")
    baseline = run(tmp_path, transport="plain")
    details = "\n".join(result.summary() for result in (defaults, patient, baseline))
    print(details)
    for result in (defaults, patient, baseline):
        result.check_load_and_records(details)
    for result in (defaults, patient):
        never_sent = result.never_sent_post_failures()
        assert not never_sent, f"POSTs failed with a never-sent error (retryable, not retried)\n{details}"

    # Without the transport the same rollout loses requests: the transport made the difference.
    lost_plain = len(baseline.load.get_failures)
    assert lost_plain > 0, f"the baseline lost nothing: the test proves nothing\n{details}"
    assert len(defaults.load.get_failures) * 5 <= lost_plain, f"defaults cut too few losses\n{details}"
    assert not patient.load.get_failures, f"GETs failed through Transport(retry=PATIENT)\n{details}"


@pytest.mark.kube_proxy
def test_client_defaults_lose_no_get_behind_kube_proxys_nat_rules(tmp_path: Path) -> None:
    """The same rollout behind kube-proxy's own mechanism (iptables DNAT, tests/e2e/kube_proxy.py).

    There a pod whose listener closed refuses new connections, as in a cluster: never-sent, so
    ``Transport()`` retries them transparently (not counted toward max_attempts) until a live pod
    takes the connection. With the defaults: no GET fails, no POST runs twice, and no POST fails
    with a never-sent error; plain httpx through the same rules loses requests.
    """
    defaults = run(tmp_path, transport="defaults", balancer="kube-proxy")
    baseline = run(tmp_path, transport="plain", balancer="kube-proxy")
    details = "\n".join(result.summary() for result in (defaults, baseline))
    print(details)
    for result in (defaults, baseline):
        result.check_load_and_records(details)
    refused = [failure for failure in baseline.load.get_failures if "ConnectError" in failure]
    assert refused, f"plain httpx met no refused connection: the rules did not route to a dead pod\n{details}"
    assert not defaults.load.get_failures, f"GETs failed through Transport()\n{details}"
    never_sent = defaults.never_sent_post_failures()
    assert not never_sent, f"POSTs failed with a never-sent error (retryable, not retried)\n{details}"
