"""A registry of pod IPs served by a real DNS server (dnsmasq): no balancer in the path.

Behind a headless Kubernetes Service (or Consul's DNS interface) the caller resolves one name to
the ready pods' IPs and balances itself. This stands in for it: the Cluster's endpoints
controller calls ``add_address`` / ``remove`` ``lag`` seconds after a pod became ready or began
its deletion, as a registry's propagation does, and each call rewrites the name's A records in
dnsmasq's hosts file and reloads it (SIGHUP), returning once dnsmasq answers the new set.
Every pod listens on its own loopback address and the same port, as pod IPs do.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from tests.dnsmasq import Dnsmasq
from tests.e2e.cluster import SlotNames

SERVICE_NAME = "api.graceful.test"


class DnsRegistry:
    """The BalancerLike of tests/e2e/cluster.py for pod IPs: ``add_address`` instead of ``add``."""

    def __init__(self, workdir: Path, slots: int, *, service_port: int) -> None:
        self.dns = Dnsmasq(workdir / "dns")
        self.name = SERVICE_NAME
        self.port = service_port  # the pods' common port: DNS A records carry no port
        self.log_path = self.dns.log_path
        self._addresses: dict[str, str] = {}  # slot -> pod IP
        self._lock = threading.Lock()
        self._slot_names = SlotNames(slots)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.dns.process

    def endpoints_url(self) -> str:
        """What a client passes as ``Transport(endpoints=...)``: gRPC's dns://SERVER/name:port."""
        return f"dns://{self.dns.authority}/{self.name}:{self.port}"

    def start(self) -> None:
        self.dns.start()

    def stop(self) -> None:
        self.dns.stop()

    def take_slot(self) -> str:
        return self._slot_names.take()

    def add(self, slot: str, port: int) -> None:
        raise RuntimeError("a DNS registry lists pod IPs: the cluster calls add_address (give it pod_ips)")

    def add_address(self, slot: str, host: str, port: int) -> None:
        if port != self.port:
            raise RuntimeError(f"pod port {port} is not the service port {self.port}")
        with self._lock:
            self._addresses[slot] = host
            self.dns.set_records(self.name, self._addresses.values())

    def remove(self, slot: str) -> None:
        with self._lock:
            if self._addresses.pop(slot, None) is not None:
                self.dns.set_records(self.name, self._addresses.values())
