"""A real DNS server for tests: dnsmasq on 127.0.0.1, its records set from Python.

dnsmasq (Debian's ``dnsmasq-base``: the binary alone, no system service) answers from a hosts file
of its own (``--addn-hosts``), re-read on SIGHUP (dnsmasq(8), SIGNALS: "re-read /etc/hosts and
/etc/ethers and any file given by --dhcp-hostsfile ... and --addn-hosts"). Nothing else is read:
``-C /dev/null`` skips /etc/dnsmasq.conf, ``--no-resolv`` and ``--no-hosts`` the machine's
resolv.conf and /etc/hosts, and ``--local=/#/`` answers every name from local data only, so a name
with A records but no AAAA gets NOERROR with no data (what CoreDNS answers for an IPv4-only
Service) instead of REFUSED for want of an upstream server.

``set_records()`` returns once a query answers with the new set: a test that changes records then
measures only its own subject, not dnsmasq's reload.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from graceful.verify._cluster import _wait_until  # the harness's one bounded poll

LOCALHOST = "127.0.0.1"
START_TIMEOUT = 5.0
RELOAD_TIMEOUT = 5.0
QUERY_TIMEOUT = 0.5


def dnsmasq_binary() -> str | None:
    """The dnsmasq program (Debian puts it in /usr/sbin, which a user's PATH may lack), or None."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


def free_udp_port() -> int:
    """A port free a moment ago for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOCALHOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((LOCALHOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1 after 20 tries")


class Dnsmasq:
    """One dnsmasq process serving the records given to ``set_records`` (A and AAAA by address)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.hosts_path = work / "dnsmasq.hosts"
        self.log_path = work / "dnsmasq.log"
        self.pid_path = work / "dnsmasq.pid"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._records: dict[str, list[str]] = {}

    @property
    def authority(self) -> str:
        """``127.0.0.1:PORT``, the SERVER of a ``dns://SERVER/name:port`` URL."""
        return f"{LOCALHOST}:{self.port}"

    def start(self) -> Dnsmasq:
        binary = dnsmasq_binary()
        if binary is None:
            raise RuntimeError("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
        self.work.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        # A restart keeps the port: a client configured with it finds the server back.
        self.port = self.port or free_udp_port()
        # -k: stay in the foreground, our child (SIGTERM ends it); --user=root: do not drop to the
        # "dnsmasq" user, which dnsmasq-base alone does not create.
        command = [
            binary,
            "-k",
            "-C",
            "/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--local=/#/",
            f"--port={self.port}",
            f"--listen-address={LOCALHOST}",
            "--bind-interfaces",
            f"--addn-hosts={self.hosts_path}",
            "--user=root",
            f"--pid-file={self.pid_path}",
            f"--log-facility={self.log_path}",
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not _wait_until(self._answers, START_TIMEOUT, interval=0.05) or self.process.poll() is not None:
            why = self._why()
            self.stop()
            raise RuntimeError(f"dnsmasq did not answer on {self.authority} within {START_TIMEOUT} s: {why}")
        return self

    def set_records(self, name: str, addresses: Iterable[str], timeout: float = RELOAD_TIMEOUT) -> None:
        """Make ``name`` resolve to exactly ``addresses`` (none: the name is gone), then wait until it does."""
        wanted = set(addresses)
        self._records[name] = sorted(wanted)
        self._write_hosts()
        assert self.process is not None, "start() first"
        self.process.send_signal(signal.SIGHUP)
        if not _wait_until(lambda: self.query(name) == wanted, timeout, interval=0.02):
            raise RuntimeError(
                f"dnsmasq still answers {sorted(self.query(name))} for {name} {timeout} s after SIGHUP, "
                f"not {sorted(wanted)}: {self._why()}"
            )

    def query(self, name: str) -> set[str]:
        """The A and AAAA addresses dnsmasq answers for ``name`` now (empty for NXDOMAIN or no answer)."""
        import dns.message
        import dns.query
        import dns.rdatatype

        found: set[str] = set()
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response = dns.query.udp(
                dns.message.make_query(name, rdtype), LOCALHOST, QUERY_TIMEOUT, self.port
            )
            for rrset in response.answer:
                found.update(rdata.to_text() for rdata in rrset)
        return found

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; records and port stay for a later ``start()``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # exited: stop polling, start() reports why
        try:
            self.query("ready.invalid")
        except Exception:  # dns.exception.Timeout before it binds, or ConnectionRefusedError
            return False
        return True

    def _write_hosts(self) -> None:
        # Written aside and renamed over (rename(2) is atomic): a SIGHUP never meets half a file.
        lines = [f"{address} {name}\n" for name, addresses in self._records.items() for address in addresses]
        temporary = self.hosts_path.with_suffix(".tmp")
        temporary.write_text("".join(lines))
        os.replace(temporary, self.hosts_path)

    def _why(self) -> str:
        parts = []
        if self.process is not None and self.process.poll() is not None:
            parts.append(f"exited with {self.process.returncode}")
            if self.process.stderr is not None:
                with contextlib.suppress(OSError):
                    parts.append(self.process.stderr.read().decode(errors="replace").strip())
        with contextlib.suppress(OSError):
            parts.append(self.log_path.read_text(errors="replace")[-2000:])
        return "; ".join(p for p in parts if p) or "no output"
