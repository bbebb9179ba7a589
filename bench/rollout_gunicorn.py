"""Rolling update under load for gunicorn: graceful's worker classes beside stock gunicorn.

    python bench/rollout_gunicorn.py [--lag 2] [--drain-delay 3] [--repeat 1] [--scenarios a,b,...]
                                     [--balancer haproxy,nginx,envoy]

The same run as bench/rollout.py (2 pods replaced behind each balancer, one table per balancer),
for gunicorn as PID 1 or under graceful-run, with the uvicorn worker (ASGI,
examples/starlette_app.py) and the threaded WSGI worker (Flask, examples/flask_app.py). WSGI pods
serve no websockets, so their load has no websocket clients; everything else is the same. Needs
root, unshare and the balancer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

# Imported after the path fix above.
from bench.rollout import add_balancer_option, chosen_balancers, run_tables
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
    add_balancer_option(parser)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    balancers = chosen_balancers(parser, args.balancer)

    def scenario(name: str, balancer: str) -> tuple[str, Scenario]:
        description, factory, load = SCENARIOS[name]
        return description, Scenario(
            name=name,
            spec=factory(args.drain_delay),
            lag=args.lag,
            grace=args.grace,
            drain_delay=args.drain_delay,
            load=load,
            balancer=balancer,
        )

    print(
        f"gunicorn rollout of 2 pods under load: lag {args.lag:g} s, "
        f"drain delay {args.drain_delay:g} s, grace {args.grace:g} s"
    )
    run_tables(balancers, names, scenario, repeat=args.repeat, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
