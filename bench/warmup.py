"""A cold instance joins two warm ones under steady open-loop load: what each warm-up scheme costs.

    python bench/warmup.py [--rate 250] [--window 20] [--join-seconds 20] [--scenarios a,b,c,d] [--verbose]

Two warm pods of examples/warmup_app.py (cold request ~10x a warm one: CPU-bound cache fill) run
behind HAProxy (mode tcp, roundrobin, no retries; tests/e2e/cluster.py). An open-loop client sends
``GET /work?key=<random>`` at a fixed rate. A third, cold pod starts and is added to HAProxy when
its readiness passes (plus the endpoint lag). Figures are for the steady period before the new pod
started and for the join period (from its addition to +join-seconds), per scenario:

  a  no warm-up
  b  graceful slow start (GRACEFUL_WARMUP_WINDOW + GRACEFUL_MAX_CONCURRENCY) behind plain mode tcp
  c  graceful slow start + its agent-check responder (HAProxy agent-check on the new pod's server)
  d  HAProxy `slowstart <window>` on the new pod's server alone (no graceful warm-up)

Needs root, `unshare` and `haproxy`. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

# Imported after the path fix above (ruff does not flag imports that follow a statement in scripts).
import httpx

from tests.e2e.cluster import LOCALHOST, Cluster, Pod, PodSpec, cluster, free_port, missing_requirements

APP = "examples.warmup_app:app"
KEYS = 300  # the app's key space (WARMUP_APP_KEYS): a new process warms in a few hundred requests
CLIENT_TIMEOUT = 5.0
MAX_OUTSTANDING = 1000  # open loop, but bounded: beyond this a send is counted as `not_sent`
STEADY_SECONDS = 6.0
SETTLE_SECONDS = 1.0  # load before the steady period counts (connections, scheduler, caches)
MAX_CONCURRENCY = 4  # per process; the work is CPU-bound, so more at once only adds latency
QUEUE_TIMEOUT = 1.0
LAG = 0.5  # endpoint propagation: ready -> in HAProxy
WEIGHT = 100  # every server's weight: agent percentages and slowstart need room to scale down

OK = "ok"
SHED = "503"
STATUS = "other_status"
TIMEOUT = "timeout"
CONNECT = "connect_error"
RESET = "reset"
NOT_SENT = "not_sent"
FAILURE_KINDS = (SHED, STATUS, TIMEOUT, CONNECT, RESET, NOT_SENT)


# -- the open-loop client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    # time.monotonic() the request was due: latency counts from here, so a late send is not hidden
    # (no coordinated omission).
    scheduled: float
    latency: float
    outcome: str
    pod: str


class OpenLoop:
    """Sends a request every 1/rate seconds on its own event loop thread, whatever the answers do.

    One new TCP connection per request (``Connection: close``): an L4 balancer places connections,
    not requests, so this stands for many short-lived clients and lets HAProxy's weights act on
    every request. A few long keep-alive connections would stay pinned to the old pods, and the
    new pod would see almost nothing. A raw asyncio client instead of httpx: on 2 shared cores the
    client's own CPU would otherwise show up as latency.
    """

    def __init__(self, port: int, rate: float, *, max_seconds: float, seed: int = 1) -> None:
        self.port = port
        self.rate = rate
        self.max_seconds = max_seconds
        self.samples: list[Sample] = []
        self.lateness: list[tuple[float, float]] = []  # (due, seconds late) of every send
        self.started = 0.0
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="open-loop", daemon=True)
        self._outstanding = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop sending; wait (bounded by the client timeout) for the answers still due."""
        self._stop.set()
        self._thread.join(CLIENT_TIMEOUT + 5.0)
        if self.error is not None:
            raise RuntimeError(f"load client crashed: {self.error!r}")
        return sorted(self.samples, key=lambda sample: sample.scheduled)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop(), not lost with the thread
            self.error = exc

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()  # loop.time() is time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rate
        begin = loop.time()
        for number in range(int(self.max_seconds * self.rate) + 1):
            due = begin + number * interval
            if self._stop.is_set() or due - begin > self.max_seconds:
                break
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # How late the send is: a stalled client (CPU, GIL) would show up as everyone's latency.
            self.lateness.append((due, loop.time() - due))
            if self._outstanding >= MAX_OUTSTANDING:
                self.samples.append(Sample(due, 0.0, NOT_SENT, ""))
                continue
            task = asyncio.create_task(self._one(due, self._random.randrange(KEYS)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT + 2.0)
        for task in tasks:
            task.cancel()

    async def _one(self, due: float, key: int) -> None:
        self._outstanding += 1
        outcome, pod = RESET, ""
        try:
            data = await asyncio.wait_for(self._exchange(key), CLIENT_TIMEOUT)
            outcome, pod = _parse(data)
        except (asyncio.TimeoutError, TimeoutError):
            outcome = TIMEOUT
        except ConnectionRefusedError:
            outcome = CONNECT
        except OSError:
            outcome = RESET
        finally:
            self._outstanding -= 1
        self.samples.append(Sample(due, time.monotonic() - due, outcome, pod))

    async def _exchange(self, key: int) -> bytes:
        reader, writer = await asyncio.open_connection(LOCALHOST, self.port)
        try:
            writer.write(f"GET /work?key={key} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            return await reader.read()  # to EOF: the server closes after the response
        finally:
            writer.close()


def _parse(data: bytes) -> tuple[str, str]:
    """(outcome, pod) of a raw HTTP/1.1 response; no status line means the connection was cut."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return RESET, ""
    pod = next((line[6:].strip().decode() for line in lines[1:] if line.lower().startswith(b"x-pod:")), "")
    status = int(parts[1])
    if 200 <= status < 300:
        return OK, pod
    return (SHED if status == 503 else STATUS), pod


# -- scenarios ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    graceful_warmup: bool  # GRACEFUL_WARMUP_WINDOW + GRACEFUL_MAX_CONCURRENCY on the new pod
    agent: bool  # HAProxy agent-check on the new pod's server, answered by graceful
    haproxy_slowstart: bool  # HAProxy `slowstart <window>` on the new pod's server


SCENARIOS = {
    "a": Scenario("a", "no warm-up", False, False, False),
    "b": Scenario("b", "graceful slow start, L4", True, False, False),
    "c": Scenario("c", "graceful slow start + agent", True, True, False),
    "d": Scenario("d", "HAProxy slowstart alone", False, False, True),
}


@dataclass
class Period:
    requests: int = 0
    on_new: int = 0
    new_p99: float = 0.0  # over the requests the new pod answered
    new_max: float = 0.0
    old_p99: float = 0.0  # over the requests the old pods answered
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.outcomes[kind] for kind in FAILURE_KINDS)


@dataclass
class Result:
    scenario: Scenario
    steady: Period
    join: Period
    new_stats: dict[str, object]
    admission_samples: list[dict[str, float]]  # the new pod's /healthz admission, sampled in the join
    haproxy_weights: list[str]
    timeline: str
    # Cores busy with work that is not this bench's (other jobs sharing the machine), per period:
    # the figures of a period where this is high measure the neighbours as much as the scheme.
    steady_others: float
    join_others: float
    join_ours: float  # cores this bench (client, HAProxy, pods) kept busy in the join
    join_client_late: float  # the client's latest send in the join, seconds after it was due
    seconds: float
    errors: list[str]


def period(samples: Sequence[Sample], begin: float, end: float, new_pod: str) -> Period:
    """Requests due in [begin, end); latency percentiles over every request (a 503 or a timeout too)."""
    chosen = [sample for sample in samples if begin <= sample.scheduled < end and sample.outcome != NOT_SENT]
    result = Period(outcomes=Counter(sample.outcome for sample in samples if begin <= sample.scheduled < end))
    result.requests = sum(result.outcomes.values())
    result.on_new = sum(1 for sample in chosen if sample.pod == new_pod)
    latencies = sorted(sample.latency for sample in chosen)
    if latencies:
        result.p50 = statistics.median(latencies)
        result.p99 = p99(latencies)
        result.max = latencies[-1]
    on_new = sorted(sample.latency for sample in chosen if sample.pod == new_pod)
    result.new_p99 = p99(on_new)
    result.new_max = on_new[-1] if on_new else 0.0
    result.old_p99 = p99(sorted(sample.latency for sample in chosen if sample.pod and sample.pod != new_pod))
    return result


def p99(ordered: Sequence[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def timeline(samples: Sequence[Sample], begin: float, end: float, new_pod: str) -> str:
    """Per second: `new pod requests/max ms, old pods max ms[, failures no pod answered]` (--verbose)."""
    cells = []
    for second in range(int(end - begin) + 1):
        low, high = begin + second, min(end, begin + second + 1)
        chosen = [sample for sample in samples if low <= sample.scheduled < high]
        new = [sample.latency for sample in chosen if sample.pod == new_pod]
        old = [sample.latency for sample in chosen if sample.pod and sample.pod != new_pod]
        lost = sum(1 for sample in chosen if not sample.pod)  # timeouts, resets: unknown pod
        cell = f"{len(new)}/{max(new, default=0) * 1000:.0f},{max(old, default=0) * 1000:.0f}"
        cells.append(cell + (f",{lost}x" if lost else ""))
    return " ".join(cells)


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the machine's cores have been busy since boot (/proc/stat, all but idle/iowait)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14 and 15 of stat(5)


@dataclass(frozen=True)
class CpuMark:
    at: float
    busy: float  # the whole machine
    ours: float  # this bench: its own process, HAProxy, every pod


def cpu_mark(kube: Cluster) -> CpuMark:
    pids = [os.getpid()]
    if kube.balancer.process is not None:
        pids.append(kube.balancer.process.pid)
    for pod in kube.pods:
        pids.extend((pod.process.pid, pod.pid1))
    return CpuMark(time.monotonic(), machine_busy(), sum(process_cpu(pid) for pid in pids))


def others_cores(first: CpuMark, last: CpuMark) -> float:
    """Cores that work outside this bench kept busy between two marks (of the machine's 2 or more)."""
    seconds = last.at - first.at
    return max(0.0, (last.busy - first.busy) - (last.ours - first.ours)) / seconds if seconds > 0 else 0.0


def pod_spec(env: dict[str, str]) -> PodSpec:
    return PodSpec(
        # No access log: at hundreds of requests a second it costs CPU the 2 cores do not have.
        argv=[
            "python",
            "-m",
            "graceful.uvicorn",
            APP,
            "--host",
            LOCALHOST,
            "--port",
            "{port}",
            "--no-access-log",
        ],
        env={"GRACEFUL_DRAIN_DELAY": "0", "WARMUP_APP_KEYS": str(KEYS), **env},
    )


def prefill(pod: Pod) -> None:
    """Warm an old pod as a long-running one is: every key once, straight to its port."""
    with httpx.Client(base_url=f"http://{LOCALHOST}:{pod.port}", timeout=5.0, trust_env=False) as client:
        for key in range(KEYS):
            client.get(f"/work?key={key}").raise_for_status()


def get_json(client: httpx.Client, port: int, path: str) -> dict[str, object]:
    reply: dict[str, object] = client.get(f"http://{LOCALHOST}:{port}{path}").json()
    return reply


def haproxy_weight(kube: Cluster, slot: str) -> str:
    """`status weight` of one server from HAProxy's `show stat` (effective weight, scaled)."""
    lines = kube.balancer.command("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",") if lines else []
    for line in lines[1:]:
        values = line.split(",")
        if len(values) > 1 and values[0] == "be" and values[1] == slot:
            row = dict(zip(header, values, strict=False))
            return f"{row.get('status')} w={row.get('weight')}"
    return "?"


def run(scenario: Scenario, args: argparse.Namespace) -> Result:
    began = time.monotonic()
    window = args.window
    agent_port = free_port() if scenario.agent else None
    # The new pod always lands in slot s3: s1 and s2 are taken by the two old pods first.
    new_options = f"weight {WEIGHT}"
    if agent_port is not None:
        new_options += f" agent-check agent-port {agent_port} agent-inter 500ms"
    if scenario.haproxy_slowstart:
        new_options += f" slowstart {window:g}s"
    options = {"s1": f"weight {WEIGHT}", "s2": f"weight {WEIGHT}", "s3": new_options}
    old_env: dict[str, str] = {}
    new_env: dict[str, str] = {}
    if scenario.graceful_warmup:
        # Old pods are past their window (warm for a long time); the cap stays in force on them.
        old_env = {
            "GRACEFUL_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
            "GRACEFUL_QUEUE_TIMEOUT": f"{QUEUE_TIMEOUT:g}",
        }
        new_env = {**old_env, "GRACEFUL_WARMUP_WINDOW": f"{window:g}"}
    if agent_port is not None:
        new_env["GRACEFUL_AGENT_PORT"] = str(agent_port)
    samples: list[Sample] = []
    lateness: list[tuple[float, float]] = []
    admission: list[dict[str, float]] = []
    weights: list[str] = []
    new_stats: dict[str, object] = {}
    errors: list[str] = []
    probe_failures: Counter[str] = Counter()
    marks: list[CpuMark] = []  # steady begins, steady ends, join begins, join ends
    with (
        cluster(lag=LAG, probe_period=0.2, grace=5.0, slots=3, server_options=options) as kube,
        # One client for the whole run: a new httpx.Client costs milliseconds of CPU (SSL context),
        # taken from the load client's process.
        httpx.Client(timeout=1.0, trust_env=False) as probe,
    ):
        load: OpenLoop | None = None
        try:
            old = [kube.start_pod(f"{scenario.key}-old{number}", pod_spec(old_env)) for number in range(2)]
            for pod in old:
                kube.wait_added(pod)
            threads = [threading.Thread(target=prefill, args=(pod,)) for pod in old]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            total = SETTLE_SECONDS + STEADY_SECONDS + 10.0 + args.join_seconds
            load = OpenLoop(kube.balancer.port, args.rate, max_seconds=total)
            load.start()
            time.sleep(SETTLE_SECONDS)
            marks.append(cpu_mark(kube))
            time.sleep(STEADY_SECONDS)
            marks.append(cpu_mark(kube))
            new = kube.start_pod(f"{scenario.key}-new", pod_spec(new_env))
            kube.wait_added(new, timeout=10.0)
            marks.append(cpu_mark(kube))
            assert new.added_at is not None and new.slot is not None
            # Watch the new pod through the join: its admission state and its HAProxy weight.
            join_end = new.added_at + args.join_seconds
            for tick in range(int(args.join_seconds / 0.1) + 2):
                if time.monotonic() >= join_end:
                    break
                try:
                    health = get_json(probe, new.port, "/healthz")
                    state = health.get("admission")
                    if isinstance(state, dict):
                        admission.append({"t": time.monotonic() - new.added_at, **state})
                except (httpx.HTTPError, ValueError) as exc:
                    # A starved event loop answers late: a kubelet with timeoutSeconds 1 would fail it.
                    probe_failures[type(exc).__name__] += 1
                if tick % 5 == 0:
                    weights.append(
                        f"{time.monotonic() - new.added_at:4.1f}s {haproxy_weight(kube, new.slot)}"
                    )
                time.sleep(max(0.0, min(0.1, join_end - time.monotonic())))
            marks.append(cpu_mark(kube))
        finally:
            if load is not None:
                samples = load.stop()
                lateness = load.lateness
            for pod in kube.pods:
                if pod.name.endswith("-new") and pod.process.poll() is None:
                    try:
                        new_stats = get_json(probe, pod.port, "/stats")
                    except (httpx.HTTPError, ValueError) as exc:
                        errors.append(f"/stats of the new pod: {exc!r}")
            errors.extend(kube.errors)
            errors.extend(
                f"/healthz of the new pod (1 s timeout): {n} x {kind}" for kind, n in probe_failures.items()
            )
    new_pod = f"{scenario.key}-new"
    steady_begin = load.started + SETTLE_SECONDS if load is not None else 0.0
    steady = period(samples, steady_begin, new.started_at, new_pod)
    join = period(samples, new.added_at, join_end, new_pod)
    line = timeline(samples, steady_begin, join_end, new_pod)
    return Result(
        scenario=scenario,
        steady=steady,
        join=join,
        new_stats=new_stats,
        admission_samples=admission,
        haproxy_weights=weights,
        timeline=line,
        steady_others=others_cores(marks[0], marks[1]),
        join_others=others_cores(marks[2], marks[3]),
        join_client_late=max((late for due, late in lateness if new.added_at <= due < join_end), default=0.0),
        join_ours=(marks[3].ours - marks[2].ours) / max(1e-9, marks[3].at - marks[2].at),
        seconds=time.monotonic() - began,
        errors=errors,
    )


# -- the report --------------------------------------------------------------------------------------


TARGETS = {
    "a": "p99 >= 10x steady p99",
    "b": f"running <= cap; wait <= {QUEUE_TIMEOUT:g} s + service",
    "c": "0 failures; p99 <= (a) p99 / 5",
}


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def rows(result: Result) -> list[list[str]]:
    out = []
    for name, part in (("steady", result.steady), ("join", result.join)):
        failures = ", ".join(f"{kind}={part.outcomes[kind]}" for kind in FAILURE_KINDS if part.outcomes[kind])
        out.append(
            [
                f"({result.scenario.key}) {result.scenario.title}",
                name,
                str(part.requests),
                f"{part.on_new}" if name == "join" else "-",
                ms(part.p50),
                ms(part.p99),
                ms(part.max),
                str(part.outcomes[TIMEOUT]),
                f"{part.failures}" + (f" ({failures})" if failures else ""),
                f"{result.steady_others if name == 'steady' else result.join_others:.2f}",
                TARGETS.get(result.scenario.key, "") if name == "join" else "",
            ]
        )
    return out


def table(lines: list[list[str]]) -> str:
    header = [
        "scenario",
        "period",
        "requests",
        "on new",
        "p50 ms",
        "p99 ms",
        "max ms",
        "timeouts",
        "failures",
        "others' cores",
        "target (join)",
    ]
    widths = [max(len(line[column]) for line in [header, *lines]) for column in range(len(header))]

    def fmt(line: list[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))

    return "\n".join([fmt(header), "-+-".join("-" * width for width in widths), *map(fmt, lines)])


def verdicts(results: dict[str, Result], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []

    def verdict(ok: bool, target: str, seen: str) -> None:
        lines.append(f"{'ok    ' if ok else 'MISSED'}  {target:<58} {seen}")

    a, b, c = results.get("a"), results.get("b"), results.get("c")
    if a is not None:
        ratio = a.join.p99 / a.steady.p99 if a.steady.p99 else 0.0
        verdict(ratio >= 10, "(a) piles up: join p99 >= 10x steady p99", f"{ratio:.1f}x")
    if c is not None:
        verdict(c.join.failures == 0, "(c) 0 failures in the join", str(c.join.failures))
    if a is not None and c is not None:
        ratio = a.join.p99 / c.join.p99 if c.join.p99 else float("inf")
        verdict(ratio >= 5, "(c) join p99 at least 5x lower than (a)", f"{ratio:.1f}x lower")
    if b is not None:
        over = [sample for sample in b.admission_samples if sample["running"] > sample["cap"]]
        highest = max((int(sample["running"]) for sample in b.admission_samples), default=0)
        app_over = b.new_stats.get("over_cap", "?")
        verdict(
            not over and app_over == 0,
            "(b) new pod never ran more than its cap",
            f"{len(b.admission_samples)} /healthz samples, max running {highest}, "
            f"{len(over)} over cap; app saw {app_over} requests over the cap",
        )
        service = float(str(b.new_stats.get("max_service", "nan")))
        waited = max(
            float(str(b.new_stats.get(name, "nan"))) for name in ("max_admitted_wait", "max_shed_wait")
        )
        bound = QUEUE_TIMEOUT + service
        verdict(
            waited <= bound,
            "(b) no wait > queue_timeout + service time",
            f"longest wait {waited * 1000:.0f} ms <= {QUEUE_TIMEOUT * 1000:.0f} + {service * 1000:.0f} ms",
        )
        # The same bound as the client saw it: this also counts time before the middleware (socket
        # backlog, event loop, HAProxy, CPU contention), where no cap can act.
        verdict(
            b.join.new_max <= bound,
            "(b) ... and as the client saw it, on the new pod",
            f"longest request {b.join.new_max * 1000:.0f} ms <= {bound * 1000:.0f} ms",
        )
    return lines


def detail(result: Result) -> list[str]:
    """What --verbose prints under a scenario: where the latency came from."""
    join = result.join
    lines = [
        f"join p99 on the new pod {ms(join.new_p99)} ms, on the old pods {ms(join.old_p99)} ms; "
        f"steady p99 {ms(result.steady.p99)} ms; in the join this bench kept {result.join_ours:.2f} cores "
        f"busy, other work {result.join_others:.2f}; the client sent at most "
        f"{ms(result.join_client_late)} ms late",
        f"new pod /stats: {json.dumps(result.new_stats)}",
        "per second from the steady period on (new pod requests/max ms, old pods max ms, "
        f"unanswered): {result.timeline}",
    ]
    samples = result.admission_samples
    if samples:
        picks = samples[:: max(1, len(samples) // 12)]
        lines.append(
            "new pod /healthz: "
            + "; ".join(
                f"{s['t']:.1f}s cap {s['cap']:g} run {s['running']:g} q {s['queued']:g} shed {s['shed']:g}"
                for s in picks
            )
        )
    weights = result.haproxy_weights
    if weights:
        lines.append("haproxy s3: " + "; ".join(weights[:: max(1, len(weights) // 10)]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second (open loop)")
    parser.add_argument("--window", type=float, default=20.0, help="warm-up window (graceful and HAProxy), s")
    parser.add_argument("--join-seconds", type=float, default=20.0, help="length of the join period, s")
    parser.add_argument(
        "--scenarios", default="a,b,c,d", help=f"comma-separated, from: {','.join(SCENARIOS)}"
    )
    parser.add_argument("--verbose", action="store_true", help="per-scenario detail: new pod stats, samples")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("cannot run: " + "; ".join(missing), file=sys.stderr)
        return 2
    keys = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in keys if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    print(
        f"a cold pod joins 2 warm ones behind HAProxy mode tcp: {args.rate:g} req/s open loop, "
        f"window {args.window:g} s, join period {args.join_seconds:g} s, max_concurrency {MAX_CONCURRENCY}, "
        f"queue_timeout {QUEUE_TIMEOUT:g} s, client timeout {CLIENT_TIMEOUT:g} s"
    )
    began = time.monotonic()
    results: dict[str, Result] = {}
    for key in keys:
        result = run(SCENARIOS[key], args)
        results[key] = result
        print(
            f"  ({key}) {result.scenario.title}: join p99 {ms(result.join.p99)} ms, "
            f"{result.join.failures} failures ({result.seconds:.0f} s)",
            flush=True,
        )
        if args.verbose:
            print("\n".join(f"      {line}" for line in detail(result)))
        for error in result.errors:
            print(f"      harness error: {error}")
    print()
    print(table([line for result in results.values() for line in rows(result)]))
    print()
    for line in verdicts(results, args):
        print(line)
    print(f"\n{len(results)} scenarios in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
