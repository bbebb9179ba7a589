"""Tables for graceful-run's pure policies (graceful._signals) and its command line."""

from __future__ import annotations

import errno
import signal

import pytest

from graceful._signals import (
    PolicyError,
    exit_status,
    forward_deadline,
    forwardable_signals,
    kill_deadline,
    parse_rewrite,
    rewrite,
    rewrite_table,
    signal_name,
    signal_number,
    spawn_failure_status,
    wait_timeout,
)
from graceful._supervisor_cli import Exit, UsageError, parse_args


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("15", 15),
        ("TERM", 15),
        ("SIGTERM", 15),
        ("sigusr1", 10),
        ("RTMIN", 34),
        ("RTMIN+3", 37),
        ("SIGRTMAX-1", 63),
    ],
)
def test_signal_number_accepts_numbers_and_names(text: str, number: int) -> None:
    """Signals are given as numbers or names, with or without SIG, real-time ones with offsets."""
    assert signal_number(text, field="-p") == number


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FOO", "is not a signal"),
        ("0", "is not a valid signal"),
        ("99", "is not a valid signal"),
        ("32", "is not a valid signal"),
    ],
)
def test_signal_number_rejects_with_field_value_and_range(text: str, message: str) -> None:
    """A bad signal names the option, the value and what is allowed."""
    with pytest.raises(PolicyError, match=message) as caught:
        signal_number(text, field="-p")
    assert str(caught.value).startswith(f"-p={text!r}")


def test_forwardable_signals_are_all_catchable_ones() -> None:
    """1..31 without KILL, STOP and CHLD, plus every real-time signal libc lets us use."""
    expected = set(range(1, 32)) - {9, 19, 17} | set(range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1))
    assert forwardable_signals() == expected


def test_rewrite_table_defaults_and_overrides() -> None:
    """Group mode turns terminal stops into SIGSTOP (as dumb-init); -r wins; 0 drops."""
    table = rewrite_table(
        [parse_rewrite("TSTP:TSTP"), parse_rewrite("USR1:2"), parse_rewrite("HUP:0")], single_child=False
    )
    assert rewrite(signal.SIGTSTP, table) == signal.SIGTSTP
    assert rewrite(signal.SIGTTIN, table) == signal.SIGSTOP
    assert rewrite(signal.SIGUSR1, table) == signal.SIGINT
    assert rewrite(signal.SIGHUP, table) == 0
    assert rewrite(signal.SIGWINCH, table) == signal.SIGWINCH
    assert rewrite_table([], single_child=True) == {}


@pytest.mark.parametrize("text", ["TERM", "KILL:TERM", "CHLD:TERM", "TERM:FOO"])
def test_parse_rewrite_rejects(text: str) -> None:
    """A rewrite needs S:R with S forwardable and R a signal or 0."""
    with pytest.raises(PolicyError):
        parse_rewrite(text)


def test_exit_status_codes_and_signals() -> None:
    """Every exit code 0..255 passes through; death by signal N is 128+N; -e remaps to 0."""
    for code in range(256):
        assert exit_status(code << 8, frozenset()) == code
    for signum in range(1, 65):
        assert exit_status(signum, frozenset()) == 128 + signum
    assert exit_status(15, frozenset({143})) == 0
    assert exit_status(3 << 8, frozenset({3, 143})) == 0


def test_spawn_failure_status() -> None:
    """Not found is 127, found but not runnable is 126 (the shell's convention)."""
    assert spawn_failure_status(errno.ENOENT) == 127
    assert spawn_failure_status(errno.EACCES) == 126
    assert spawn_failure_status(errno.ENOEXEC) == 126


def test_deadline_arithmetic() -> None:
    """The forward deadline comes from the board's drain start; the wait never sleeps past a deadline."""
    assert forward_deadline(100.0, 5.0) == 105.0
    assert kill_deadline(105.0, 25.0) == 130.0
    assert wait_timeout(100.0, [None, None], None) is None
    assert wait_timeout(100.0, [None, None], 0.025) == 0.025
    assert wait_timeout(100.0, [100.01, None], 0.025) == pytest.approx(0.01)
    assert wait_timeout(100.0, [99.0, 130.0], None) == 0.0


def test_signal_name() -> None:
    """Log lines name signals the way kill -l does."""
    assert signal_name(15) == "SIGTERM"
    assert signal_name(int(signal.SIGRTMIN) + 2) == "SIGRTMIN+2"
    assert signal_name(0) == "nothing"


