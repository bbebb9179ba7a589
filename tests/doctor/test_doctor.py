"""graceful doctor: the corpus with its exact findings, malformed inputs, the CLI's formats and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graceful.doctor import RULES, InputError, diagnose, examine

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
ROOT = HERE.parent.parent
GUNICORN_CONF = str(CORPUS / "gunicorn.conf.py")

# file (relative to corpus/) -> every finding expected, as (code, path relative to corpus/, line).
EXPECTED: dict[str, list[tuple[str, str, int]]] = {
    "shell-form.Dockerfile": [("GR001", "shell-form.Dockerfile", 6)],
    "inherited.Dockerfile": [("GR001", "inherited.Dockerfile", 2)],
    "tini-nogroup.Dockerfile": [("GR001", "tini-nogroup.Dockerfile", 3)],
    "exec-form.Dockerfile": [],
    "bash-shell.Dockerfile": [],
    "bash-pipe.Dockerfile": [("GR001", "bash-pipe.Dockerfile", 3)],
    "shell-exec.Dockerfile": [],
    "tini-group.Dockerfile": [],
    "ignored.Dockerfile": [],
    "comments-only.Dockerfile": [],
    "script-noexec.Dockerfile": [("GR002", "start.sh", 5)],
    "script-exec.Dockerfile": [],
    "entrypoint-args.Dockerfile": [("GR002", "docker-entrypoint.sh", 5)],
    "entrypoint-ok": [],
    "background.Dockerfile": [("GR003", "run-both.sh", 2)],
    "background-init.Dockerfile": [],
    "stopsignal-quit.Dockerfile": [("GR011", "stopsignal-quit.Dockerfile", 2)],
    "stopsignal-int.Dockerfile": [],
    "Procfile": [("GR001", "Procfile", 1)],
    "pass-procfile": [],
    "k8s-uvicorn-plain.yaml": [
        ("GR010", "k8s-uvicorn-plain.yaml", 2),
        ("GR005", "k8s-uvicorn-plain.yaml", 14),
        ("GR008", "k8s-uvicorn-plain.yaml", 16),
    ],
    "k8s-probes.yaml": [
        ("GR009", "k8s-probes.yaml", 8),
        ("GR006", "k8s-probes.yaml", 19),
        ("GR007", "k8s-probes.yaml", 28),
        ("GR004", "k8s-probes.yaml", 45),
    ],
    "k8s-prestop.yaml": [
        ("GR004", "k8s-prestop.yaml", 17),
        ("GR001", "k8s-prestop.yaml", 45),
        ("GR008", "k8s-prestop.yaml", 45),
        ("GR011", "k8s-prestop.yaml", 47),
    ],
    "k8s-single-pdb.yaml": [],
    "gunicorn-raw-env": [("GR004", "gunicorn-raw-env/deployment.yaml", 13)],
    "k8s-prestop-ok.yaml": [],
    "k8s-ignored.yaml": [],
    "k8s-ingress-alb.yaml": [
        ("GR012", "k8s-ingress-alb.yaml", 8),
        ("GR012", "k8s-ingress-alb.yaml", 8),
    ],
    "k8s-ingress-ok.yaml": [],
    "docker-compose.yml": [
        ("GR001", "docker-compose.yml", 4),
        ("GR011", "docker-compose.yml", 5),
        ("GR001", "docker-compose.yml", 8),
        ("GR003", "docker-compose.yml", 8),
        ("GR004", "docker-compose.yml", 11),
    ],
    "compose-ok": [],
}


def _found(*paths: str) -> list[tuple[str, str, int]]:
    report = examine([*paths, GUNICORN_CONF])
    assert report.errors == []
    return [(f.code, os.path.relpath(f.path, CORPUS), f.line) for f in report.findings]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_has_exactly_its_findings(name: str) -> None:
    """Each corpus file gives exactly the findings listed for it, at those lines."""
    assert sorted(_found(str(CORPUS / name))) == sorted(EXPECTED[name])


def test_every_rule_has_a_failing_and_a_passing_example() -> None:
    """Every rule fails somewhere in the corpus, and some file that could trigger it is clean of it."""
    failing = {code for findings in EXPECTED.values() for code, _, _ in findings}
    assert failing == set(RULES)
    passing = {
        "GR001": "exec-form.Dockerfile", "GR002": "script-exec.Dockerfile",
        "GR003": "background-init.Dockerfile", "GR004": "k8s-single-pdb.yaml",
        "GR005": "k8s-single-pdb.yaml", "GR006": "k8s-prestop-ok.yaml", "GR007": "k8s-prestop-ok.yaml",
        "GR008": "k8s-prestop-ok.yaml", "GR009": "k8s-ingress-ok.yaml", "GR010": "k8s-single-pdb.yaml",
        "GR011": "stopsignal-int.Dockerfile", "GR012": "k8s-ingress-ok.yaml",
    }  # fmt: skip
    for code, name in passing.items():
        assert code not in {c for c, _, _ in EXPECTED[name]}, (code, name)
    assert set(passing) == set(RULES)


def test_finding_messages_carry_the_numbers() -> None:
    """GR004's message writes out the sum it compared with the grace period."""
    report = examine([str(CORPUS / "k8s-probes.yaml")])
    ledger = [f for f in report.findings if f.code == "GR004" and "ledger" in f.message]
    assert [f.message for f in ledger] == [
        "terminationGracePeriodSeconds 20 < 35 = drain_delay 10 + drain_timeout 23 + 2 (container 'ledger'): "
        "SIGKILL comes before the drain ends"
    ]
    assert ledger[0].severity == "error" and ledger[0].col == 7 and ledger[0].fix


