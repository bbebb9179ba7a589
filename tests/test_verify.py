"""graceful verify's pure parts and its command line: the diagnosis table, option parsing, usage errors.

The runs against real servers are tests/e2e/test_verify.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from graceful.verify._load import CONNECT, OK, RESET, STATUS, LoadResult
from graceful.verify._report import PodOutcome, build_report, diagnose
from graceful.verify._run import parse_pre_stop, pod_argv


def load_with(outcomes: dict[tuple[str, str], int], samples: list[str] | None = None) -> LoadResult:
    return LoadResult(outcomes=Counter(outcomes), samples=samples or [])


def pod(name: str = "instance-old0", *, killed: bool = False) -> PodOutcome:
    return PodOutcome(name=name, term_to_exit=30.0 if killed else 0.4, exit_status=0, sigkilled=killed)


@pytest.mark.parametrize(
    ("outcomes", "killed", "expected"),
    [
        ({("newconn", OK): 100}, False, []),
        ({("newconn", RESET): 5, ("newconn", OK): 95}, False, ["refused or closed on a new connection"]),
        ({("newconn", CONNECT): 2}, False, ["refused or closed on a new connection"]),
        ({("keepalive", RESET): 3, ("idle", RESET): 1}, False, ["reset on a kept-alive connection"]),
        ({("keepalive", STATUS): 4}, False, [STATUS]),
        ({("keepalive", OK): 10}, True, ["sigkill"]),
        (
            {("newconn", RESET): 1, ("keepalive", RESET): 1},
            True,
            ["refused or closed on a new connection", "reset on a kept-alive connection", "sigkill"],
        ),
    ],
)
def test_each_kind_of_loss_gets_its_diagnosis(
    outcomes: dict[tuple[str, str], int], killed: bool, expected: list[str]
) -> None:
    found = diagnose(load_with(outcomes), [pod(killed=killed)], grace=30)
    assert [d.kind for d in found] == expected
    for diagnosis in found:
        assert diagnosis.cause and diagnosis.fix


def test_the_diagnoses_name_the_cause_and_the_fix() -> None:
    samples = ["t=  2.50s newconn: reset: RemoteProtocolError('Server disconnected')"]
    load = load_with({("newconn", RESET): 3, ("newconn", OK): 10}, samples)
    (refused,) = diagnose(load, [pod()], grace=30)
    assert "listener closed at SIGTERM" in refused.cause and "graceful-run" in refused.fix
    assert refused.example == samples[0]
    (killed,) = diagnose(load_with({("newconn", OK): 1}), [pod(killed=True)], grace=5)
    assert "shell wrapper" in killed.cause and "still running 5 s after SIGTERM" in killed.example


def test_the_report_is_ok_only_with_nothing_lost_and_no_sigkill() -> None:
    def report(outcomes: dict[tuple[str, str], int], killed: bool) -> bool:
        built = build_report(
            load_with(outcomes),
            [pod(killed=killed)],
            seconds=1,
            isolation="pid-namespace",
            readiness="GET /r",
            grace=30,
        )
        assert built.as_dict()["ok"] == built.ok
        return built.ok

    assert report({("keepalive", OK): 10}, killed=False)
    assert not report({("keepalive", OK): 10, ("keepalive", RESET): 1}, killed=False)
    assert not report({("keepalive", OK): 10}, killed=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sleep:5", ("exec", 5.0)),
        ("sleep:0.5", ("exec", 0.5)),
        ("http:/shutdown?wait=1", ("http", "/shutdown?wait=1")),
        ("exec:kill -TERM 1", ("command", "kill -TERM 1")),
    ],
)
def test_prestop_forms(text: str, expected: object) -> None:
    assert parse_pre_stop(text) == expected


@pytest.mark.parametrize("text", ["sleep:-1", "sleep:soon", "http:shutdown", "exec:", "wait:5", ""])
def test_bad_prestop_names_the_allowed_forms(text: str) -> None:
    with pytest.raises(ValueError, match="sleep"):
        parse_pre_stop(text)


def test_port_placeholders() -> None:
    assert pod_argv(["uvicorn", "app:app", "--port", "$PORT"]) == ["uvicorn", "app:app", "--port", "{port}"]
    assert pod_argv(["sh", "-c", "exec app --bind 127.0.0.1:${PORT}"]) == [
        "sh",
        "-c",
        "exec app --bind 127.0.0.1:{port}",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify"], "give the COMMAND"),
        (["verify", "--"], "give the COMMAND"),
        (["verify", "--prestop", "nap:3", "--", "app"], "sleep:SECONDS"),
        (["verify", "--replicas", "0", "--", "app"], "--replicas 0: allowed from 1 to 20"),
        (["verify", "--rate", "-5", "--", "app"], "--rate -5"),
        (["verify", "--ready", "healthz", "--", "app"], "a path starting with /"),
        (["verify", "--lag", "soon", "--", "app"], "invalid float value"),
    ],
)
def test_a_bad_call_exits_2_with_usage(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "graceful._cli", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "usage: graceful verify" in result.stderr and message in result.stderr
