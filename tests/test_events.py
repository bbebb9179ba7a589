"""Lifecycle events: the JSON formatter, the setting, and the events of real runs (uvicorn, graceful-run)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graceful import Lifecycle, Settings
from graceful._admission import SHED_QUIET, AdmissionControl
from graceful._events import EVENTS, JsonFormatter, log_event
from graceful._settings import SettingsError
from graceful.supervisor import Log
from tests.conftest import free_port
from tests.server_process import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHILD = [sys.executable, str(ROOT / "tests" / "supervisor_child.py")]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The ``graceful`` logger writing JSON into a string, at INFO; restored afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    graceful_logger = logging.getLogger("graceful")
    saved = graceful_logger.level, graceful_logger.propagate
    graceful_logger.addHandler(handler)
    graceful_logger.setLevel(logging.INFO)
    graceful_logger.propagate = False
    try:
        yield stream
    finally:
        graceful_logger.removeHandler(handler)
        graceful_logger.setLevel(saved[0])
        graceful_logger.propagate = saved[1]


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line parsed as JSON (a line that does not parse fails the test)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- the formatter ---------------------------------------------------------------------------------


def test_every_record_is_one_json_object_with_the_standard_and_extra_fields(captured: io.StringIO) -> None:
    """ts, level, logger, message, event, pid and every extra field are in each line."""
    log_event(
        logging.WARNING, "drain_started", "graceful: draining (SIGTERM)", reason="SIGTERM", drain_delay=3.0
    )
    logging.getLogger("graceful").info("plain %s", "line")  # no event: still JSON, event null
    first, second = records(captured)
    assert first["event"] == "drain_started" and first["level"] == "WARNING"
    assert first["reason"] == "SIGTERM" and first["drain_delay"] == 3.0
    assert first["logger"] == "graceful" and first["pid"] == os.getpid()
    assert first["message"] == "graceful: draining (SIGTERM)"
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert second["event"] is None and second["message"] == "plain line"


def test_json_formatter_keeps_a_traceback_and_values_json_cannot_hold(captured: io.StringIO) -> None:
    """An exception's traceback lands in ``exc``; an object JSON cannot encode becomes its repr."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("graceful").exception("failed", extra={"event": "x", "thing": object()})
    (record,) = records(captured)
    assert "RuntimeError: boom" in record["exc"]
    assert record["thing"].startswith("<object object")


def test_phase_moves_and_drain_are_events_in_order(captured: io.StringIO) -> None:
    """A lifecycle driven by hand logs phase_changed, drain_started, listener_closed, drain_finished,
    drain_report, each once, in that order."""
    now = [100.0]
    lifecycle = Lifecycle(Settings(drain_delay=3.0), clock=lambda: now[0])
    try:
        lifecycle.open_gate()
        lifecycle.begin_drain("SIGTERM")
        now[0] = 102.5
        lifecycle.request_started()
        lifecycle.note_arrival(("10.0.0.1", 5000))
        lifecycle.request_finished()
        now[0] = 103.0
        lifecycle.begin_stop()
        lifecycle.note_listener_closed()
        now[0] = 103.25
        lifecycle.mark_stopped()
    finally:
        lifecycle.close()
    events = [record["event"] for record in records(captured)]
    assert events == [
        "phase_changed",
        "phase_changed",
        "drain_started",
        "phase_changed",
        "listener_closed",
        "drain_finished",
        "drain_report",
        "phase_changed",
    ]
    report = records(captured)[6]
    assert report["level"] == "WARNING"  # 2.5 s of 3.0 s: over 80 %
    assert report["last_arrival_seconds"] == 2.5 and report["requests_during_delay"] == 1
    assert report["suggested_drain_delay"] == 3.5 and report["cut"] == 0
    assert "raise GRACEFUL_DRAIN_DELAY to at least 3.5 s" in report["message"]
    assert set(events) <= set(EVENTS)


