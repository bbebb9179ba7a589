"""Rolling update under load for gunicorn: graceful's worker classes beside stock gunicorn.

    python bench/rollout_gunicorn.py [--lag 2] [--drain-delay 3] [--repeat 1] [--scenarios a,b,...]

The same run as bench/rollout.py (2 pods replaced behind HAProxy, mode tcp, no retries), for
gunicorn as PID 1 or under graceful-run, with the uvicorn worker (ASGI, examples/starlette_app.py)
and the threaded WSGI worker (Flask, examples/flask_app.py). WSGI pods serve no websockets, so
their load has no websocket clients; everything else is the same. Needs root, unshare, haproxy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

# Imported after the path fix above.
from bench.rollout import row, table
from tests.e2e.cluster import (
    APP,
    GUNICORN_THREAD,
    GUNICORN_UVICORN,
    STOCK_GUNICORN_THREAD,
    STOCK_GUNICORN_UVICORN,
    WSGI_APP,
    PodSpec,
    Scenario,
    gunicorn_spec,
    missing_requirements,
    run_rollout,
)
from tests.e2e.load import LoadConfig

ASGI_LOAD = LoadConfig()
WSGI_LOAD = LoadConfig(websocket=0)

# name: (description, pod template from (drain delay), load)
SCENARIOS: dict[str, tuple[str, Callable[[float], PodSpec], LoadConfig]] = {
    "stock-uvicorn-worker": (
        "gunicorn -k uvicorn.workers.UvicornWorker -w 2",
        lambda delay: gunicorn_spec(STOCK_GUNICORN_UVICORN, APP),
        ASGI_LOAD,
    ),
    "graceful-uvicorn-worker": (
        "gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
        lambda delay: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=delay),
        ASGI_LOAD,
    ),
    "graceful-run-uvicorn-worker": (
        "graceful-run + gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
        lambda delay: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=delay, supervised=True),
        ASGI_LOAD,
    ),
    "stock-gthread": (
        "gunicorn -k gthread -w 2 --threads 4 (Flask)",
        lambda delay: gunicorn_spec(STOCK_GUNICORN_THREAD, WSGI_APP),
        WSGI_LOAD,
    ),
    "graceful-thread-worker": (
        "gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4 (Flask)",
        lambda delay: gunicorn_spec(GUNICORN_THREAD, WSGI_APP, drain_delay=delay),
        WSGI_LOAD,
    ),
    "graceful-run-thread-worker": (
        "graceful-run + gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4 (Flask)",
        lambda delay: gunicorn_spec(GUNICORN_THREAD, WSGI_APP, drain_delay=delay, supervised=True),
        WSGI_LOAD,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lag", type=float, default=2.0, help="endpoint propagation lag, seconds")
    parser.add_argument("--drain-delay", type=float, default=3.0, help="graceful's drain delay")
    parser.add_argument("--grace", type=float, default=30.0, help="terminationGracePeriodSeconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--verbose", action="store_true", help="print each run's full summary")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("cannot run: " + "; ".join(missing), file=sys.stderr)
        return 2
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")

    print(
        f"gunicorn rollout of 2 pods under load: lag {args.lag:g} s, "
        f"drain delay {args.drain_delay:g} s, grace {args.grace:g} s"
    )
    rows: list[list[str]] = []
    began = time.monotonic()
    for name in names:
        description, factory, load = SCENARIOS[name]
        spec = factory(args.drain_delay)
        for run in range(args.repeat):
            scenario = Scenario(
                name=name, spec=spec, lag=args.lag, grace=args.grace, drain_delay=args.drain_delay, load=load
            )
            report = run_rollout(scenario)
            rows.append(row(report))
            label = f" (run {run + 1})" if args.repeat > 1 else ""
            print(
                f"  {name}{label}: {description}: {report.failures} failures in {report.seconds:.1f} s",
                flush=True,
            )
            if args.verbose:
                print(report.summary())
    print()
    print(table(rows))
    print(f"\n{len(rows)} runs in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
