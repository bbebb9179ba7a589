"""Command line and ``GRACEFUL_*`` variables of ``graceful-run``, mapped onto one options object.

Hand-written instead of argparse: argparse (with gettext, re, shutil behind it) is a measurable
part of a cold start, and the grammar is small. Options stop at the first word that is not one (as
tini and dumb-init do), so ``graceful-run -v uvicorn --port 80`` needs no ``--``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from graceful._signals import (
    MAX_SECONDS,
    PolicyError,
    check_seconds,
    parse_exit_code,
    parse_rewrite,
    parse_seconds,
    signal_number,
)

USAGE = """\
usage: graceful-run [OPTIONS] [--] COMMAND [ARGS...]

Run COMMAND as the child of a PID-1 supervisor: forward signals, reap zombies, drain on SIGTERM.

drain (each also a GRACEFUL_* variable):
  --drain-delay S       seconds between SIGTERM (or /shutdown) and forwarding it; readiness fails
                        at once (GRACEFUL_DRAIN_DELAY, default 5)
  --drain-timeout S     seconds after forwarding before SIGKILL (GRACEFUL_DRAIN_TIMEOUT, default 23)
  --drain-signal SIG    the signal that starts the drain (GRACEFUL_DRAIN_SIGNAL, default TERM)
  --cleanup-timeout S   when the child exits, seconds the rest of its group gets between SIGTERM and
                        SIGKILL (GRACEFUL_CLEANUP_TIMEOUT, default 2)
  --leave-survivors     when the child exits, send the rest of its group SIGTERM and exit at once,
                        as dumb-init does (GRACEFUL_LEAVE_SURVIVORS=1)
  --state-dir DIR       where the state board file goes (GRACEFUL_STATE_DIR, default /dev/shm)
  --poll-interval S     how often the board is read for a drain started by /shutdown
                        (GRACEFUL_POLL_INTERVAL, default 0.025)