def test_cli_options_before_command_without_dashes() -> None:
    """Options stop at the first word that is not one; bundled short flags and = values work."""
    options = parse_args(
        ["-vv", "-c", "-rTERM:QUIT", "-e", "143", "--drain-delay=1.5", "uvicorn", "-v", "--port", "1"], {}
    )
    assert options.command == ["uvicorn", "-v", "--port", "1"]
    assert options.verbosity == 3
    assert options.single_child
    assert options.rewrites == [(15, 3)]
    assert options.expect_exit == frozenset({143})
    assert options.drain_delay == 1.5
    assert parse_args(["--", "-x"], {}).command == ["-x"]


def test_cli_environment_and_precedence() -> None:
    """Each own flag has a GRACEFUL_* variable; the command line wins over it."""
    env = {
        "GRACEFUL_DRAIN_DELAY": "2",
        "GRACEFUL_DRAIN_TIMEOUT": "9",
        "GRACEFUL_REWRITE": "USR1:USR2, HUP:0",
        "GRACEFUL_SINGLE_CHILD": "yes",
        "GRACEFUL_SUBREAPER": "0",
        "GRACEFUL_EXPECT_EXIT": "1,2",
    }
    options = parse_args(["--drain-delay", "0", "true"], env)
    assert (options.drain_delay, options.drain_timeout) == (0.0, 9.0)
    assert options.rewrites == [(10, 12), (1, 0)]
    assert options.single_child and not options.subreaper
    assert options.expect_exit == frozenset({1, 2})


@pytest.mark.parametrize(
    ("argv", "env", "single_child", "subreaper"),
    [
        (["true"], {"DUMB_INIT_SETSID": "0"}, True, True),
        (["true"], {"DUMB_INIT_SETSID": "1"}, False, True),
        (["true"], {"DUMB_INIT_SETSID": "no"}, False, True),  # dumb-init: only "0" turns setsid off
        (["-g", "true"], {"DUMB_INIT_SETSID": "0"}, False, True),  # a flag wins over any variable
        (["true"], {"DUMB_INIT_SETSID": "0", "GRACEFUL_SINGLE_CHILD": "0"}, False, True),  # ours win
        (["true"], {"TINI_SUBREAPER": ""}, False, True),  # tini: set to anything, even empty
        (["true"], {"TINI_SUBREAPER": "1", "GRACEFUL_SUBREAPER": "0"}, False, False),
        (["-s", "true"], {"GRACEFUL_SUBREAPER": "0"}, False, True),
        (["--no-subreaper", "true"], {"TINI_SUBREAPER": "1"}, False, False),
    ],
)
def test_cli_switches_of_the_tools_we_replace(
    argv: list[str], env: dict[str, str], single_child: bool, subreaper: bool
) -> None:
    """DUMB_INIT_SETSID=0 and TINI_SUBREAPER keep their meaning; GRACEFUL_* wins over them, flags over all."""
    options = parse_args(argv, env)
    assert (options.single_child, options.subreaper) == (single_child, subreaper)


def test_cli_leave_survivors() -> None:
    """--leave-survivors (dumb-init's exit: TERM the rest, do not wait) as a flag or a variable."""
    assert not parse_args(["true"], {}).leave_survivors
    assert parse_args(["--leave-survivors", "true"], {}).leave_survivors
    assert parse_args(["true"], {"GRACEFUL_LEAVE_SURVIVORS": "1"}).leave_survivors


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "no COMMAND given"),
        (["--bogus", "true"], {}, "unknown option '--bogus'"),
        (["--drain-delay"], {}, "option --drain-delay needs a value"),
        (
            ["--drain-delay", "-1", "true"],
            {},
            "--drain-delay=-1.0 is out of range; allowed: 0 to 3600 seconds",
        ),
        (["-e", "256", "true"], {}, "-e='256' is not an exit status; allowed: 0 to 255"),
        (
            ["true"],
            {"GRACEFUL_DRAIN_TIMEOUT": "soon"},
            "GRACEFUL_DRAIN_TIMEOUT='soon' is not a number of seconds",
        ),
        (["true"], {"GRACEFUL_SINGLE_CHILD": "maybe"}, "GRACEFUL_SINGLE_CHILD='maybe' is not a boolean"),
    ],
)
def test_cli_errors_name_field_value_and_range(argv: list[str], env: dict[str, str], message: str) -> None:
    """A bad call is a UsageError (exit 2) whose message names the option, the value and the range."""
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse_args(argv, env)


def test_cli_help_and_version() -> None:
    """--help and --version print and exit 0."""
    with pytest.raises(Exit, match="usage: graceful-run"):
        parse_args(["-h"], {})
    with pytest.raises(Exit, match="graceful-run 0"):
        parse_args(["--version"], {})
