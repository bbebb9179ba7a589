"""``graceful verify``: a rolling update of the user's own service, replayed on this machine.

Starts ``replicas`` instances of COMMAND (each on its own ``$PORT``; PID 1 of its own PID
namespace with root and ``unshare``, a process group of its own otherwise), waits until each is
ready, puts them behind HAProxy in mode tcp with no retries (kube-proxy's role), drives load, then
replaces every instance as a Deployment does: surge one, wait until it is ready and the balancer
has it (``lag`` later), delete an old one (preStop, SIGTERM, its endpoint removed ``lag`` later,
SIGKILL at ``grace``). Then reports what was lost and why (``_report``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from graceful.verify._cluster import LOCALHOST, Balancer, Cluster, Isolation, Pod, PodSpec, PreStop
from graceful.verify._load import HttpLoad, HttpLoadConfig
from graceful.verify._report import PodOutcome, Report, build_report

INSTALL_HAPROXY = (
    "apt-get install haproxy (Debian, Ubuntu), dnf install haproxy (Fedora), brew install haproxy"
)


class VerifyError(Exception):
    """The run cannot start (a missing program, a command that never gets ready): exit 2."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    command: Sequence[str]
    replicas: int = 2
    ready_path: str = "/healthz/ready"
    url_path: str = "/"
    method: str = "GET"
    rate: float | None = None
    clients: int = 2  # of each kind: keep-alive, new connection per request, idle keep-alive
    lag: float = 2.0
    grace: float = 30.0
    pre_stop: PreStop = None
    ready_timeout: float = 60.0
    settle: float = 2.0


def choose_isolation() -> tuple[Isolation, str]:
    """PID namespaces where this process may make them (root and unshare), else process groups."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return "pid-namespace", "each instance is PID 1 of its own PID namespace (unshare), as in a container"
    why = "not root" if os.geteuid() != 0 else "no unshare"
    return "process-group", f"each instance runs in a process group of its own ({why}: no PID namespaces)"


def pod_argv(command: Sequence[str]) -> list[str]:
    """COMMAND with ``$PORT`` / ``${PORT}`` replaced by the harness's placeholder for the port."""
    return [part.replace("${PORT}", "{port}").replace("$PORT", "{port}") for part in command]


def replace_all(
    kube: Cluster,
    spec: PodSpec,
    *,
    replicas: int,
    name: str,
    start_load: Callable[[], None],
    phase: Callable[[str], None] = lambda text: None,
    ready_timeout: float = 20.0,
) -> list[Pod]:
    """A Deployment's rolling update (maxSurge 1, maxUnavailable 0) under load; returns the old pods.

    Starts ``replicas`` pods, waits until the balancer has each, starts the load, then for each old
    pod: start its replacement, wait until the balancer has it, delete the old one (without waiting
    for it to exit, as the Deployment controller does). Waits for every old pod to end.
    """
    phase(f"starting {replicas} instances")
    old = [kube.start_pod(f"{name}-old{number}", spec) for number in range(replicas)]
    for pod in old:
        kube.wait_added(pod, timeout=ready_timeout + kube.lag)
    start_load()
    for number, pod in enumerate(old):
        phase(f"replacing instance {number + 1}/{replicas}: starting its replacement")
        replacement = kube.start_pod(f"{name}-new{number}", spec)
        kube.wait_added(replacement, timeout=ready_timeout + kube.lag)
        phase(f"replacing instance {number + 1}/{replicas}: deleting the old one")
        kube.delete_pod(pod)
    phase("waiting for the old instances to exit")
    if not kube.wait_exited(old, kube.grace + 15):
        kube.errors.append("old instances still running after the grace period")
    return old