def test_project_examples_are_clean() -> None:
    """The project's own Dockerfile.example and examples/k8s/ give no finding."""
    report = examine([str(ROOT / "Dockerfile.example"), str(ROOT / "examples")])
    assert report.errors == []
    assert report.findings == []


def test_ignore_option_drops_a_rule() -> None:
    """``ignore=`` drops the rule's findings and nothing else."""
    report = examine([str(CORPUS / "k8s-uvicorn-plain.yaml")], ignore=["GR010", "gr005"])
    assert [f.code for f in report.findings] == ["GR008"]


def test_helm_chart_templates_are_skipped_in_a_directory_scan() -> None:
    """A chart's templates/ are Go templates, not YAML: a directory scan skips them."""
    report = examine([str(HERE / "chart")])
    assert report.errors == [] and report.findings == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n", ":4: not valid YAML"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "a binary file"),
        (b"kind: Deployment\n\xff\xfe oops\n", "not UTF-8"),
    ],
)
def test_malformed_input_is_an_input_error(tmp_path: Path, content: bytes, error: str) -> None:
    """Broken YAML (with its line), a binary file and non-UTF-8 text are errors naming the file."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    report = examine([str(path)])
    assert report.findings == []
    assert len(report.errors) == 1 and str(path) in str(report.errors[0]) and error in str(report.errors[0])


@pytest.mark.parametrize("name", ["empty.yaml", "Dockerfile", "Procfile", "gunicorn.conf.py", "other.yml"])
def test_empty_or_unrelated_input_gives_nothing(tmp_path: Path, name: str) -> None:
    """Empty files and YAML that is neither Kubernetes nor compose give no finding and no error."""
    path = tmp_path / name
    path.write_text("" if name != "other.yml" else "- just\n- a list\n")
    assert examine([str(path)]).findings == [] and examine([str(path)]).errors == []


def test_alias_bomb_is_cheap(tmp_path: Path) -> None:
    """A billion-laughs document costs one node per alias, not an exponential copy."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    report = examine([str(path)])
    assert report.findings == [] and report.errors == []
    assert time.monotonic() - started < 2


