"""graceful-run beside tini and dumb-init: start-up overhead, resident memory, forwarding latency.

    python bench/supervisor.py [--runs 40] [--signals 200]

Targets (issue 3): <= 50 ms added start-up, <= 12 MB RSS, p99 forwarding <= 2 ms. Every figure is
measured in the same run as the ones it is compared with. graceful-run is measured three ways:
``python -m graceful.supervisor`` (the site module on, like the console script), ``bin/graceful-run``
(``python -S``: no site-packages .pth processing), and the same with ``-X frozen_modules=on``.
"""

from __future__ import annotations

import os
import py_compile
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHILD = [PY, str(ROOT / "tests" / "supervisor_child.py")]
ENV = {**os.environ, "GRACEFUL_PYTHON": PY, "GRACEFUL_DRAIN_DELAY": "0"}
ENV.pop("GRACEFUL_STATE", None)

WRAPPERS: dict[str, list[str]] = {
    "direct": [],
    "tini -s": ["tini", "-s", "--"],
    "dumb-init": ["dumb-init"],
    "graceful-run (python -m)": [PY, "-m", "graceful.supervisor"],
    "graceful-run (bin, -S)": [str(ROOT / "bin" / "graceful-run")],
    # What PID 1 in a container does: no subreaper prctl, hence no ctypes import.
    "graceful-run (bin, -S, no subreaper)": [str(ROOT / "bin" / "graceful-run"), "--no-subreaper"],
    "graceful-run (-S -X frozen)": [
        PY,
        "-S",
        "-X",
        "frozen_modules=on",
        "-c",
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from graceful.supervisor import main; sys.exit(main(sys.argv[1:]))",
    ],
}


def available() -> dict[str, list[str]]:
    return {name: argv for name, argv in WRAPPERS.items() if not argv or shutil.which(argv[0])}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def startup(wrapper: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*wrapper, "true"], env=ENV, check=True, cwd=ROOT)
        times.append((time.perf_counter() - started) * 1000)
    return times


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a supervisor as a container runtime does: SIGTERM, then SIGKILL only if it hangs.

    SIGKILL first would orphan its child, which runs in a session of its own and would outlive us.
    """
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_kib(wrapper: list[str]) -> int:
    """VmRSS of the wrapper process while it supervises ``sleep``."""
    if not wrapper:
        return 0
    process = subprocess.Popen([*wrapper, "sleep", "30"], env=ENV, cwd=ROOT)
    try:
        pid = process.pid
        if wrapper[0] == str(ROOT / "bin" / "graceful-run"):
            pass  # the shell script execs python: same pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children.read_text().split()
            if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.01)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1
    finally:
        stop(process)


def forwarding(wrapper: list[str], count: int, tmp: Path) -> list[float]:
    """Milliseconds from kill(supervisor, SIGUSR1) to the child's handler stamping CLOCK_MONOTONIC.

    The child writes its stamp to a FIFO and we block on it: no busy polling that would steal one
    of the machine's cores from the processes being measured.
    """
    fifo = tmp / "stamps"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    out = tmp / "out"
    with out.open("wb") as sink:
        process = subprocess.Popen([*wrapper, *CHILD, "--times", str(fifo)], env=ENV, cwd=ROOT, stdout=sink)
    latencies = []
    try:
        deadline = time.monotonic() + 10
        while "ready" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.set_blocking(reader, True)
        for _ in range(count):
            sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            os.kill(process.pid, signal.SIGUSR1)
            ready, _, _ = select.select([reader], [], [], 2.0)
            if not ready:
                raise RuntimeError(f"a signal was not delivered through {wrapper}")
            stamp = os.read(reader, 64).split()[0]
            latencies.append((int(stamp) - sent) / 1e6)
            time.sleep(0.002)  # standard signals coalesce: never two in flight
    finally:
        stop(process)
        os.close(reader)
    return latencies


def compile_supervisor() -> None:
    """Write .pyc files as ``pip install`` does (this environment sets PYTHONDONTWRITEBYTECODE)."""
    for name in (
        "__init__",
        "_board",
        "_board_file",
        "_phase",
        "_process",
        "_signals",
        "_supervisor_cli",
        "supervisor",
    ):
        py_compile.compile(str(ROOT / "graceful" / f"{name}.py"), doraise=True)


def main(argv: list[str]) -> None:
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 40
    signals = int(argv[argv.index("--signals") + 1]) if "--signals" in argv else 200
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"graceful-bench-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    wrappers = available()
    compile_supervisor()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {runs} runs, {signals} signals")
    print(
        "\nstart-up: time to run `true` (ms)          median    p90   added (median)  target <= 50 ms added"
    )
    base = statistics.median(startup([], runs))
    for name, wrapper in wrappers.items():
        times = startup(wrapper, runs)
        added = statistics.median(times) - base
        verdict = (
            "" if name in ("direct", "tini -s", "dumb-init") else ("  ok" if added <= 50 else "  MISSED")
        )
        print(f"  {name:38s} {statistics.median(times):7.1f} {pct(times, 0.9):7.1f} {added:+9.1f}{verdict}")
    print("\nresident memory while supervising `sleep` (VmRSS)          target <= 12 MB")
    rss = {name: rss_kib(wrapper) for name, wrapper in wrappers.items() if wrapper}
    for name, kib in rss.items():
        verdict = "" if name in ("tini -s", "dumb-init") else ("  ok" if kib <= 12 * 1024 else "  MISSED")
        ratio = f"  x{kib / rss['tini -s']:.0f} tini" if "tini -s" in rss and rss["tini -s"] > 0 else ""
        print(f"  {name:38s} {kib / 1024:6.1f} MB{ratio}{verdict}")
    print("\nforwarding latency: kill(SIGUSR1) -> child handler (ms)   p50     p99   target p99 <= 2 ms")
    for name, wrapper in wrappers.items():
        try:
            values = forwarding(wrapper, signals, tmp)
        except RuntimeError as exc:
            print(f"  {name:38s} failed: {exc}")
            continue
        verdict = (
            ""
            if name in ("direct", "tini -s", "dumb-init")
            else ("  ok" if pct(values, 0.99) <= 2 else "  MISSED")
        )
        print(f"  {name:38s} {pct(values, 0.5):6.3f}  {pct(values, 0.99):6.3f}{verdict}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
