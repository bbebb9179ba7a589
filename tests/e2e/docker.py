"""Real containers for the rollout harness: dockerd, a base image made without a registry, the
example image, and pods that are ``docker run --network host`` containers (issue 16).

- ``Dockerd``: uses a running dockerd, or starts one (background, waits for its socket, stops it
  after).
- ``base_image``: ``mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3
  bookworm`` then ``docker import``: Debian's packages, no registry pull. Cached by its inputs (the
  tarball under ~/.cache/graceful, the image by a tag made of their hash).
- ``build_example``: wheels built on the host (``pip wheel``: the build container has no index
  access), then ``docker build -f Dockerfile.example --build-arg BASE_IMAGE=...``.
- ``DockerCluster``: the harness's kubelet with containers for pods: deletion is
  ``docker stop -t GRACE`` (the runtime's own SIGTERM, then SIGKILL), and each container's exit code
  comes from ``docker inspect`` (137 = SIGKILLed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graceful.verify._run import replace_all
from tests.e2e.cluster import (
    LOCALHOST,
    REPO_ROOT,
    Balancer,
    Cluster,
    Pod,
    PodSpec,
    _die_with_parent,
    free_port,
)
from tests.e2e.load import Load, LoadConfig

DOCKER_SOCKET = Path("/var/run/docker.sock")
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "graceful"
EXAMPLE_EXTRAS = "uvicorn,starlette"


def _run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def docker_answers() -> bool:
    try:
        return _run(["docker", "info", "--format", "{{.ServerVersion}}"], 20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing() -> list[str]:
    """What this machine lacks for the container tests (empty: everything is there)."""
    need = [tool for tool in ("docker", "dockerd", "mmdebstrap") if shutil.which(tool) is None]
    found = [f"`{tool}` not on PATH (Debian: apt-get install docker.io mmdebstrap)" for tool in need]
    if os.geteuid() != 0:
        found.append("not root (dockerd and mmdebstrap need it here)")
    return found


@contextlib.contextmanager
def dockerd(workdir: Path) -> Iterator[None]:
    """A dockerd: the running one, or one started for the tests (stopped after)."""
    if docker_answers():
        yield
        return
    log = (workdir / "dockerd.log").open("ab")
    process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and not docker_answers():
            time.sleep(0.25)
        if not docker_answers():
            tail = (workdir / "dockerd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dockerd did not start within 60 s (exit {process.poll()}):\n{tail}")
        yield
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
        if process.poll() is None:
            process.kill()
        log.close()


def base_image() -> str:
    """The base image's tag, made once per set of inputs (mmdebstrap + docker import)."""
    key = hashlib.sha256(f"{BASE_SUITE} minbase {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tag = f"graceful-base:{key}"
    if _run(["docker", "image", "inspect", tag], 30).returncode == 0:
        return tag
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.exists():
        partial = tarball.with_name(f"base-{key}.partial.tar")  # mmdebstrap picks the format by ".tar"
        made = _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(partial),
            ],
            600,
        )
        if made.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({made.returncode}):\n{made.stderr[-2000:]}")
        partial.rename(tarball)
    imported = _run(["docker", "import", str(tarball), tag], 300)
    if imported.returncode != 0:
        raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    return tag


def build_example(base: str, tag: str = "graceful-example:e2e") -> str:
    """Dockerfile.example built on ``base`` from a wheelhouse made on the host (no index in the build)."""
    wheelhouse = REPO_ROOT / "wheelhouse"
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheels = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheelhouse),
            f".[{EXAMPLE_EXTRAS}]",
            "websockets",  # what Dockerfile.example installs beside the extras (the app's /ws)
        ],
        600,
        cwd=REPO_ROOT,
    )
    if wheels.returncode != 0:
        raise RuntimeError(f"pip wheel failed:\n{wheels.stderr[-2000:]}")
    try:
        built = _run(
            [
                "docker",
                "build",
                "-q",
                "-f",
                "Dockerfile.example",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                tag,
                ".",
            ],
            900,
            cwd=REPO_ROOT,
        )
    finally:
        shutil.rmtree(wheelhouse, ignore_errors=True)
    if built.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{built.stdout[-1000:]}\n{built.stderr[-3000:]}")
    return tag