def test_ten_megabytes_of_yaml_is_refused_clearly(tmp_path: Path) -> None:
    """10 MB of YAML: an error that says the size, at once, not seconds of parsing."""
    path = tmp_path / "huge.yaml"
    path.write_text("items:\n" + "  - {name: padding-entry-of-some-length, value: 1234567890}\n" * 180_000)
    assert path.stat().st_size > 10_000_000
    started = time.monotonic()
    report = examine([str(path)])
    assert time.monotonic() - started < 2
    assert [str(error) for error in report.errors] == [f"{path}: larger than 8 MiB; the doctor reads less"]


def deployments(count: int) -> str:
    """``count`` Deployment documents, each with one plain-uvicorn container (3 findings each)."""
    document = (CORPUS / "k8s-uvicorn-plain.yaml").read_text()
    return "".join(
        "---\n" + document.replace("name: api\n", f"name: api-{index}\n", 1) for index in range(count)
    )


def test_a_thousand_manifests_in_under_two_seconds(tmp_path: Path) -> None:
    """Issue 14's bound: 1,000 Deployment documents are diagnosed in < 2 s (a generous bound)."""
    path = tmp_path / "many.yaml"
    path.write_text(deployments(1000))
    started = time.monotonic()
    report = examine([str(path)])
    elapsed = time.monotonic() - started
    assert len(report.findings) == 3000
    assert elapsed < 2, f"{elapsed:.2f} s"


# -- the CLI, as a subprocess ------------------------------------------------------------------------


