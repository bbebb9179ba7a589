"""``graceful doctor``: find the causes of rollout losses in Dockerfiles, manifests and server configs.

``diagnose(paths)`` returns the findings; the CLI (``graceful doctor``) prints them. The parsers
(dockerfile-parse, PyYAML) are the ``doctor`` extra, imported only here and only when used.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import sys
from collections.abc import Iterable, Sequence

from graceful.doctor._findings import Finding, InputError, Severity
from graceful.doctor._gunicorn_conf import GunicornConf
from graceful.doctor._rules import RULES, Rule

__all__ = ["RULES", "Finding", "InputError", "Report", "Rule", "Severity", "diagnose", "examine"]

#: Larger inputs are refused (exit 2) rather than parsed for seconds: no manifest set is this big.
MAX_BYTES = 8 * 1024 * 1024
STDIN = "-"
STDIN_NAME = "<stdin>"
_IGNORE = re.compile(r"#.*?\bgraceful:\s*ignore\[([A-Za-z0-9_,\s]+)\]")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache", ".ruff_cache"}
_DOCKERFILES = ("Dockerfile", "Dockerfile.*", "*.Dockerfile", "*.dockerfile", "Containerfile")
_GUNICORN = ("gunicorn.conf.py", "gunicorn*.conf.py", "gunicorn_conf.py")


@dataclasses.dataclass
class Report:
    """What one run found, and the inputs it could not read."""

    findings: list[Finding]
    errors: list[InputError]


def _kind(path: str) -> str | None:
    name = os.path.basename(path)
    if any(fnmatch.fnmatch(name, pattern) for pattern in _DOCKERFILES):
        return "dockerfile"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if name == "Procfile" or name.startswith("Procfile."):
        return "procfile"
    if any(fnmatch.fnmatch(name, pattern) for pattern in _GUNICORN):
        return "gunicorn"
    return None


def _sniff(text: str) -> str:
    """A file named neither way: a Dockerfile when its first instruction is FROM or ARG, else YAML."""
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        if words and not words[0].startswith("#"):
            return "dockerfile" if words[0].upper() in ("FROM", "ARG") else "yaml"
    return "yaml"


def _walk(directory: str) -> Iterable[str]:
    for root, dirs, files in os.walk(directory):
        # A Helm chart's templates are not YAML until rendered: `helm template . | graceful doctor -`.
        chart = "Chart.yaml" in files
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in _SKIP_DIRS and not d.startswith(".") and not (chart and d == "templates")
        )
        for name in sorted(files):
            if _kind(name) is not None and not (chart and name in ("Chart.yaml", "values.yaml")):
                yield os.path.join(root, name)


def _read(path: str) -> str:
    """A file's text; InputError when it is missing, too large, binary or not UTF-8."""
    try:
        if path == STDIN:
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    name = STDIN_NAME if path == STDIN else path
    if len(data) > MAX_BYTES:
        raise InputError(name, f"larger than {MAX_BYTES // (1024 * 1024)} MiB; the doctor reads less")
    if b"\0" in data:
        raise InputError(name, "a binary file (it contains NUL bytes), not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(name, f"not UTF-8 text (byte {exc.start})") from None


def _ignored(finding: Finding, lines: list[str]) -> bool:
    """``# graceful: ignore[CODE]`` on the finding's line or the line before."""
    for number in (finding.line, finding.line - 1):
        if 1 <= number <= len(lines):
            match = _IGNORE.search(lines[number - 1])
            if match and finding.code in {code.strip().upper() for code in match.group(1).split(",")}:
                return True
    return False


class _Run:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.confs: dict[str, GunicornConf] = {}
        self.findings: list[Finding] = []
        self.errors: list[InputError] = []

    def text(self, path: str) -> str | None:
        """A side file (entry script, gunicorn config) or None when it is not there or unreadable."""
        if path in self.texts:
            return self.texts[path]
        if not os.path.isfile(path):
            return None
        try:
            self.texts[path] = _read(path)
        except InputError:
            return None
        return self.texts[path]

    def conf_for(self, config: str) -> GunicornConf | None:
        """The scanned gunicorn config that ``-c config`` names (matched by path suffix)."""
        wanted = os.path.normpath(config.removeprefix("python:")).lstrip("./")
        for path, conf in self.confs.items():
            if os.path.normpath(path).endswith(wanted) or os.path.basename(path) == os.path.basename(wanted):
                return conf
        return None


def diagnose(paths: Sequence[str], *, ignore: Iterable[str] = ()) -> list[Finding]:
    """Every finding of the files in ``paths``; raises the first InputError (an unreadable input)."""
    report = examine(paths, ignore=ignore)
    if report.errors:
        raise report.errors[0]
    return report.findings


def examine(paths: Sequence[str], *, ignore: Iterable[str] = ()) -> Report:
    """Every finding of the files in ``paths`` (files, directories, ``-`` for stdin YAML), and every
    input that could not be read: the CLI reports both and goes on past a bad file."""
    from graceful.doctor import _compose, _dockerfile, _gunicorn_conf, _kubernetes, _procfile, _yaml

    run = _Run()
    files: list[tuple[str, str | None]] = []
    for path in paths:
        if path == STDIN:
            files.append((STDIN, "yaml"))
        elif os.path.isdir(path):
            files += [(found, _kind(found)) for found in _walk(path)]
        elif os.path.exists(path):
            files.append((path, _kind(path)))
        else:
            run.errors.append(InputError(path, "no such file or directory"))
    manifests: list[_kubernetes.Manifest] = []
    for path, kind in files:
        name = STDIN_NAME if path == STDIN else path
        try:
            text = _read(path)
            run.texts[name] = text
            kind = kind or _sniff(text)
            if kind == "gunicorn":
                run.confs[name] = _gunicorn_conf.read(name, text)
            elif kind == "dockerfile":
                run.findings += _dockerfile.check(name, text, run.text)
            elif kind == "procfile":
                run.findings += _procfile.check(name, text, run.text, os.path.dirname(name))
            elif kind == "yaml":
                documents = _yaml.load_all(text, name)
                for document in documents:
                    if _compose.is_compose(document):
                        run.findings += _compose.check(name, document)
                manifests += _kubernetes.objects(name, documents)
        except InputError as exc:
            run.errors.append(exc)
    run.findings += _kubernetes.check(manifests, run.conf_for)
    skip = {code.strip().upper() for code in ignore}
    kept = []
    lines_of: dict[str, list[str]] = {}
    for item in run.findings:
        if item.path not in lines_of:
            lines_of[item.path] = run.texts.get(item.path, "").splitlines()
        lines = lines_of[item.path]
        if item.code not in skip and not _ignored(item, lines):
            kept.append(item)
    kept = sorted(set(kept), key=lambda f: (f.path, f.line, f.col, f.code))
    return Report(findings=kept, errors=run.errors)