class DockerCluster(Cluster):
    """The kubelet of tests/e2e/cluster.py with containers for pods.

    A pod's ``spec.argv`` is the ``docker run`` arguments after the container name: options, the
    image and its command, with "{port}" replaced (``--network host``: its address is 127.0.0.1).
    The ``docker run`` client stays attached, so the pod's process ends when the container does.
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.run_id = uuid.uuid4().hex[:8]
        self.containers: dict[str, str] = {}  # pod name -> container name
        self.stop_seconds: dict[str, float] = {}
        self._names_lock = threading.Lock()

    def start_pod(self, name: str, spec: PodSpec) -> Pod:
        port = free_port()
        container = f"graceful-e2e-{self.run_id}-{name}"
        argv = [part.replace("{port}", str(port)) for part in spec.argv]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["docker", "run", "--name", container, "--network", "host", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        pod = Pod(name=name, spec=spec, port=port, log_path=log_path, process=process)
        pod.pid1 = process.pid  # the docker client; signals go through the runtime (_kill, docker stop)
        pod.started_at = time.monotonic()
        with self._names_lock:
            self.containers[name] = container
        with self._lock:
            self.pods.append(pod)
        self._spawn(self._kubelet_probe, pod, f"probe-{name}")
        return pod

    def _kubelet_terminate(self, pod: Pod) -> None:
        assert pod.deleted_at is not None
        kill_at = pod.deleted_at + self.grace
        self._run_pre_stop(pod, kill_at)
        container = self.containers[pod.name]
        grace = max(1, round(kill_at - time.monotonic()))
        pod.sigterm_at = time.monotonic()
        # The runtime's own termination: SIGTERM to the container's PID 1, SIGKILL after `grace`.
        _run(["docker", "stop", "-t", str(grace), container], grace + 30)
        self.stop_seconds[pod.name] = time.monotonic() - pod.sigterm_at
        self._wait_exit(pod, 15.0)
        code = _run(["docker", "inspect", "-f", "{{.State.ExitCode}}", container], 30).stdout.strip()
        if code.lstrip("-").isdigit():
            pod.exit_status = int(code)
            pod.sigkilled = pod.exit_status == 137

    def _kill(self, pod: Pod) -> None:
        container = self.containers.get(pod.name)
        if container is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                _run(["docker", "kill", container], 30)

    def close(self) -> None:
        self._stop.set()
        for container in list(self.containers.values()):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                _run(["docker", "rm", "-f", container], 60)
        super().close()


# -- the container rollout (tests/e2e/test_docker.py and bench/rollout.py --containers) ------------

LAG = 2.0
DRAIN_DELAY = 3.0
APP = "examples.starlette_app:app"
# Every client kind of ROLLOUT.md, fewer of each than the in-process rollouts: every pod is a
# container, on 2 cores.
LOAD = LoadConfig(keepalive=2, newconn=2, slow=1, stream=1, websocket=1, idle=1, slow_seconds=1.0)
# The app (examples/starlette_app.py) has graceful's middleware; under plain uvicorn it would hook
# SIGTERM and drain anyway. The baselines turn that off: uvicorn's stock SIGTERM behaviour.
STOCK = ["-e", "GRACEFUL_CHAIN_SERVER_SIGNALS=0"]


def uvicorn_args(port: str = "{port}") -> list[str]:
    return [APP, "--host", LOCALHOST, "--port", port]


def container_scenarios(
    image: str, drain_delay: float = DRAIN_DELAY
) -> dict[str, tuple[str, list[str], float]]:
    """name -> (description, ``docker run`` arguments, grace): the image as shipped and the baselines."""
    return {
        "graceful-run": (
            "graceful-run as ENTRYPOINT (the image as shipped)",
            [
                *env(drain_delay=drain_delay, drain_timeout=10),
                image,
                "python",
                "-m",
                "graceful.uvicorn",
                *uvicorn_args(),
            ],
            30.0,
        ),
        "uvicorn": (
            "CMD uvicorn, no graceful-run",
            [*STOCK, "--entrypoint", "uvicorn", image, *uvicorn_args()],
            30.0,
        ),
        "shell-form": (
            "shell-form CMD (sh -c 'uvicorn ...'), grace 5 s",
            [*STOCK, "--entrypoint", "sh", image, "-c", f"uvicorn {APP} --host {LOCALHOST} --port {{port}}"],
            5.0,
        ),
        "docker --init": (
            "docker run --init (tini) + plain uvicorn",
            [*STOCK, "--init", "--entrypoint", "uvicorn", image, *uvicorn_args()],
            30.0,
        ),
    }


@dataclass
class Outcome:
    failed: int
    requests: int
    exit_codes: list[int | None]
    stop_seconds: list[float]
    longest: float
    summary: str


def container_rollout(workdir: Path, run_args: list[str], *, grace: float = 30.0) -> Outcome:
    """Two containers replaced under load behind HAProxy (lag LAG): what the clients and Docker saw."""
    workdir.mkdir(parents=True, exist_ok=True)
    balancer = Balancer(workdir, 8)
    balancer.start()
    kube = DockerCluster(workdir, balancer, lag=LAG, grace=grace)
    spec = PodSpec(argv=run_args, readiness_path="/healthz/ready")
    load = Load(LOCALHOST, balancer.port, LOAD)
    try:
        old = replace_all(kube, spec, replicas=2, name="c", start_load=load.start, ready_timeout=60)
        time.sleep(2.0)
    finally:
        result = load.stop()
        kube.close()
        balancer.stop()
    codes = [pod.exit_status for pod in old]
    stops = [kube.stop_seconds.get(pod.name, -1.0) for pod in old]
    longest = max(result.longest.values(), default=0.0)
    summary = (
        f"{' '.join(run_args[:6])}...: {result.requests} requests, failures {result.failures_text()}; "
        f"exit codes {codes}, docker stop took {[round(s, 2) for s in stops]} s; longest request {longest:.2f} s; "
        f"samples {result.samples[:3]}; errors {kube.errors}"
    )
    return Outcome(result.failures, result.requests, codes, stops, longest, summary)


def env(**values: float) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-e", f"GRACEFUL_{key.upper()}={value:g}")]