def test_a_request_on_a_connection_open_before_the_drain_is_not_a_new_arrival() -> None:
    """With the server's list of peers at the drain's start, only other peers count as new."""
    now = [10.0]
    lifecycle = Lifecycle(Settings(drain_delay=3.0), clock=lambda: now[0])
    try:
        lifecycle.begin_drain("test")
        lifecycle.pre_drain_peers = frozenset({("127.0.0.1", 4000)})
        now[0] = 11.0
        lifecycle.note_arrival(("127.0.0.1", 5000))  # new
        now[0] = 12.5
        lifecycle.note_arrival(["127.0.0.1", 4000])  # old connection (a list, as some servers give)
        figures = lifecycle.drain_figures()
        assert figures is not None
        assert figures["last_arrival_seconds"] == 1.0 and figures["last_request_seconds"] == 2.5
        public = lifecycle.snapshot()["drain"]
        assert public["last_arrival_seconds"] == 1.0
        assert "reason" not in public and "drain_delay" not in public  # trusted detail only
    finally:
        lifecycle.close()


@pytest.mark.anyio
async def test_shedding_logs_one_began_and_one_ended_with_the_count(captured: io.StringIO) -> None:
    """Many 503s in a row are one shed_began and, after a quiet second, one shed_ended with the count."""
    now = [50.0]
    lifecycle = Lifecycle(Settings(max_concurrency=1, queue_size=0), clock=lambda: now[0])
    try:
        lifecycle.open_gate()
        admission = AdmissionControl(lifecycle.settings, lifecycle)
        assert await admission.acquire()
        for _ in range(5):
            assert not await admission.acquire()
        admission.settle_shedding()  # not quiet yet
        now[0] += SHED_QUIET
        admission.settle_shedding()
        admission.settle_shedding()  # nothing more to say
    finally:
        lifecycle.close()
    shed = [record for record in records(captured) if record["event"] in ("shed_began", "shed_ended")]
    assert [record["event"] for record in shed] == ["shed_began", "shed_ended"]
    assert shed[0]["running"] == 1 and shed[0]["cap"] == 1
    assert shed[1]["shed"] == 5


