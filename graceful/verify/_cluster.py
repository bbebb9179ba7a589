"""The termination race of a cluster, rebuilt from real programs on one machine.

Used by ``graceful verify`` (the product) and by the project's own end-to-end tests
(tests/e2e/cluster.py adds its other balancers and its scenarios on top of this module):

- ``Balancer``: HAProxy in ``mode tcp`` with ``retries 0`` stands in for kube-proxy; servers are
  switched at runtime over its admin socket, and connections already open stay on a server put in
  maintenance, as conntrack entries do.
- ``Pod``: with root, ``unshare --pid --fork --mount-proc --kill-child`` makes the entrypoint PID 1
  of its own PID namespace, signalled from outside by its host pid, as a container runtime does;
  without root, a process group of its own (``isolation="process-group"``): SIGTERM to its leader,
  SIGKILL to the whole group.
- ``Cluster``: the kubelet (readiness probes, preStop, SIGTERM, SIGKILL at the grace period) and the
  endpoints controller (add / remove a pod at the balancer ``lag`` seconds after the event).

Pods and HAProxy are started with PR_SET_PDEATHSIG: if the harness dies, they die with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx

LOCALHOST = "127.0.0.1"

#: A preStop hook: ("exec", N) is ``sleep N`` in the container (the kubelet waits for it),
#: ("http", path) a GET the kubelet waits for, ("command", shell line) a command run to its end.
PreStop = tuple[Literal["exec"], float] | tuple[Literal["http", "command"], str] | None
Isolation = Literal["pid-namespace", "process-group"]


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it; nothing binds it in between)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children of children, bounded), found while ``pid``
    lives: once it is killed they are re-parented and the link is gone."""
    found: list[int] = []
    queue = [pid]
    for _ in range(10_000):
        if not queue:
            break
        parent = queue.pop()
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{parent}/task"):
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                for child in map(int, children):
                    if child not in found:
                        found.append(child)
                        queue.append(child)
    return found


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
            f"    server s{number} {LOCALHOST}:1 disabled {self.server_options.get(f's{number}', '')}".rstrip()  # noqa: E501
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
    #: A 404 on the readiness path counts as ready (the server answers HTTP, so TCP is up): for an
    #: app without a readiness endpoint (graceful verify's fallback; the cluster says so once).
    readiness_fallback: bool = False


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
        isolation: Isolation = "pid-namespace",
        cwd: Path | None = None,
        pythonpath: Sequence[str] = (),
        inherit_graceful_env: bool = False,
    ) -> None:
        """``pod_ips``: give each pod its own loopback address from this list, all on one port
        (``pod_port``, a free one if 0), as pod IPs behind a headless Service; else each pod gets
        127.0.0.1 and a port of its own. ``isolation``: each pod PID 1 of its own PID namespace
        (root), or a process group of its own. ``cwd`` and ``pythonpath``: where pods start, and
        directories put first on their PYTHONPATH."""
        self.workdir = workdir
        self.fallback_note = ""
        self.isolation = isolation
        self.cwd = cwd
        self.pythonpath = list(pythonpath)
        # The tests give each pod exactly its spec's GRACEFUL_* settings; graceful verify passes
        # the user's own through.
        self.inherit_graceful_env = inherit_graceful_env
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
        env = {
            key: value
            for key, value in os.environ.items()
            if self.inherit_graceful_env or not key.startswith("GRACEFUL_")
        }
        env.update(
            {
                "POD_NAME": name,
                "PORT": str(port),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [*self.pythonpath, env.get("PYTHONPATH")])),
                # As in an image, `python` (also one a supervisor starts) is the one with the
                # packages: this interpreter's directory first.
                "PATH": os.pathsep.join(filter(None, [os.path.dirname(sys.executable), env.get("PATH")])),
            }
        )
        env.update(spec.env)
        log_path = self.workdir / f"{name}.log"
        if self.isolation == "pid-namespace":
            command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--", *argv]
        else:
            command = argv
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                # Without a PID namespace, a process group of its own: SIGKILL ends all of it.
                start_new_session=self.isolation == "process-group",
            )
        pod = Pod(name=name, spec=spec, port=port, log_path=log_path, process=process, host=host)
        pod.started_at = time.monotonic()
        with self._lock:
            self.pods.append(pod)
        pod.pid1 = self._find_pid1(process.pid) if self.isolation == "pid-namespace" else process.pid
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
                    status = client.get(url, headers={"connection": "close"}).status_code
                except httpx.HTTPError:
                    status = 0
                ok = 200 <= status < 400
                if status == 404 and pod.spec.readiness_fallback:
                    ok = True
                    self.fallback_note = self.fallback_note or (
                        f"warning: {pod.spec.readiness_path} answered 404: readiness fell back to "
                        "'it answers HTTP' (a TCP probe); pass --ready PATH for a real one"
                    )
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
        """Wait until the balancer has ``pod``; a pod that exits first ends the wait at once."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            if pod.added.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                return
            status = pod.process.poll()
            if status is not None:
                raise RuntimeError(
                    f"{pod.name} exited with status {status} before it was ready; log:\n{pod.log_tail()}"
                )
            if time.monotonic() >= deadline:
                break
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
            # SIGKILL to PID 1 takes the whole namespace with it (to the group without one).
            pod.sigkilled = True
            self._kill(pod)
            if not self._wait_exit(pod, 10.0):
                pod.process.kill()  # unshare itself; --kill-child finishes the namespace
                self._wait_exit(pod, 5.0)

    def _kill(self, pod: Pod) -> None:
        """SIGKILL the pod: PID 1 takes its namespace with it; without one, its group and every
        process below it (a supervisor such as graceful-run starts its child in a session of its
        own, which a killpg of the pod's group would miss and leave running)."""
        if self.isolation == "pid-namespace":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pod.pid1, signal.SIGKILL)
            return
        below = descendants(pod.pid1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.pid1, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _run_pre_stop(self, pod: Pod, kill_at: float) -> None:
        hook = pod.spec.pre_stop
        if hook is None:
            return
        began = time.monotonic()
        if hook[0] == "exec":
            # `sleep N` inside the container: the kubelet waits for it (bounded by the grace period).
            self._wait_exit(pod, min(float(hook[1]), kill_at - began))
            pod.pre_stop_result = f"exec sleep {hook[1]}"
        elif hook[0] == "command":
            env = {**os.environ, "PORT": str(pod.port), "POD_PID": str(pod.pid1)}
            try:
                timeout = max(0.1, kill_at - began)
                done = subprocess.run(
                    ["sh", "-c", str(hook[1])], env=env, capture_output=True, timeout=timeout
                )
                pod.pre_stop_result = f"exec {hook[1]!r} -> exit {done.returncode}"
            except subprocess.TimeoutExpired:
                pod.pre_stop_result = f"exec {hook[1]!r} still running at the grace period"
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
                self._kill(pod)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pod.process.wait(5)
                if pod.process.poll() is None:
                    pod.process.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        pod.process.wait(5)
        deadline = time.monotonic() + 10
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