dumb-init / tini compatible:
  -r, --rewrite S:R     send signal S on as R; R=0 drops S; repeatable (GRACEFUL_REWRITE="S:R,...")
  -c, --single-child    signal only the child, not its process group (GRACEFUL_SINGLE_CHILD=1;
                        dumb-init's DUMB_INIT_SETSID=0 too)
  -s, --subreaper       reap orphans when not PID 1 (the default; so is tini's TINI_SUBREAPER;
                        GRACEFUL_SUBREAPER=0 or --no-subreaper turns it off)
  -g                    signal the child's process group (the default, as tini -g; wins over
                        DUMB_INIT_SETSID=0 and GRACEFUL_SINGLE_CHILD=1)
  -e, --expect-exit N   exit 0 when the child's status is N; repeatable (GRACEFUL_EXPECT_EXIT="N,...")
  -p, --pdeath-signal SIG  get SIG when graceful-run's parent dies (GRACEFUL_PDEATH_SIGNAL)
  -v, --verbose         more output; repeatable (GRACEFUL_VERBOSITY=0..3, default 1)
                        (GRACEFUL_LOG_FORMAT=json: one JSON object per line, as the app's events)
  -h, --help            show this text;  -V, --version  show the version
"""

_VALUED = {
    "-r": "rewrite",
    "--rewrite": "rewrite",
    "-e": "expect_exit",
    "--expect-exit": "expect_exit",
    "-p": "pdeath_signal",
    "--pdeath-signal": "pdeath_signal",
    "--drain-delay": "drain_delay",
    "--drain-timeout": "drain_timeout",
    "--drain-signal": "drain_signal",
    "--cleanup-timeout": "cleanup_timeout",
    "--state-dir": "state_dir",
    "--poll-interval": "poll_interval",
}
_SWITCHES = {
    "--leave-survivors": "leave_survivors",
    "-c": "single_child",
    "--single-child": "single_child",
    "-s": "subreaper",
    "--subreaper": "subreaper",
    "--no-subreaper": "no_subreaper",
    "-g": "group",
    "-v": "verbose",
    "--verbose": "verbose",
    "-h": "help",
    "--help": "help",
    "-V": "version",
    "--version": "version",
}
# graceful._settings.LOG_FORMATS, not imported: that module pulls in dataclasses.
LOG_FORMATS = ("text", "json")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class UsageError(Exception):
    """A bad command line or variable: print the message and the usage, exit 2."""


class Exit(Exception):
    """``--help`` or ``--version``: print ``text``, exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Options:
    """Everything graceful-run is told. Keyword-only, validated on construction, readable repr."""

    __slots__ = (
        "cleanup_timeout",
        "command",
        "drain_delay",
        "drain_signal",
        "drain_timeout",
        "expect_exit",
        "leave_survivors",
        "log_format",
        "pdeath_signal",
        "poll_interval",
        "rewrites",
        "single_child",
        "state_dir",
        "subreaper",
        "verbosity",
    )

    def __init__(
        self,
        *,
        command: list[str],
        drain_delay: float = 5.0,
        drain_timeout: float = 23.0,
        drain_signal: int = signal.SIGTERM,
        cleanup_timeout: float = 2.0,
        leave_survivors: bool = False,
        poll_interval: float = 0.025,
        state_dir: str | None = None,
        rewrites: list[tuple[int, int]] | None = None,
        single_child: bool = False,
        subreaper: bool = True,
        expect_exit: frozenset[int] = frozenset(),
        pdeath_signal: int = 0,
        verbosity: int = 1,
        log_format: str = "text",
    ) -> None:
        if not command:
            raise UsageError("no COMMAND given")
        self.command = command
        self.drain_delay = check_seconds("drain_delay", drain_delay)
        self.drain_timeout = check_seconds("drain_timeout", drain_timeout)
        self.drain_signal = int(drain_signal)
        self.cleanup_timeout = check_seconds("cleanup_timeout", cleanup_timeout)
        self.leave_survivors = leave_survivors
        if not 0.001 <= poll_interval <= 1.0:
            raise PolicyError(f"poll_interval={poll_interval!r} is out of range; allowed: 0.001 to 1 seconds")
        self.poll_interval = poll_interval
        self.state_dir = state_dir
        self.rewrites = list(rewrites or [])
        self.single_child = single_child
        self.subreaper = subreaper
        self.expect_exit = expect_exit
        self.pdeath_signal = pdeath_signal
        if not 0 <= verbosity <= 3:
            raise PolicyError(f"verbosity={verbosity!r} is out of range; allowed: 0 to 3")
        self.verbosity = verbosity
        if log_format not in LOG_FORMATS:
            raise PolicyError(
                f"GRACEFUL_LOG_FORMAT={log_format!r} is not a log format; allowed: text or json"
            )
        self.log_format = log_format

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self.__slots__))
        return f"Options({fields})"