def test_log_format_is_validated() -> None:
    """GRACEFUL_LOG_FORMAT takes text or json; anything else fails at startup naming the variable."""
    assert Settings.from_env({"GRACEFUL_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings().log_format == "text"
    with pytest.raises(SettingsError, match=r"GRACEFUL_LOG_FORMAT=.yaml.*allowed: text or json"):
        Settings.from_env({"GRACEFUL_LOG_FORMAT": "yaml"})


def test_supervisor_log_writes_the_same_json_shape(capfd: pytest.CaptureFixture[str]) -> None:
    """graceful-run's Log in json mode: one object a line with the formatter's fields."""
    log = Log(1, "json")
    log.event(1, "sigkill_sent", "drain timeout over", "WARNING", drain_timeout=2.0)
    log(3, "not shown at verbosity 1")
    (line,) = capfd.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["event"] == "sigkill_sent" and record["level"] == "WARNING"
    assert record["drain_timeout"] == 2.0 and record["logger"] == "graceful.supervisor"
    assert {"ts", "message", "pid"} <= set(record)


# -- real runs -------------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of a process's stderr that are JSON objects (uvicorn's own lines are text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_uvicorn_run_logs_its_events_in_order_as_json(tmp_path: Path) -> None:
    """`python -m graceful.uvicorn` with GRACEFUL_LOG_FORMAT=json: SIGTERM gives drain_started,
    listener_closed, drain_finished and one drain_report that counts the request made meanwhile."""
    port = free_port()
    err = (tmp_path / "err").open("wb")
    env = {**os.environ, "GRACEFUL_LOG_FORMAT": "json", "GRACEFUL_DRAIN_DELAY": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GRACEFUL_STATE", None)
    argv = [sys.executable, "-m", "graceful.uvicorn", "examples.starlette_app:app", "--port", str(port)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/healthz/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return process.poll() is not None

        wait_for(ready, 15, "graceful.uvicorn to be ready")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(url + "/healthz/ready", timeout=1).status_code == 503, 5, "draining")
        time.sleep(0.3)  # the drain report measures when this request came: later than the drain's start
        assert httpx.get(url + "/fast", timeout=2).status_code == 200
        health = httpx.get(url + "/healthz", timeout=2).json()
        assert health["drain"]["requests_during_delay"] == 1  # the same figures while draining
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        err.close()
    lines = json_lines((tmp_path / "err").read_text())
    events = [line["event"] for line in lines if line["event"] != "phase_changed"]
    assert events == ["drain_started", "listener_closed", "drain_finished", "drain_report"], lines
    (report,) = [line for line in lines if line["event"] == "drain_report"]
    assert report["reason"] == "SIGTERM" and report["drain_delay"] == 1.0
    assert report["requests_during_delay"] == 1 and report["cut"] == 0
    assert 0.3 <= report["last_arrival_seconds"] < 1.0
    assert report["in_flight_at_close"] == 0 and report["level"] == "INFO"


def test_supervisor_writes_its_events_and_a_kill_on_stderr(tmp_path: Path) -> None:
    """graceful-run with GRACEFUL_LOG_FORMAT=json and a child that ignores SIGTERM: drain_started,
    signal_forwarded, sigkill_sent, child_exited and a drain_report with the exit status, as JSON."""
    env = {**os.environ, "GRACEFUL_LOG_FORMAT": "json", "GRACEFUL_STATE_DIR": str(tmp_path)}
    env.pop("GRACEFUL_STATE", None)
    argv = [sys.executable, "-m", "graceful.supervisor", "--drain-delay", "0.3", "--drain-timeout", "0.5"]
    process = subprocess.Popen(
        [*argv, "--", *CHILD, "--ignore-term"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"ready")  # the child set up its handlers
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 128 + signal.SIGKILL
    lines = json_lines(err.decode())
    events = [line["event"] for line in lines if line["event"]]
    assert events == ["drain_started", "signal_forwarded", "sigkill_sent", "child_exited", "drain_report"], (
        lines
    )
    by_event = {line["event"]: line for line in lines}
    assert by_event["drain_started"]["reason"] == "SIGTERM"
    assert by_event["signal_forwarded"]["signal"] == "SIGTERM"
    assert by_event["sigkill_sent"]["level"] == "WARNING"
    assert by_event["child_exited"]["exit_status"] == 137
    assert by_event["drain_report"]["exit_status"] == 137 and by_event["drain_report"]["scope"] == "instance"


def test_gunicorn_json_goes_to_the_error_logs_stream_and_leaves_its_format_alone() -> None:
    """Under gunicorn with json, graceful's lines are JSON on the error log's stream; gunicorn's
    own handler keeps its formatter."""
    from graceful._gunicorn_master import route_logs_to_gunicorn

    stream = io.StringIO()
    theirs = logging.StreamHandler(stream)
    theirs_format = logging.Formatter("[gunicorn] %(message)s")
    theirs.setFormatter(theirs_format)
    error_log = logging.getLogger("test.gunicorn.error")
    error_log.handlers = [theirs]
    error_log.setLevel(logging.INFO)

    class FakeLog:  # gunicorn's glogging.Logger keeps its error logger here
        pass

    fake = FakeLog()
    fake.error_log = error_log  # type: ignore[attr-defined]
    graceful_logger = logging.getLogger("graceful")
    saved = graceful_logger.handlers, graceful_logger.level, graceful_logger.propagate
    graceful_logger.handlers = []
    try:
        route_logs_to_gunicorn(fake, log_format="json")
        log_event(logging.WARNING, "drain_started", "draining", reason="SIGTERM")
        error_log.info("worker booted")
    finally:
        graceful_logger.handlers, graceful_logger.level, graceful_logger.propagate = saved
        error_log.handlers = []
    ours, gunicorns = stream.getvalue().splitlines()
    assert json.loads(ours)["event"] == "drain_started" and json.loads(ours)["reason"] == "SIGTERM"
    assert gunicorns == "[gunicorn] worker booted" and theirs.formatter is theirs_format


def test_supervisor_rejects_an_unknown_log_format() -> None:
    """graceful-run fails at start-up (usage error) naming GRACEFUL_LOG_FORMAT and what it allows."""
    from graceful._supervisor_cli import UsageError, parse_args

    assert parse_args(["true"], {"GRACEFUL_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(UsageError, match=r"GRACEFUL_LOG_FORMAT='xml'.*allowed: text or json"):
        parse_args(["true"], {"GRACEFUL_LOG_FORMAT": "xml"})
