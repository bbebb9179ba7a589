"""Rolling update under load, graceful against the baselines: how many requests each one loses.

    python bench/rollout.py [--lag 2] [--drain-delay 3] [--repeat 1] [--scenarios graceful,uvicorn,...]
                            [--balancer haproxy,nginx,envoy] [--containers]

``--containers`` adds, in the same run, the example image (Dockerfile.example, built on an
mmdebstrap base from a host wheelhouse) in a real Docker: graceful-run as ENTRYPOINT beside CMD
uvicorn, a shell-form CMD and ``docker run --init`` (tests/e2e/docker.py; needs docker.io and
mmdebstrap, starts dockerd when it is not running).

Every scenario replaces 2 pods behind each balancer (default: every one this machine has) with the
given propagation lag while keep-alive, new-connection, slow, streamed, websocket and idle clients
run (see docs/testing.md), and prints one table per balancer. Needs root, `unshare` and the balancer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

# Imported after the path fix above (ruff does not flag imports that follow a statement in scripts).
from tests.e2e.cluster import (
    APP,
    BALANCERS,
    GUNICORN_UVICORN,
    STOCK_GUNICORN_UVICORN,
    PodSpec,
    RolloutReport,
    Scenario,
    graceful_spec,
    gunicorn_spec,
    missing_requirements,
    run_rollout,
    uvicorn_spec,
)
from tests.e2e.load import FAILURE_KINDS

ROOT = Path(__file__).resolve().parents[1]

SpecFactory = Callable[[argparse.Namespace], PodSpec]

SCENARIOS: dict[str, tuple[str, SpecFactory]] = {
    "graceful": ("python -m graceful.uvicorn", lambda args: graceful_spec(args.drain_delay)),
    "graceful-prestop-http": (
        "graceful.uvicorn + httpGet preStop /shutdown?wait=1",
        lambda args: graceful_spec(
            args.drain_delay, pre_stop=("http", "/shutdown?wait=1"), GRACEFUL_SHUTDOWN_ALLOW_GET="1"
        ),
    ),
    "uvicorn": ("plain uvicorn (stock SIGTERM)", lambda args: uvicorn_spec(chain=False)),
    "uvicorn-prestop-sleep": (
        "plain uvicorn + preStop exec sleep",
        lambda args: uvicorn_spec(chain=False, pre_stop=("exec", args.drain_delay)),
    ),
    "uvicorn-chained": (
        "plain uvicorn, middleware chains SIGTERM",
        lambda args: uvicorn_spec(chain=True, GRACEFUL_DRAIN_DELAY=f"{args.drain_delay:g}"),
    ),
}
# gunicorn with ASGI workers (issue 4); the WSGI (gthread) ones, whose pods serve no websockets,
# are in bench/rollout_gunicorn.py, which runs them with a load that has no websocket clients.
SCENARIOS.update(
    {
        "gunicorn-uvicorn-stock": (
            "stock gunicorn -k uvicorn.workers.UvicornWorker -w 2",
            lambda args: gunicorn_spec(STOCK_GUNICORN_UVICORN, APP),
        ),
        "gunicorn-uvicorn": (
            "gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
            lambda args: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=args.drain_delay),
        ),
        "gunicorn-uvicorn-supervised": (
            "graceful-run + gunicorn -k graceful.gunicorn.UvicornWorker -w 2",
            lambda args: gunicorn_spec(GUNICORN_UVICORN, APP, drain_delay=args.drain_delay, supervised=True),
        ),
    }
)
# graceful-run as PID 1 (issue 3), and the shell-wrapped baseline of ROLLOUT.md: `sh -c` as PID 1
# without exec never passes SIGTERM on, so the pod waits for SIGKILL at the grace period.
_UVICORN = f"{sys.executable} -m uvicorn {APP} --host 127.0.0.1 --port {{port}}"


def graceful_run_spec(args: argparse.Namespace, *command: str) -> PodSpec:
    """``graceful-run --drain-delay D -- COMMAND`` as the pod's PID 1."""
    graceful_run = [str(ROOT / "bin" / "graceful-run"), "--drain-delay", f"{args.drain_delay:g}", "--"]
    return PodSpec(argv=[*graceful_run, *command], env={"GRACEFUL_PYTHON": sys.executable})


SCENARIOS.update(
    {
        "graceful-run": (
            "graceful-run -- uvicorn (plain)",
            lambda args: graceful_run_spec(args, *_UVICORN.split()),
        ),
        "graceful-run-sh-c": (
            "graceful-run -- sh -c 'echo prepare; uvicorn' (no exec)",
            lambda args: graceful_run_spec(args, "sh", "-c", f"echo prepare; {_UVICORN}"),
        ),
        "shell-wrapped": (
            "sh -c 'echo prepare; uvicorn' as PID 1 (stock)",
            lambda args: PodSpec(
                argv=["sh", "-c", f"echo prepare; {_UVICORN}"], env={"GRACEFUL_CHAIN_SERVER_SIGNALS": "0"}
            ),
        ),
    }
)
DEFAULT = (
    "graceful,graceful-run,graceful-run-sh-c,uvicorn,uvicorn-prestop-sleep,uvicorn-chained,shell-wrapped"
)


def row(report: RolloutReport) -> list[str]:
    counts = report.failure_counts()
    failures = ", ".join(f"{kind}={counts[kind]}" for kind in FAILURE_KINDS if counts[kind]) or "0"
    exits = " ".join("-" if pod.term_to_exit is None else f"{pod.term_to_exit:.2f}" for pod in report.pods)
    killed = "yes" if any(pod.sigkilled for pod in report.pods) else "no"
    return [report.scenario, str(report.requests), f"{report.failures} ({failures})", exits, killed]


