"""The ``graceful`` command: its subcommands ``graceful doctor`` and ``graceful verify``."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence


def _doctor(args: argparse.Namespace) -> int:
    from graceful.doctor import RULES, examine
    from graceful.doctor import _output as output

    usage: argparse.ArgumentParser = args.parser
    ignore = {code.strip().upper() for item in args.ignore for code in item.split(",") if code.strip()}
    unknown = sorted(ignore - set(RULES))
    if unknown:
        usage.error(f"--ignore {', '.join(unknown)}: no such rule; known: {min(RULES)}-{max(RULES)}")
    if args.rules:
        for rule in RULES.values():
            print(f"{rule.code} {rule.severity:<7} {rule.name}: {rule.summary}")
        return 0
    if not args.paths:
        usage.error("give at least one PATH (or - for stdin)")
    # The parsers are the doctor extra, imported only when a file needs them: say so before reading.
    missing = [name for name in ("yaml", "dockerfile_parse") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"graceful doctor: needs {', '.join(missing)}: pip install 'graceful-rollout[doctor]'",
            file=sys.stderr,
        )
        return 2
    report = examine(args.paths, ignore=ignore)
    if args.format == "json":
        sys.stdout.write(output.as_json(report.findings))
    elif args.format == "sarif":
        from importlib.metadata import PackageNotFoundError, version

        try:
            tool_version = version("graceful-rollout")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            tool_version = "0"
        sys.stdout.write(output.sarif(report.findings, tool_version))
    else:
        sys.stdout.write(output.text(report.findings))
    for error in report.errors:
        print(f"graceful doctor: {error}", file=sys.stderr)
    if report.errors:
        return 2
    return 1 if any(f.severity == "error" for f in report.findings) else 0


def _verify(args: argparse.Namespace) -> int:
    import json

    if importlib.util.find_spec("httpx") is None:
        print("graceful verify: needs httpx: pip install 'graceful-rollout[verify]'", file=sys.stderr)
        return 2
    from graceful.verify._run import VerifyError, VerifyOptions, parse_pre_stop, verify

    usage: argparse.ArgumentParser = args.parser
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        usage.error("give the COMMAND that starts one instance on $PORT after --")
    if not any("$PORT" in part or "${PORT}" in part for part in command):
        print("graceful verify: note: COMMAND has no $PORT; it gets PORT in its environment", file=sys.stderr)
    try:
        pre_stop = parse_pre_stop(args.prestop) if args.prestop else None
    except ValueError as exc:
        usage.error(str(exc))
    for name, value, low, high in (
        ("--replicas", args.replicas, 1, 20),
        ("--lag", args.lag, 0, 60),
        ("--grace", args.grace, 1, 3600),
        ("--clients", args.clients, 1, 64),
    ):
        if not low <= value <= high:
            usage.error(f"{name} {value:g}: allowed from {low} to {high}")
    if args.rate is not None and not 0 < args.rate <= 100_000:
        usage.error(f"--rate {args.rate:g}: allowed more than 0 up to 100000 requests per second")
    for name, path in (("--ready", args.ready), ("--url-path", args.url_path)):
        if not path.startswith("/"):
            usage.error(f"{name} {path!r}: a path starting with /")
    options = VerifyOptions(
        command=command,
        replicas=args.replicas,
        ready_path=args.ready,
        url_path=args.url_path,
        method=args.method.upper(),
        rate=args.rate,
        clients=args.clients,
        lag=args.lag,
        grace=args.grace,
        pre_stop=pre_stop,
    )
    try:
        report = verify(options, progress=lambda text: print(f"graceful verify: {text}", file=sys.stderr))
    except VerifyError as exc:
        print(f"graceful verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="graceful", description="Tools for lossless rolling deployments.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor = commands.add_parser(
        "doctor",
        help="find rollout-loss causes in Dockerfiles, Kubernetes/compose YAML, Procfiles, gunicorn configs",
        description="Exit 1 when an error is found, 0 otherwise, 2 on usage or unreadable input. "
        "Rules: docs/doctor.md (or --rules).",
    )
    doctor.add_argument("paths", nargs="*", metavar="PATH", help="file or directory; - reads YAML from stdin")
    doctor.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    doctor.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="CODE",
        help="skip a rule (repeatable, or GR001,GR002)",
    )
    doctor.add_argument("--rules", action="store_true", help="list the rules and exit")
    doctor.set_defaults(run=_doctor, parser=doctor)

    verify = commands.add_parser(
        "verify",
        help="replace your own service's instances under load on this machine and report what was lost",
        usage="graceful verify [OPTIONS] -- COMMAND...",
        description="COMMAND starts one instance listening on $PORT, e.g. "
        "graceful verify -- uvicorn app:app --port '$PORT'. Exit 0 when nothing was lost and no "
        "instance needed SIGKILL, 1 otherwise, 2 on usage errors. docs/verify.md.",
    )
    verify.add_argument("--replicas", type=int, default=2, help="instances (default 2)")
    verify.add_argument(
        "--ready",
        default="/healthz/ready",
        metavar="PATH",
        help="readiness path (default /healthz/ready; a 404 falls back to 'answers HTTP')",
    )
    verify.add_argument("--url-path", default="/", metavar="PATH", help="what the load requests (default /)")
    verify.add_argument("--method", default="GET", help="the load's method (default GET)")
    verify.add_argument(
        "--rate", type=float, default=None, help="requests per second in all (default: closed loop)"
    )
    verify.add_argument(
        "--clients",
        type=int,
        default=2,
        help="clients of each kind: keep-alive, new connection, idle (default 2)",
    )
    verify.add_argument(
        "--lag", type=float, default=2.0, help="endpoint-propagation lag in seconds (default 2)"
    )
    verify.add_argument(
        "--grace", type=float, default=30.0, help="seconds from deletion to SIGKILL (default 30)"
    )
    verify.add_argument(
        "--prestop", metavar="sleep:N|http:PATH|exec:CMD", help="a preStop hook, as in a pod spec"
    )
    verify.add_argument("--json", action="store_true", help="the report as JSON (for CI)")
    verify.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    verify.set_defaults(run=_verify, parser=verify)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 with usage on a bad call
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