def verify(options: VerifyOptions, *, progress: Callable[[str], None] | None = None) -> Report:
    """Run the rolling update; the report of what was lost. Raises VerifyError when it cannot run."""
    if shutil.which("haproxy") is None:
        raise VerifyError(f"haproxy is not installed (kube-proxy's stand-in): {INSTALL_HAPROXY}")
    isolation, isolation_text = choose_isolation()
    say = progress or (lambda text: None)
    say(isolation_text)
    workdir = Path(tempfile.mkdtemp(prefix="graceful-verify-"))
    spec = PodSpec(
        argv=pod_argv(options.command),
        pre_stop=options.pre_stop,
        readiness_path=options.ready_path,
        readiness_fallback=True,
    )
    balancer = Balancer(workdir, 2 * options.replicas + 2)
    load: HttpLoad | None = None
    kube: Cluster | None = None
    state = {"phase": "starting"}
    began = time.monotonic()
    try:
        balancer.start()
        kube = Cluster(
            workdir,
            balancer,
            lag=options.lag,
            grace=options.grace,
            isolation=isolation,
            inherit_graceful_env=True,
        )
        config = HttpLoadConfig(
            keepalive=options.clients,
            newconn=options.clients,
            idle=options.clients,
            path=options.url_path,
            method=options.method,
            rate=options.rate,
        )
        load = HttpLoad(LOCALHOST, balancer.port, config)
        ticker = _Ticker(load, state, say)
        ticker.start()
        try:
            old = replace_all(
                kube,
                spec,
                replicas=options.replicas,
                name="instance",
                start_load=load.start,
                phase=lambda text: state.update(phase=text),
                ready_timeout=options.ready_timeout,
            )
            state["phase"] = "load after the rollout"
            time.sleep(options.settle)
        except RuntimeError as exc:  # a pod that never got ready
            raise VerifyError(f"{exc}") from exc
        finally:
            ticker.stop()
            result = load.stop()
        if kube.fallback_note:
            say(kube.fallback_note)
        pods = [
            PodOutcome(
                name=pod.name,
                term_to_exit=pod.term_to_exit,
                exit_status=pod.exit_status,
                sigkilled=pod.sigkilled,
                pre_stop=pod.pre_stop_result,
            )
            for pod in old
        ]
        for error in kube.errors:
            say(f"harness: {error}")
        return build_report(
            result,
            pods,
            seconds=time.monotonic() - began,
            isolation=isolation,
            readiness="tcp (no readiness path)" if kube.fallback_note else f"GET {options.ready_path}",
            grace=options.grace,
        )
    finally:
        if kube is not None:
            kube.close()
        balancer.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class _Ticker:
    """The live progress line: phase, requests and failures so far, every half second."""

    def __init__(self, load: HttpLoad, state: dict[str, str], say: Callable[[str], None]) -> None:
        self._load = load
        self._state = state
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verify-progress", daemon=True)
        self._tty = sys.stderr.isatty()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._tty:
            sys.stderr.write("\n")

    def _run(self) -> None:
        last = ""
        for tick in range(100_000):  # bounded: half a second each, 14 hours
            if self._stop.wait(0.5):
                return
            result = self._load.result
            line = f"{self._state['phase']} | requests {result.requests} | failed {result.failures}"
            if self._tty:
                sys.stderr.write("\r" + line.ljust(100)[:100])
                sys.stderr.flush()
            elif line.split(" | ")[0] != last or tick % 10 == 0:  # a line per phase, and every 5 s
                self._say(line)
                last = line.split(" | ")[0]


def parse_pre_stop(text: str) -> PreStop:
    """``sleep:N``, ``http:PATH`` or ``exec:COMMAND`` (ValueError with the allowed forms)."""
    kind, _, value = text.partition(":")
    if kind == "sleep":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 3600:
            raise ValueError(f"--prestop {text!r}: sleep takes seconds from 0 to 3600, e.g. sleep:5")
        return ("exec", seconds)
    if kind == "http" and value.startswith("/"):
        return ("http", value)
    if kind == "exec" and value.strip():
        return ("command", value)
    raise ValueError(f"--prestop {text!r}: use sleep:SECONDS, http:/PATH or exec:COMMAND")