def graceful(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graceful", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_cli_exit_codes() -> None:
    """0 when clean, 1 on an error finding, 0 on warnings only, 2 on usage or a missing file."""
    assert graceful("doctor", "Dockerfile.example").returncode == 0
    failing = graceful("doctor", "tests/doctor/corpus/shell-form.Dockerfile")
    assert failing.returncode == 1
    assert failing.stdout.startswith("tests/doctor/corpus/shell-form.Dockerfile:6:1: GR001 shell-form")
    assert graceful("doctor", "tests/doctor/corpus/stopsignal-quit.Dockerfile").returncode == 0
    missing = graceful("doctor", "no/such/file")
    assert missing.returncode == 2 and "no/such/file: no such file or directory" in missing.stderr
    usage = graceful("doctor", "--format", "xml", "Dockerfile.example")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    assert graceful().returncode == 2
    no_path = graceful("doctor")
    assert no_path.returncode == 2 and "usage: graceful doctor" in no_path.stderr
    bad_code = graceful("doctor", "--ignore", "GR999", "Dockerfile.example")
    assert bad_code.returncode == 2 and "GR999: no such rule" in bad_code.stderr


def test_cli_ignore_repeatable_and_comma_separated() -> None:
    """``--ignore A,B --ignore C`` drops all three."""
    result = graceful(
        "doctor", "--ignore", "GR005,GR010", "--ignore", "GR008", "tests/doctor/corpus/k8s-uvicorn-plain.yaml"
    )
    assert result.returncode == 0 and result.stdout == ""


def test_cli_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    """Exit 2 with ``path:line: not valid YAML``; no traceback."""
    path = tmp_path / "broken.yaml"
    path.write_text("kind: Deployment\nspec:\n  replicas: 1\n   bad: indent\n")
    result = graceful("doctor", str(path))
    assert result.returncode == 2
    assert f"{path}:4: not valid YAML" in result.stderr and "Traceback" not in result.stderr


def test_cli_json() -> None:
    """``--format json``: a list of findings with every field."""
    result = graceful("doctor", "--format", "json", "tests/doctor/corpus/k8s-uvicorn-plain.yaml")
    assert result.returncode == 1
    findings = json.loads(result.stdout)
    assert [(f["code"], f["line"], f["severity"]) for f in findings] == [
        ("GR010", 2, "warning"),
        ("GR005", 14, "error"),
        ("GR008", 16, "error"),
    ]
    assert set(findings[0]) == {"code", "severity", "path", "line", "col", "message", "fix"}


def test_cli_sarif_structure() -> None:
    """``--format sarif``: SARIF 2.1.0's required members, rules metadata, results pointing at rules."""
    result = graceful("doctor", "--format", "sarif", "tests/doctor/corpus/docker-compose.yml")
    assert result.returncode == 1
    log = json.loads(result.stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "graceful-doctor"
    assert [rule["id"] for rule in driver["rules"]] == list(RULES)
    assert all(rule["defaultConfiguration"]["level"] in ("error", "warning") for rule in driver["rules"])
    assert len(run["results"]) == 5
    for item in run["results"]:
        assert driver["rules"][item["ruleIndex"]]["id"] == item["ruleId"]
        assert item["level"] in ("error", "warning") and item["message"]["text"]
        location = item["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"] == "tests/doctor/corpus/docker-compose.yml"
        assert location["region"]["startLine"] >= 1


def test_cli_reads_helm_template_output_from_stdin() -> None:
    """``helm template . | graceful doctor -``: the chart's rendered output, read from stdin."""
    rendered = (HERE / "helm-output.yaml").read_bytes()
    result = graceful("doctor", "-", stdin=rendered)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "<stdin>:49:7: GR004 terminationGracePeriodSeconds 30 < 37 = drain_delay 10 + "
        "drain_timeout 25 + 2 (container 'storefront'): SIGKILL comes before the drain ends"
    )
    assert len(result.stdout.splitlines()) == 2  # the finding and the summary


def test_core_import_does_not_load_the_parsers() -> None:
    """``import graceful`` and the CLI's parser stay free of yaml and dockerfile_parse."""
    code = "import graceful, graceful._cli, sys; print(sorted(m for m in ('yaml', 'dockerfile_parse') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_cli_lists_the_rules() -> None:
    """``--rules`` prints one line a rule: code, severity, name, summary."""
    result = graceful("doctor", "--rules")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(RULES)
    assert lines[0].startswith("GR001 error   shell-form-without-init: ")


def test_a_file_named_neither_way_is_sniffed(tmp_path: Path) -> None:
    """An explicit path with an unknown name: FROM first means a Dockerfile, else YAML."""
    image = tmp_path / "image.build"
    image.write_text("# syntax=docker/dockerfile:1\nFROM python:3.12\nCMD uvicorn app:app\n")
    assert [f.code for f in examine([str(image)]).findings] == ["GR001"]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text((CORPUS / "k8s-uvicorn-plain.yaml").read_text())
    assert [f.code for f in examine([str(manifest)]).findings] == ["GR010", "GR005", "GR008"]


def test_diagnose_returns_findings_and_raises_on_unreadable_input(tmp_path: Path) -> None:
    """The library call: a list of findings, or the InputError of the first bad file."""
    findings = diagnose([str(CORPUS / "shell-form.Dockerfile")])
    assert [(f.code, f.line) for f in findings] == [("GR001", 6)]
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(InputError, match=r"broken.yaml:2: not valid YAML"):
        diagnose([str(broken)])


def test_inline_ignore_in_scripts_and_procfiles(tmp_path: Path) -> None:
    """``# graceful: ignore[CODE]`` works in an entry script and a Procfile, on the line or the line before."""
    (tmp_path / "Dockerfile").write_text('FROM python:3.12\nCOPY run.sh /run.sh\nENTRYPOINT ["/run.sh"]\n')
    (tmp_path / "run.sh").write_text("#!/bin/sh\n# graceful: ignore[GR002]\nuvicorn app:app\n")
    (tmp_path / "Procfile").write_text("web: gunicorn app:app | tee log  # graceful: ignore[GR001]\n")
    assert examine([str(tmp_path)]).findings == []
    (tmp_path / "run.sh").write_text("#!/bin/sh\n# graceful: ignore[GR003]\nuvicorn app:app\n")
    assert [(f.code, f.line) for f in examine([str(tmp_path)]).findings] == [("GR002", 3)]
