"""Findings as text (``path:line:col: CODE message``, ruff/flake8 style), JSON, or SARIF 2.1.0."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from graceful.doctor._findings import Finding
from graceful.doctor._rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _uri(path: str) -> str:
    """A SARIF artifact URI: relative paths as they are (relative to the scan root), absolute as file://."""
    if path == "<stdin>":
        return "stdin"
    if os.path.isabs(path):
        return pathlib.Path(path).as_uri()
    return pathlib.PurePath(path).as_posix().removeprefix("./")


def text(findings: list[Finding]) -> str:
    lines = [f"{f.path}:{f.line}:{f.col}: {f.code} {f.message}" for f in findings]
    errors = sum(f.severity == "error" for f in findings)
    if findings:
        lines.append(
            f"Found {len(findings)} problem(s): {errors} error(s), {len(findings) - errors} warning(s)."
        )
    return "\n".join(lines) + ("\n" if lines else "")


def as_json(findings: list[Finding]) -> str:
    return json.dumps([dataclasses.asdict(f) for f in findings], indent=2) + "\n"


def sarif(findings: list[Finding], version: str) -> str:
    """One run of tool ``graceful-doctor`` with every rule's metadata (for code-scanning uploads)."""
    codes = list(RULES)
    rules = [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": f"{rule.summary}. Fix: {rule.fix}."},
            "help": {"text": f"{rule.fix} (docs/doctor.md, {rule.code})"},
            "defaultConfiguration": {"level": rule.severity},
        }
        for rule in RULES.values()
    ]
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": codes.index(f.code),
            "level": f.severity,
            "message": {"text": f"{f.message}. Fix: {f.fix}."},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f.path)},
                        "region": {"startLine": f.line, "startColumn": f.col},
                    }
                }
            ],
        }
        for f in findings
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "graceful-doctor",
                        "version": version,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"
