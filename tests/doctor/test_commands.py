"""The pure parts of graceful doctor: what a command line runs, kill's signal, the drain sums, compose durations."""

from __future__ import annotations

import pytest

from graceful.doctor._commands import analyse, analyse_shell, kill_signal
from graceful.doctor._compose import duration
from graceful.doctor._drain import keep_alive, needed_grace, stop_signal_problem
from graceful.doctor._gunicorn_conf import read


@pytest.mark.parametrize(
    ("argv", "init", "group", "server", "graceful"),
    [
        (["uvicorn", "app:app"], None, False, "uvicorn", False),
        (["python3.12", "-m", "uvicorn", "app:app"], None, False, "uvicorn", False),
        (["fastapi", "run", "main.py"], None, False, "uvicorn", False),
        (["python", "-m", "graceful.uvicorn", "app:app"], None, False, "uvicorn", True),
        (["graceful-uvicorn", "app:app"], None, False, "uvicorn", True),
        (["gunicorn", "-k", "graceful.gunicorn.UvicornWorker", "app:app"], None, False, "gunicorn", True),
        (
            ["gunicorn", "--worker-class=uvicorn.workers.UvicornWorker", "app:app"],
            None,
            False,
            "gunicorn",
            False,
        ),
        (["hypercorn", "app:app"], None, False, "hypercorn", False),
        (["tini", "--", "uvicorn", "app:app"], "tini", False, "uvicorn", False),
        (["/sbin/tini", "-g", "--", "uvicorn", "app:app"], "tini", True, "uvicorn", False),
        (["dumb-init", "uvicorn", "app:app"], "dumb-init", True, "uvicorn", False),
        (["dumb-init", "--single-child", "uvicorn", "app:app"], "dumb-init", False, "uvicorn", False),
        (
            ["graceful-run", "--drain-delay", "3", "--", "gunicorn", "app:app"],
            "graceful-run",
            True,
            "gunicorn",
            False,
        ),
        (["gosu", "app", "uvicorn", "app:app"], None, False, "uvicorn", False),
        (["ddtrace-run", "gunicorn", "app:app"], None, False, "gunicorn", False),
        (["celery", "-A", "app", "worker"], None, False, None, False),
    ],
)
def test_analyse_finds_init_and_server(
    argv: list[str], init: str | None, group: bool, server: str | None, graceful: bool
) -> None:
    """The init (and whether it signals the group), the server and whether it runs graceful's drain."""
    command = analyse(argv)
    assert command.init == init
    assert command.init_signals_group is group
    assert (command.server.kind if command.server else None) == server
    assert (command.server.graceful if command.server else False) is graceful


def test_flags_are_read_in_both_spellings() -> None:
    """``--flag V`` and ``--flag=V``; graceful-run's drain flags become GRACEFUL_* overrides."""
    command = analyse(
        ["graceful-run", "--drain-timeout=40", "--", "uvicorn", "--timeout-keep-alive", "90", "a:b"]
    )
    assert command.overrides == (("GRACEFUL_DRAIN_TIMEOUT", "40"),)
    assert command.server is not None and command.server.keep_alive == 90
    assert analyse(["gunicorn", "--graceful-timeout=45", "a:b"]).server.graceful_timeout == 45  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "execs", "spawns"),
    [
        ("uvicorn app:app", False, False),  # dash forks even a lone command
        ("exec uvicorn app:app", True, False),
        ("alembic upgrade head && exec uvicorn app:app", True, False),
        ("PORT=80 exec gunicorn app:app", True, False),
        ("nginx & exec uvicorn app:app", True, True),
        ("cd /app; uvicorn app:app --port 80", False, False),
        ("uvicorn 'unclosed", False, False),
    ],
)
def test_shell_text(text: str, execs: bool, spawns: bool) -> None:
    """Shell text is split with shlex: ``exec`` before the server, ``&`` jobs."""
    command = analyse_shell(text)
    assert (command.execs, command.spawns) == (execs, spawns)


@pytest.mark.parametrize(
    ("text", "execs"),
    [
        ("uvicorn app:app", True),
        ("cd /app && uvicorn app:app", True),
        ("uvicorn app:app | tee log", False),
        ("uvicorn app:app; echo done", False),
        ("uvicorn app:app & wait", False),
    ],
)
def test_bash_execs_its_last_command(text: str, execs: bool) -> None:
    """bash -c execs the last simple command itself (5.2, measured), not one piped or followed."""
    assert analyse(["bash", "-c", text]).execs is execs