def parse_args(argv: list[str], environ: Mapping[str, str] | None = None) -> Options:
    """Options from the variables of the tools we replace, then ``GRACEFUL_*``, then the command
    line: each later source wins over the earlier ones."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    rewrites: list[tuple[int, int]] = []
    expect: set[int] = set()
    try:
        _read_foreign_env(env, values)
        _read_env(env, values, rewrites, expect)
        command = _read_argv(argv, values, rewrites, expect)
        return Options(command=command, rewrites=rewrites, expect_exit=frozenset(expect), **values)  # type: ignore[arg-type]
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


def _read_foreign_env(env: Mapping[str, str], values: dict[str, object]) -> None:
    """The switches dumb-init and tini read, so an image that sets them keeps its meaning.

    dumb-init.c (parse_command): only the exact value "0" of DUMB_INIT_SETSID turns setsid off,
    which makes it signal the child alone (what -c does); anything else leaves the default.
    tini.c (parse_env): TINI_SUBREAPER set to any value, even empty, means ``-s``.
    """
    if env.get("DUMB_INIT_SETSID") == "0":
        values["single_child"] = True
    if "TINI_SUBREAPER" in env:
        values["subreaper"] = True


def _read_env(
    env: Mapping[str, str], values: dict[str, object], rewrites: list[tuple[int, int]], expect: set[int]
) -> None:
    for field in ("drain_delay", "drain_timeout", "cleanup_timeout", "poll_interval"):
        raw = env.get("GRACEFUL_" + field.upper())
        if raw is not None and raw.strip():
            values[field] = parse_seconds("GRACEFUL_" + field.upper(), raw.strip())
    for field in ("drain_signal", "pdeath_signal"):
        raw = env.get("GRACEFUL_" + field.upper())
        if raw is not None and raw.strip():
            values[field] = signal_number(raw, field="GRACEFUL_" + field.upper())
    for field in ("single_child", "subreaper", "leave_survivors"):
        raw = env.get("GRACEFUL_" + field.upper())
        if raw is not None and raw.strip():
            values[field] = _parse_bool("GRACEFUL_" + field.upper(), raw)
    raw = env.get("GRACEFUL_LOG_FORMAT", "").strip()
    if raw:
        values["log_format"] = raw
    if env.get("GRACEFUL_STATE_DIR"):
        values["state_dir"] = env["GRACEFUL_STATE_DIR"]
    raw = env.get("GRACEFUL_VERBOSITY", "").strip()
    if raw:
        if not raw.isdigit():
            raise PolicyError(f"GRACEFUL_VERBOSITY={raw!r} is not a number; allowed: 0 to 3")
        values["verbosity"] = int(raw)
    for item in _split_list(env.get("GRACEFUL_REWRITE", "")):
        rewrites.append(parse_rewrite(item, field="GRACEFUL_REWRITE"))
    for item in _split_list(env.get("GRACEFUL_EXPECT_EXIT", "")):
        expect.add(parse_exit_code("GRACEFUL_EXPECT_EXIT", item))


def _read_argv(
    argv: list[str], values: dict[str, object], rewrites: list[tuple[int, int]], expect: set[int]
) -> list[str]:
    """Consume options; return the command (everything from the first non-option or after ``--``)."""
    index = 0
    verbose = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        name, has_value, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in _SWITCHES and not has_value:
            verbose += _switch(_SWITCHES[name], values)
        elif name in _VALUED:
            if not has_value:
                index += 1
                if index >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                inline = argv[index]
            _valued(_VALUED[name], name, inline, values, rewrites, expect)
        elif not word.startswith("--") and len(word) > 2:
            # Bundled short options: -vvv, -sv, -rTERM:QUIT, -e143.
            flag, rest = word[:2], word[2:]
            if flag in _VALUED:
                _valued(_VALUED[flag], flag, rest, values, rewrites, expect)
            elif flag in _SWITCHES and all("-" + letter in _SWITCHES for letter in rest):
                for letter in word[1:]:
                    verbose += _switch(_SWITCHES["-" + letter], values)
            else:
                raise UsageError(f"unknown option {word!r}")
        else:
            raise UsageError(f"unknown option {word!r}")
        index += 1
    if verbose:
        values["verbosity"] = min(3, int(values.get("verbosity", 1)) + verbose)  # type: ignore[call-overload]
    return argv[index:]


def _switch(field: str, values: dict[str, object]) -> int:
    """Apply one switch; returns 1 for ``-v`` (counted), else 0."""
    if field == "help":
        raise Exit(USAGE)
    if field == "version":
        from graceful import __version__

        raise Exit(f"graceful-run {__version__}\n")
    if field == "verbose":
        return 1
    if field == "no_subreaper":
        values["subreaper"] = False
    elif field == "group":  # explicit, so it wins over DUMB_INIT_SETSID=0 or GRACEFUL_SINGLE_CHILD=1
        values["single_child"] = False
    else:
        values[field] = True
    return 0


def _valued(
    field: str,
    option: str,
    raw: str,
    values: dict[str, object],
    rewrites: list[tuple[int, int]],
    expect: set[int],
) -> None:
    if field == "rewrite":
        rewrites.append(parse_rewrite(raw, field=option))
    elif field == "expect_exit":
        expect.add(parse_exit_code(option, raw))
    elif field in ("drain_signal", "pdeath_signal"):
        values[field] = signal_number(raw, field=option)
    elif field == "state_dir":
        values[field] = raw
    else:
        values[field] = parse_seconds(option, raw)


def _parse_bool(variable: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise PolicyError(f"{variable}={raw!r} is not a boolean; allowed: 1/0, true/false, yes/no, on/off")


def _split_list(raw: str) -> list[str]:
    return [item for item in raw.replace(",", " ").split() if item]


__all__ = ["MAX_SECONDS", "USAGE", "Exit", "Options", "UsageError", "parse_args"]
