"""nginx as an ingress without dynamic upstreams: every endpoint change is a config reload.

This is what an ingress controller that templates nginx.conf does (ingress-nginx before its Lua
balancer, plain nginx in front of a Service's pods): the ``upstream`` block lives in a file of its
own, an endpoint change rewrites that file and sends the master SIGHUP (what ``nginx -s reload``
does). The master starts new workers with the new upstream and tells the old ones to shut down
gracefully: they stop accepting, finish what is in flight and close their idle connections.

``add()`` and ``remove()`` return only once the reload took effect: the config generation the file
names is what a fresh connection is answered with, and every worker of the previous config has
stopped accepting (nginx retitles a worker "worker process is shutting down" in the same step as it
closes its listening sockets; ``ngx_worker_process_cycle`` in src/os/unix/ngx_process_cycle.c).

nginx runs as PID 1 of its own PID namespace (``unshare --pid --fork --kill-child``): nginx workers
do not die with their master, so a SIGKILLed master would leave workers listening forever; the
death of a namespace's PID 1 takes every process in it (pid_namespaces(7)).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from tests.e2e.cluster import LOCALHOST, SlotNames, _die_with_parent, _tail, _wait_until, free_port

GENERATION_PATH = "/__balancer/generation"
# Below the pods' own idle keep-alive timeout (uvicorn's 5 s, the harness's gunicorn --keep-alive 5):
# nginx then always closes an idle upstream connection first, instead of reusing one the pod is
# closing at that moment (a 502 that would be the pool's doing, not the rollout's).
UPSTREAM_IDLE_SECONDS = 4
RELOAD_TIMEOUT = 10.0


def temp_paths(work: Path) -> str:
    """nginx's temp directories inside ``work`` (nginx -p DIR does not move them: they are compiled
    in under /var/lib/nginx), as lines of an ``http`` block; ``work/tmp`` must exist."""
    return "\n".join(
        f"    {kind}_temp_path {work}/tmp/{name};"
        for kind, name in (
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )


class NginxBalancer:
    """nginx (HTTP, round robin, no retries, no passive health check) reloaded on every change.

    ``client_keepalive=False`` (the default) answers every client request with ``Connection:
    close``: each reload closes the old workers' idle client connections, which races a client's
    next request on that connection whatever the pods do (tests/e2e/test_nginx.py shows the close).
    The rollout measures the pods, so the clients' side has no keep-alive; the nginx-to-pod side
    keeps its pool (``keepalive 32``), which is where a pod's drain is seen.
    """

    def __init__(self, workdir: Path, slots: int, *, client_keepalive: bool = False) -> None:
        self.workdir = workdir / "nginx"
        self.slots = slots
        self.client_keepalive = client_keepalive
        self.config_path = self.workdir / "nginx.conf"
        self.endpoints_path = self.workdir / "endpoints.conf"
        self.log_path = self.workdir / "nginx.log"  # error log and the access log of failed requests
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None  # unshare; its child is the master
        self.master = 0  # host pid of the nginx master
        self.generation = 0
        self.endpoints: dict[str, int] = {}  # slot -> pod port, in the order pods were added
        self._lock = threading.Lock()
        self._slot_names = SlotNames(slots)

    # -- config ------------------------------------------------------------------------------------

    def config_text(self) -> str:
        work = self.workdir
        client_keepalive = "75s" if self.client_keepalive else "0"
        return f"""# Written by tests/e2e/nginx.py; endpoints are in {self.endpoints_path.name}.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log {self.log_path} notice;

events {{
    worker_connections 2048;
}}