@pytest.mark.parametrize(
    ("words", "signal"),
    [
        (["sleep", "5"], None),
        (["kill", "1"], "TERM"),
        (["kill", "-9", "1"], "9"),
        (["kill", "-s", "QUIT", "1"], "QUIT"),
        (["/bin/kill", "-SIGINT", "1"], "SIGINT"),
        (["pkill", "-f", "uvicorn"], "TERM"),
        (["sleep", "2", "kill", "-HUP", "1"], "HUP"),
    ],
)
def test_kill_signal(words: list[str], signal: str | None) -> None:
    assert kill_signal(words) == signal


def test_needed_grace_sums() -> None:
    """graceful: preStop + delay + timeout + 2; gunicorn: preStop + graceful_timeout; uvicorn: no bound."""
    graceful = analyse(["graceful-run", "--", "uvicorn", "app:app"])
    assert needed_grace(graceful, {"GRACEFUL_DRAIN_DELAY": "10"}, 0.0) == (
        35.0,
        "drain_delay 10 + drain_timeout 23 + 2",
    )
    assert needed_grace(analyse(["gunicorn", "app:app"]), {}, 5.0) == (
        35.0,
        "preStop sleep 5 + gunicorn graceful_timeout 30",
    )
    assert needed_grace(analyse(["uvicorn", "app:app"]), {}, 5.0) is None
    # A bad GRACEFUL_* value falls back to the defaults (the server itself would refuse to start).
    assert needed_grace(graceful, {"GRACEFUL_DRAIN_DELAY": "soon"}, 0.0) == (
        30.0,
        "drain_delay 5 + drain_timeout 23 + 2",
    )


def test_keep_alive_figures() -> None:
    assert keep_alive(analyse(["uvicorn", "a:b"]), {}) == (5.0, "uvicorn's default")
    assert keep_alive(analyse(["gunicorn", "a:b"]), {}) == (2.0, "gunicorn's default")
    assert keep_alive(
        analyse(["python", "-m", "graceful.uvicorn", "a:b"]), {"GRACEFUL_KEEP_ALIVE": "90"}
    ) == (
        90.0,
        "GRACEFUL_KEEP_ALIVE (default 75)",
    )


@pytest.mark.parametrize(
    ("argv", "signal", "bad"),
    [
        (["uvicorn", "a:b"], "SIGINT", False),
        (["uvicorn", "a:b"], "SIGQUIT", True),
        (["gunicorn", "a:b"], "SIGINT", True),
        (["gunicorn", "a:b"], "15", False),
        (["graceful-run", "--drain-signal", "USR1", "--", "uvicorn", "a:b"], "SIGUSR1", False),
        (["graceful-run", "--", "uvicorn", "a:b"], "SIGINT", True),
        (["celery", "worker"], "SIGKILL", True),
        (["celery", "worker"], "SIGINT", False),
    ],
)
def test_stop_signal_problem(argv: list[str], signal: str, bad: bool) -> None:
    assert (stop_signal_problem(analyse(argv), signal) is not None) is bad


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1m30s", 90.0),
        ("10s", 10.0),
        (45, 45.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("soon", None),
        ("10s junk", None),
    ],
)
def test_compose_duration(value: object, seconds: float | None) -> None:
    assert duration(value) == seconds


def test_gunicorn_conf_is_read_without_running_it() -> None:
    """Literal module-level settings are read; code (even os.system) is never run."""
    conf = read(
        "gunicorn.conf.py",
        "import os\nos.system('touch /tmp/doctor-ran')\nkeepalive = 75\nworker_class = 'graceful.gunicorn.ThreadWorker'\n"
        "graceful_timeout = int(os.environ.get('T', '20'))\nraw_env = ['GRACEFUL_DRAIN_DELAY=8', f'X={os.sep}']\n",
    )
    assert conf.number("keepalive") == 75
    assert conf.values["worker_class"] == "graceful.gunicorn.ThreadWorker"
    assert conf.number("graceful_timeout") is None
    assert conf.env() == {"GRACEFUL_DRAIN_DELAY": "8"}
    assert conf.lines["keepalive"] == 3
