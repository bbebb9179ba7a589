"""kube-proxy's own mechanism on one machine: iptables NAT rules, no proxy process in the path.

kube-proxy in iptables mode (its default) does not accept connections: it rewrites a Service's
address to one endpoint's with DNAT rules chosen by ``-m statistic --mode random`` (probability
1/n, then 1/(n-1), ... so each endpoint gets 1/n), replaced atomically with ``iptables-restore
--noflush``. An established connection keeps its endpoint through conntrack, whatever the rules
become. So, unlike HAProxy in mode tcp, a pod whose listener closed *refuses* a new connection
(the client sees ECONNREFUSED, as in a cluster), instead of the balancer accepting the connection
and closing it without a response.

Here the Service address is a free port on 127.0.0.1 that nothing listens on (with no endpoint, a
connection is refused, as kube-proxy's REJECT rule does), and the rules sit in a chain of their own
in the ``nat`` table's OUTPUT chain (locally made connections), matched only for that port, and
removed on stop. Needs root and Debian's ``iptables``.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from tests.e2e.cluster import LOCALHOST, SlotNames, free_port


class KubeProxyNat:
    """The BalancerLike of tests/e2e/cluster.py made of iptables NAT rules (kube-proxy's iptables mode)."""

    def __init__(self, workdir: Path, slots: int) -> None:
        self.workdir = workdir
        self.log_path = workdir / "kube-proxy.log"
        self.port = 0
        #: No process: the kernel does the balancing. ``running`` says whether the rules are in place.
        self.process: subprocess.Popen[bytes] | None = None
        self.running = False
        self.chain = ""
        self._endpoints: dict[str, int] = {}  # slot -> pod port, in the order added
        self._lock = threading.Lock()
        self._slot_names = SlotNames(slots)

    def _jump_rule(self) -> list[str]:
        return ["OUTPUT", "-p", "tcp", "-d", LOCALHOST, "--dport", str(self.port), "-j", self.chain]

    def start(self) -> None:
        self.port = free_port()
        self.chain = f"GRACEFUL-SVC-{self.port}"
        self._iptables("-N", self.chain)
        self._iptables("-I", *self._jump_rule())
        self.running = True
        self._log(f"service {LOCALHOST}:{self.port} -> chain {self.chain}")

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._iptables("-D", *self._jump_rule())
        self._iptables("-F", self.chain)
        self._iptables("-X", self.chain)

    def take_slot(self) -> str:
        return self._slot_names.take()

    def add(self, slot: str, port: int) -> None:
        with self._lock:
            self._endpoints[slot] = port
            self._sync()

    def remove(self, slot: str) -> None:
        with self._lock:
            self._endpoints.pop(slot, None)
            self._sync()

    def rules_text(self) -> str:
        """The iptables-restore input for the current endpoints (kube-proxy's probability ladder)."""
        ports = list(self._endpoints.values())
        lines = ["*nat", f":{self.chain} - [0:0]"]  # declaring the chain flushes it, atomically
        for index, port in enumerate(ports):
            left = len(ports) - index
            statistic = [] if left == 1 else ["-m statistic --mode random", f"--probability {1 / left:.5f}"]
            lines.append(
                " ".join(
                    [f"-A {self.chain} -p tcp", *statistic, f"-j DNAT --to-destination {LOCALHOST}:{port}"]
                )
            )
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _sync(self) -> None:
        text = self.rules_text()
        subprocess.run(
            ["iptables-restore", "--noflush"],
            input=text.encode(),
            check=True,
            capture_output=True,
            timeout=10,
        )
        self._log(f"endpoints {sorted(self._endpoints.items())}")

    def _iptables(self, *args: str) -> None:
        result = subprocess.run(["iptables", "-t", "nat", *args], capture_output=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"iptables -t nat {' '.join(args)}: {result.stderr.decode().strip()}")

    def _log(self, line: str) -> None:
        with self.log_path.open("a") as log:
            log.write(line + "\n")