http {{
{temp_paths(work)}

    # Websockets need Upgrade and Connection passed on; every other request gets an empty
    # Connection header, without which nginx sends "close" and the upstream pool never fills.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}
    # Only what went wrong is logged (next to the error log's reasons), with the pod it went to.
    map $status $failed {{
        ~^[123] 0;
        default 1;
    }}
    log_format failed '$time_iso8601 $status upstream=$upstream_addr '
                      'upstream_status=$upstream_status seconds=$request_time "$request"';
    access_log {self.log_path} failed if=$failed;

    include {self.endpoints_path};

    server {{
        listen {LOCALHOST}:{self.port};
        keepalive_timeout {client_keepalive};

        location = {GENERATION_PATH} {{
            return 200 "$endpoints_generation\\n";
        }}

        location / {{
            proxy_pass http://pods;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # No retry on another pod, as kube-proxy has none: a pod's refusal or reset reaches
            # the client as a 502 (ingress-nginx retries "error timeout" by default, which hides
            # losses instead of measuring them).
            proxy_next_upstream off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            proxy_send_timeout 30s;
            # Streamed bodies pass through chunk by chunk, as for SSE.
            proxy_buffering off;
        }}
    }}
}}
"""

    def endpoints_text(self) -> str:
        # max_fails=0: no passive health check. By default (max_fails=1 fail_timeout=10s) one
        # refused connect takes a pod out for 10 s, which hides all but the first loss of a server
        # that closed its listener too early; the rollout must count every one of them.
        servers = [f"    server {LOCALHOST}:{port} max_fails=0;" for port in self.endpoints.values()]
        if not servers:
            # An upstream without servers is invalid config; a server marked down is not, and
            # requests then get 502 ("no live upstreams"), like a Service without endpoints.
            servers = [f"    server {LOCALHOST}:1 down;"]
        return "\n".join(
            [
                f"# generation {self.generation}",
                "map $host $endpoints_generation {",
                f"    default {self.generation};",
                "}",
                "upstream pods {",
                *servers,
                "    keepalive 32;",
                f"    keepalive_timeout {UPSTREAM_IDLE_SECONDS}s;",
                "}",
                "",
            ]
        )

    def _write_endpoints(self) -> None:
        # Rename over the included file: nginx never reads a half-written one.
        scratch = self.endpoints_path.with_suffix(".tmp")
        scratch.write_text(self.endpoints_text())
        os.replace(scratch, self.endpoints_path)

    # -- process -----------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        # A free port can be taken between choosing it and binding it: try again with another one.
        for _ in range(attempts):
            self.port = free_port()
            self.generation = 1
            self._write_endpoints()
            self.config_path.write_text(self.config_text())
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    # -e: the startup error log (Debian's build defaults to stderr) also goes here.
                    # -p: nothing is read from or written to /etc/nginx or /var/lib/nginx.
                    ["unshare", "--pid", "--fork", "--kill-child", "--",
                     "nginx", "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(self.log_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )  # fmt: skip
            if _wait_until(self._started, timeout=5.0, interval=0.05) and self._serving(self.generation):
                return
            self.stop()
        raise RuntimeError(f"nginx did not start; log:\n{_tail(self.log_path)}")

    def _started(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # ends the wait; start() looks again
        if not self.master:
            children = _children(self.process.pid)
            self.master = children[0] if children else 0
        return bool(self.master) and bool(self._workers()) and self._serving(self.generation)

    def stop(self) -> None:
        process, self.process = self.process, None
        master, self.master = self.master, 0
        if process is None:
            return
        # SIGTERM to the master is nginx's fast shutdown; unshare's own death would SIGKILL it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(master or process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()  # --kill-child then takes the namespace
            process.wait(5)

    # -- endpoints ---------------------------------------------------------------------------------

    def take_slot(self) -> str:
        """A name for one pod's endpoint, never reused within a run (as with HAProxy's slots)."""
        return self._slot_names.take()

    def add(self, slot: str, port: int) -> None:
        with self._lock:
            self.endpoints[slot] = port
            self._reload()

    def remove(self, slot: str) -> None:
        with self._lock:
            if self.endpoints.pop(slot, None) is not None:
                self._reload()

    def _reload(self) -> None:
        """Rewrite the upstream file, SIGHUP the master, return once the new config serves alone."""
        if self.process is None or not self.master:
            raise RuntimeError("nginx is not running")
        previous = set(self._workers())
        self.generation += 1
        self._write_endpoints()
        os.kill(self.master, signal.SIGHUP)

        def took_effect() -> bool:
            workers = self._workers()
            old_accepting = previous & set(workers)
            return bool(workers) and not old_accepting and self._serving(self.generation)

        if not _wait_until(took_effect, timeout=RELOAD_TIMEOUT, interval=0.01):
            raise RuntimeError(
                f"nginx reload to generation {self.generation} not in effect after {RELOAD_TIMEOUT} s "
                f"(workers {self._workers()}, previous {sorted(previous)}); log:\n{_tail(self.log_path)}"
            )

    def _workers(self) -> list[int]:
        """The master's workers that still accept connections (not yet "shutting down")."""
        accepting = []
        for pid in _children(self.master):
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if "worker process" in title and "shutting down" not in title:
                    accepting.append(pid)
        return accepting

    def _serving(self, generation: int) -> bool:
        """A fresh connection is answered by a worker of config ``generation``."""
        url = f"http://{LOCALHOST}:{self.port}{GENERATION_PATH}"
        try:
            response = httpx.get(url, headers={"connection": "close"}, timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text.strip() == str(generation)


def _children(pid: int) -> list[int]:
    if not pid:
        return []
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []
