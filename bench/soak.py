"""Soak: repeat the rollout until a rare loss would show, per server shape; print every failure kind.

    python bench/soak.py [--requests 1000000] [--max-minutes 30] [--shapes uvicorn,gunicorn-uvicorn,...]
                         [--balancer haproxy] [--wrk 8] [--lag 2] [--drain-delay 3] [--samples 10]

One "rollout" is the run of docs/testing.md (2 pods replaced behind the balancer with propagation
lag, every client kind: keep-alive, new connection, slow, streamed, websocket, idle keep-alive)
plus ``--wrk`` wrk connections hammering /fast with keep-alive. Rollouts of the shapes take turns
until every shape has passed ``--requests`` requests or ``--max-minutes`` is over. The totals per
shape: rollouts, requests, failures by the harness's kinds and by wrk's own (connect, read, write,
timeout, non2xx), SIGKILLs, harness errors, and failure samples beside the rollout's timeline.

Exit status: 0 every shape reached its target with 0 failures; 1 some request failed (or a pod
was SIGKILLed, or the harness erred); 3 no failure, but the time bound came first. Needs root,
unshare, haproxy and wrk. CPU-heavy: it keeps 2 cores busy for as long as it runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

# Imported after the path fix above.
from tests.e2e.cluster import (
    APP,
    BALANCERS,
    GUNICORN_THREAD,
    GUNICORN_UVICORN,
    WSGI_APP,
    PodSpec,
    RolloutReport,
    Scenario,
    graceful_spec,
    gunicorn_spec,
    missing_requirements,
    run_rollout,
)
from tests.e2e.load import FAILURE_KINDS, LoadConfig
from tests.e2e.wrk import WRK_KINDS

# name: (description, pod template from the drain delay, serves websockets)
SHAPES: dict[str, tuple[str, Callable[[float], PodSpec], bool]] = {
    "uvicorn": ("python -m graceful.uvicorn", lambda delay: graceful_spec(delay), True),
    "gunicorn-uvicorn": (
        "gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
        lambda delay: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=delay),
        True,
    ),
    "gunicorn-thread": (
        "gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4 (Flask)",
        lambda delay: gunicorn_spec(GUNICORN_THREAD, WSGI_APP, drain_delay=delay),
        False,
    ),
    "graceful-run-gunicorn-uvicorn": (
        "graceful-run + gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
        lambda delay: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=delay, supervised=True),
        True,
    ),
    "graceful-run-gunicorn-thread": (
        "graceful-run + gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4 (Flask)",
        lambda delay: gunicorn_spec(GUNICORN_THREAD, WSGI_APP, drain_delay=delay, supervised=True),
        False,
    ),
}
DEFAULT_SHAPES = "uvicorn,gunicorn-uvicorn,gunicorn-thread"


@dataclass
class Totals:
    """What the rollouts of one shape added up to."""

    rollouts: int = 0
    requests: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # the harness's kinds
    wrk_requests: int = 0
    wrk_errors: Counter[str] = field(default_factory=Counter)  # wrk's kinds
    sigkills: int = 0
    harness_errors: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    # Rollouts in which a removal reached the balancer only after the pod's listener closed (the
    # harness starved of CPU: its lag overran the drain delay). What failed there is the
    # machine's, not the server's: counted apart, and not in the totals above.
    overruns: int = 0
    overrun_requests: int = 0
    overrun_failures: Counter[str] = field(default_factory=Counter)
    aborted: list[str] = field(default_factory=list)  # rollouts the harness could not set up

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def clean(self) -> bool:
        return self.failed == 0 and self.sigkills == 0 and not self.harness_errors

    def add(self, report: RolloutReport, drain_delay: float, max_samples: int) -> None:
        late = [
            pod.removal_seconds
            for pod in report.pods
            if pod.removal_seconds is not None and pod.removal_seconds >= drain_delay
        ]
        if late:
            self.overruns += 1
            self.overrun_requests += report.requests
            self.overrun_failures.update({kind: n for kind, n in report.failure_counts().items() if n})
            if report.failures and len(self.samples) < max_samples:
                self.samples.append(
                    f"overrun: removal {max(late):.2f} s after deletion (drain delay {drain_delay:g} s); "
                    + "; ".join(report.load.samples[:3])
                )
            return
        self.rollouts += 1
        self.requests += report.requests
        self.seconds += report.seconds
        self.failures.update({kind: count for kind, count in report.failure_counts().items() if count})
        wrk = report.load.wrk
        if wrk is not None:
            self.wrk_requests += wrk.requests
            self.wrk_errors.update({kind: count for kind, count in wrk.errors.items() if count})
        self.sigkills += sum(pod.sigkilled for pod in report.pods)
        self.harness_errors.extend(f"rollout {self.rollouts}: {error}" for error in report.errors)
        if report.failures and len(self.samples) < max_samples:
            # The failure beside what the pods and the balancer did at that moment.
            self.samples.extend(f"rollout {self.rollouts}: {sample}" for sample in report.load.samples)
            self.samples.extend(f"rollout {self.rollouts}:   {line}" for line in report.timeline)

    def report(self, name: str, description: str) -> str:
        failures = ", ".join(f"{kind}={self.failures[kind]}" for kind in FAILURE_KINDS)
        wrk = ", ".join(f"{kind}={self.wrk_errors[kind]}" for kind in WRK_KINDS)
        rate = self.requests / self.seconds if self.seconds else 0.0
        lines = [
            f"{name}: {description}",
            f"  rollouts {self.rollouts}, requests {self.requests:,} in {self.seconds:.0f} s "
            f"({rate:,.0f}/s), failed {self.failed}",
            f"  failures by kind: {failures}",
            f"  wrk: {self.wrk_requests:,} responses; errors {wrk}",
            f"  pods SIGKILLed {self.sigkills}, harness errors {len(self.harness_errors)}",
            f"  aborted by the harness (no pod ready in time): {len(self.aborted)}",
            f"  not counted: {self.overruns} rollouts whose endpoint removal came after the listener "
            f"closed ({self.overrun_requests:,} requests, failures "
            f"{', '.join(f'{k}={v}' for k, v in sorted(self.overrun_failures.items())) or '0'})",
        ]
        lines.extend(f"  harness error: {error}" for error in self.harness_errors[:10])
        lines.extend(f"  sample: {sample}" for sample in self.samples)
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1_000_000, help="target per shape")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="time bound for the whole soak")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--balancer", default="haproxy", help=f"one of: {', '.join(BALANCERS)}")
    parser.add_argument("--wrk", type=int, default=8, help="wrk connections (0: no wrk)")
    parser.add_argument("--lag", type=float, default=2.0, help="endpoint propagation lag, seconds")
    parser.add_argument("--drain-delay", type=float, default=3.0, help="graceful's drain delay")
    parser.add_argument("--grace", type=float, default=30.0, help="terminationGracePeriodSeconds")
    parser.add_argument("--samples", type=int, default=10, help="failure samples kept per shape")
    parser.add_argument("--verbose", action="store_true", help="print each rollout's summary")
    args = parser.parse_args(argv)
    args.shape_names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in args.shape_names if name not in SHAPES]
    if unknown or not args.shape_names:
        parser.error(f"--shapes {args.shapes!r}: unknown {unknown}; allowed: {', '.join(SHAPES)}")
    if args.balancer not in BALANCERS:
        parser.error(f"--balancer {args.balancer!r} is not known; allowed: {', '.join(BALANCERS)}")
    for name, low in (("requests", 1), ("wrk", 0), ("samples", 0)):
        if getattr(args, name) < low:
            parser.error(f"--{name} {getattr(args, name)} is out of range; allowed: {low} or more")
    if not 0 < args.max_minutes <= 24 * 60:
        parser.error(f"--max-minutes {args.max_minutes:g} is out of range; allowed: above 0, at most 1440")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if args.wrk and shutil.which("wrk") is None:
        missing.append("`wrk` not on PATH")
    if missing:
        print("cannot run: " + "; ".join(missing), file=sys.stderr)
        return 2
    totals = {name: Totals() for name in args.shape_names}
    deadline = time.monotonic() + args.max_minutes * 60
    print(
        f"soak: {', '.join(args.shape_names)} behind {args.balancer}, until {args.requests:,} requests per "
        f"shape or {args.max_minutes:g} min; lag {args.lag:g} s, drain delay {args.drain_delay:g} s, "
        f"wrk {args.wrk} connections",
        flush=True,
    )
    began = time.monotonic()
    # Shapes take turns, one rollout each, so a time bound leaves every shape with figures.
    while time.monotonic() < deadline:
        pending = [name for name in args.shape_names if totals[name].requests < args.requests]
        if not pending:
            break
        for name in pending:
            if time.monotonic() >= deadline:
                break
            _description, factory, websockets = SHAPES[name]
            scenario = Scenario(
                name=name,
                spec=factory(args.drain_delay),
                lag=args.lag,
                grace=args.grace,
                drain_delay=args.drain_delay,
                load=LoadConfig(wrk=args.wrk, websocket=2 if websockets else 0),
                balancer=args.balancer,
            )
            shape = totals[name]
            try:
                report = run_rollout(scenario)
            except RuntimeError as exc:  # the harness could not set the rollout up (a starved machine)
                shape.aborted.append(f"{exc}".splitlines()[0])
                print(f"  {name}: rollout aborted by the harness: {shape.aborted[-1]}", flush=True)
                continue
            overruns = shape.overruns
            shape.add(report, args.drain_delay, args.samples)
            note = " (removal after the listener closed: not counted)" if shape.overruns > overruns else ""
            print(
                f"  [{(time.monotonic() - began) / 60:5.1f} min] {name} rollout {shape.rollouts}: "
                f"{report.requests:,} requests, failures {report.load.failures_text()}{note}; "
                f"shape total {shape.requests:,}, failed {shape.failed}",
                flush=True,
            )
            if args.verbose or report.failures:
                print(report.summary(), flush=True)
    print(f"\nsoak totals after {(time.monotonic() - began) / 60:.1f} min:")
    for name in args.shape_names:
        print(totals[name].report(name, SHAPES[name][0]))
    if not all(shape.clean for shape in totals.values()):
        print("\nRESULT: FAILED (see failures above)")
        return 1
    if any(shape.requests < args.requests for shape in totals.values()):
        print(f"\nRESULT: 0 failed, but the time bound came before {args.requests:,} requests per shape")
        return 3
    print(f"\nRESULT: every shape passed {args.requests:,} requests with 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
