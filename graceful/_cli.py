"""The ``graceful`` command: subcommands over the package's tools (``graceful doctor``; more to come)."""

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
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 with usage on a bad call
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