# What each balancer does with a pod's losses (docs/testing.md, "Other balancers").
BALANCER_NOTES = {
    "haproxy": "HAProxy mode tcp, retries 0: kube-proxy",
    "nginx": "nginx reloaded per endpoint change, proxy_next_upstream off, max_fails=0, "
    "upstream keepalive 32, client keep-alive off",
    "envoy": "Envoy with EDS from a file, no retry_policy: a sidecar",
}


def add_balancer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--balancer",
        default="",
        help=f"comma-separated, from: {', '.join(BALANCERS)} (default: every one this machine has)",
    )


def chosen_balancers(parser: argparse.ArgumentParser, value: str) -> list[str]:
    """The balancers to run behind: the named ones (each must be there) or every one available."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BALANCERS]
    if unknown:
        parser.error(f"unknown balancers {unknown}; choose from {list(BALANCERS)}")
    if names:
        for name in names:
            missing = missing_requirements(name)
            if missing:
                parser.error(f"cannot run behind {name}: {'; '.join(missing)}")
        return names
    available = [name for name in BALANCERS if not missing_requirements(name)]
    for name in BALANCERS:
        if name not in available:
            print(f"(not behind {name}: {'; '.join(missing_requirements(name))})", file=sys.stderr)
    if not available:
        parser.error("no balancer can run here: " + "; ".join(missing_requirements()))
    return available


def run_tables(
    balancers: Sequence[str],
    names: Sequence[str],
    scenario: Callable[[str, str], tuple[str, Scenario]],
    *,
    repeat: int,
    verbose: bool,
) -> None:
    """Run every scenario behind every balancer; print one table per balancer, baselines beside
    graceful. ``scenario(name, balancer)`` gives the description and the Scenario to run."""
    began = time.monotonic()
    tables: list[str] = []
    runs = 0
    for balancer in balancers:
        rows: list[list[str]] = []
        for name in names:
            description, to_run = scenario(name, balancer)
            for run in range(repeat):
                runs += 1
                label = f" (run {run + 1})" if repeat > 1 else ""
                try:
                    report = run_rollout(to_run)
                except RuntimeError as exc:  # a pod that never got ready, say: the other runs go on
                    reason = str(exc).splitlines()[0]
                    rows.append([name, "-", f"harness error: {reason[:60]}", "-", "-"])
                    print(f"  {balancer}: {name}{label}: harness error: {exc}", flush=True)
                    continue
                rows.append(row(report))
                print(
                    f"  {balancer}: {name}{label}: {description}: "
                    f"{report.failures} failures in {report.seconds:.1f} s",
                    flush=True,
                )
                if verbose:
                    print(report.summary())
        tables.append(f"behind {balancer} ({BALANCER_NOTES[balancer]})\n{table(rows)}")
    print()
    print("\n\n".join(tables))
    print(f"\n{runs} runs in {time.monotonic() - began:.0f} s")


def table(rows: list[list[str]]) -> str:
    header = ["scenario", "requests", "failures (by kind)", "SIGTERM->exit s per pod", "SIGKILL"]
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def fmt(line: list[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))

    return "\n".join([fmt(header), "-+-".join("-" * width for width in widths), *map(fmt, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lag", type=float, default=2.0, help="endpoint propagation lag, seconds")
    parser.add_argument(
        "--drain-delay", type=float, default=3.0, help="graceful's drain delay (and preStop sleep)"
    )
    parser.add_argument("--grace", type=float, default=30.0, help="terminationGracePeriodSeconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario")
    parser.add_argument("--scenarios", default=DEFAULT, help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    parser.add_argument("--verbose", action="store_true", help="print each run's full summary")
    parser.add_argument("--containers", action="store_true", help="also the container scenarios (Docker)")
    add_balancer_option(parser)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    balancers = chosen_balancers(parser, args.balancer)

    def scenario(name: str, balancer: str) -> tuple[str, Scenario]:
        description, factory = SCENARIOS[name]
        return description, Scenario(
            name=name,
            spec=factory(args),
            lag=args.lag,
            grace=args.grace,
            drain_delay=args.drain_delay,
            balancer=balancer,
        )

    print(
        f"rollout of 2 pods under load behind {', '.join(balancers)}: lag {args.lag:g} s, "
        f"drain delay {args.drain_delay:g} s, grace {args.grace:g} s"
    )
    run_tables(balancers, names, scenario, repeat=args.repeat, verbose=args.verbose)
    if args.containers:
        run_containers(args.drain_delay, verbose=args.verbose)
    return 0


def run_containers(drain_delay: float, *, verbose: bool) -> None:
    """The example image's containers replaced behind HAProxy, as shipped and as the baselines."""
    import tempfile

    from tests.e2e.docker import (
        base_image,
        build_example,
        container_rollout,
        container_scenarios,
        dockerd,
        missing,
    )

    lacking = missing()
    if lacking:
        print(f"containers: skipped: {'; '.join(lacking)}")
        return
    with tempfile.TemporaryDirectory(prefix="graceful-bench-") as work, dockerd(Path(work)):
        image = build_example(base_image())
        rows = [["container", "requests", "failed", "exit codes", "docker stop (s)"]]
        for name, (description, args, grace) in container_scenarios(image, drain_delay).items():
            outcome = container_rollout(Path(work) / name.replace(" ", "-"), args, grace=grace)
            if verbose:
                print(outcome.summary)
            stops = " / ".join(f"{seconds:.2f}" for seconds in outcome.stop_seconds)
            codes = " / ".join(str(code) for code in outcome.exit_codes)
            rows.append([description, str(outcome.requests), str(outcome.failed), codes, stops])
    print("containers (docker run --network host, docker stop -t GRACE; 137 = SIGKILLed):")
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
