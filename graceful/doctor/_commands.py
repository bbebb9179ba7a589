"""What a command line runs: the init in front, a shell, an entry script, the server and its timeouts.

Pure functions over argv lists (and shell text split with :mod:`shlex`); no file is read here.
"""

from __future__ import annotations

import dataclasses
import os
import shlex

#: PID-1 programs that forward signals and reap zombies (``docker-init`` is ``docker run --init``).
INITS = frozenset({"tini", "tini-static", "dumb-init", "graceful-run", "docker-init", "catatonit"})
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "busybox"})
_PYTHONS = ("python", "python3", "pypy", "pypy3")
# Options of the inits that take a value (tini -p/-e, dumb-init -r, graceful-run's own).
_INIT_VALUED = frozenset(
    {
        "-p", "-e", "-r", "--rewrite", "--expect-exit", "--pdeath-signal", "--drain-delay",
        "--drain-timeout", "--drain-signal", "--cleanup-timeout", "--state-dir", "--poll-interval",
    }
)  # fmt: skip
#: Programs that exec their arguments (so they are transparent): privilege droppers and tracers;
#: the figure is how many arguments of their own come first (gosu USER, su-exec USER).
_EXEC_WRAPPERS = {"gosu": 1, "su-exec": 1, "ddtrace-run": 0, "opentelemetry-instrument": 0, "chpst": 0}
_GRACEFUL_FLAGS = {"--drain-delay": "GRACEFUL_DRAIN_DELAY", "--drain-timeout": "GRACEFUL_DRAIN_TIMEOUT"}
_SEPARATORS = frozenset({"&&", "||", ";", "|", "&", ";;", "\n"})


@dataclasses.dataclass(frozen=True)
class Server:
    """A web server a command starts, with the timeouts its own flags state (None: not given)."""

    kind: str  # uvicorn | gunicorn | hypercorn
    #: graceful's drain runs inside the server itself: python -m graceful.uvicorn, graceful.gunicorn workers.
    graceful: bool
    keep_alive: float | None
    graceful_timeout: float | None
    worker_class: str | None = None
    config: str | None = None
    #: GRACEFUL_* values given as flags (graceful.uvicorn's --drain-delay/--drain-timeout).
    overrides: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Command:
    """What one argv runs."""

    argv: tuple[str, ...]
    init: str | None = None
    #: The init signals the child's whole process group (graceful-run, dumb-init, ``tini -g``), so a
    #: shell in front of the server does not stop SIGTERM.
    init_signals_group: bool = False
    #: graceful-run's --drain-* flags as GRACEFUL_* variables, and its --drain-signal.
    overrides: tuple[tuple[str, str], ...] = ()
    drain_signal: str | None = None
    #: The text of ``sh -c TEXT`` (a Dockerfile's shell form included).
    shell_text: str | None = None
    #: An entry script the command runs (``./start.sh``, ``sh /app/start.sh``).
    script: str | None = None
    server: Server | None = None
    #: In shell text: the server is started with ``exec`` (or is the whole text, which sh execs too).
    execs: bool = False
    #: In shell text: something runs in the background (``&``).
    spawns: bool = False
    #: The shell text ends in ``exec "$@"``: it runs the CMD (docker-entrypoint.sh style).
    execs_args: bool = False


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def option(args: list[str] | tuple[str, ...], *names: str) -> str | None:
    """The value of the last ``--name V`` / ``--name=V`` / ``-kV`` among ``args``."""
    found: str | None = None
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                found = args[index + 1]
            elif name.startswith("--") and arg.startswith(name + "="):
                found = arg[len(name) + 1 :]
            elif not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                found = arg[len(name) :]
    return found


def _server(argv: list[str]) -> Server | None:
    """The server ``argv`` starts, or None."""
    if not argv:
        return None
    name = os.path.basename(argv[0])
    args = argv[1:]
    if name.startswith(_PYTHONS) and len(args) >= 2 and args[0] == "-m":
        name, args = args[1], args[2:]
    if name == "fastapi" and args[:1] == ["run"]:
        name, args = "uvicorn", args[1:]
    if name in ("graceful.uvicorn", "graceful-uvicorn"):
        overrides = tuple(
            (variable, value) for flag, variable in _GRACEFUL_FLAGS.items() if (value := option(args, flag))
        )
        return Server(
            kind="uvicorn",
            graceful=True,
            keep_alive=_number(option(args, "--timeout-keep-alive")),
            graceful_timeout=_number(option(args, "--timeout-graceful-shutdown")),
            overrides=overrides,
        )
    if name == "uvicorn":
        return Server(
            kind="uvicorn",
            graceful=False,
            keep_alive=_number(option(args, "--timeout-keep-alive")),
            graceful_timeout=_number(option(args, "--timeout-graceful-shutdown")),
        )
    if name == "gunicorn":
        worker_class = option(args, "-k", "--worker-class")
        return Server(
            kind="gunicorn",
            graceful=bool(worker_class and worker_class.startswith("graceful.")),
            keep_alive=_number(option(args, "--keep-alive")),
            graceful_timeout=_number(option(args, "--graceful-timeout")),
            worker_class=worker_class,
            config=option(args, "-c", "--config"),
        )
    if name == "hypercorn":
        return Server(
            kind="hypercorn",
            graceful=False,
            keep_alive=_number(option(args, "--keep-alive")),
            graceful_timeout=_number(option(args, "--graceful-timeout")),
        )
    return None


def split_shell(text: str) -> list[tuple[list[str], str]]:
    """Shell text as simple commands, each with the separator after it (``&`` marks a background job).

    shlex with ``punctuation_chars`` keeps ``&&``, ``;``, ``|`` and ``&`` as their own tokens; a
    text shlex cannot split (an open quote) gives no command at all.
    """
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    commands: list[tuple[list[str], str]] = []
    current: list[str] = []
    for token in tokens:
        if token in _SEPARATORS:
            if current:
                commands.append((current, token))
            current = []
        else:
            current.append(token)
    if current:
        commands.append((current, ""))
    return commands


def _strip_words(words: list[str]) -> tuple[list[str], bool]:
    """Drop ``exec`` and leading ``VAR=value`` assignments; tell whether ``exec`` was there."""
    execs = False
    index = 0
    while index < len(words):
        word = words[index]
        if word == "exec":
            execs = True
        elif word == "env" or ("=" in word and not word.startswith(("-", "=")) and index < len(words) - 1):
            pass
        else:
            break
        index += 1
    return words[index:], execs


def analyse_shell(text: str, shell: str = "sh") -> Command:
    """What ``SHELL -c TEXT`` runs: the server it starts, whether it is exec'd, background jobs.

    Debian's dash (0.5.12, the ``/bin/sh`` of the python images) forks every command, even a lone
    one, and stays the parent: only an explicit ``exec`` counts. bash (5.2 measured) execs the last
    simple command of a ``-c`` text itself (``cd /app && uvicorn app`` leaves no bash behind), but
    not one in a pipeline or followed by anything.
    """
    commands = split_shell(text)
    server: Server | None = None
    execs = False
    execs_args = False
    spawns = any(separator == "&" for _, separator in commands)
    for index, (words, separator) in enumerate(commands):
        words, has_exec = _strip_words(words)
        if not words:
            continue
        found = _server(words) or analyse(words).server
        if found is not None:
            server = found
            last = index == len(commands) - 1 and separator == ""
            piped = index > 0 and commands[index - 1][1] == "|"
            execs = has_exec or (shell == "bash" and last and not piped)
        if has_exec and words[0] in ('"$@"', "$@"):
            execs_args = True
    return Command(
        argv=(shell, "-c", text),
        shell_text=text,
        server=server,
        execs=execs,
        spawns=spawns,
        execs_args=execs_args,
    )


def _skip_init_options(
    name: str, args: list[str]
) -> tuple[list[str], tuple[tuple[str, str], ...], str | None]:
    overrides: list[tuple[str, str]] = []
    drain_signal: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-"):
            break
        flag, has_value, value = arg.partition("=")
        if flag in _INIT_VALUED and not has_value:
            index += 1
            value = args[index] if index < len(args) else ""
        if name == "graceful-run" and flag in _GRACEFUL_FLAGS:
            overrides.append((_GRACEFUL_FLAGS[flag], value))
        if name == "graceful-run" and flag == "--drain-signal":
            drain_signal = value
        index += 1
    return args[index:], tuple(overrides), drain_signal


def unwrap(words: list[str]) -> tuple[list[str], bool]:
    """The program a simple command runs, past ``exec``, assignments and exec-ing wrappers (gosu)."""
    words, execs = _strip_words(words)
    while words:
        name = os.path.basename(words[0])
        if name in _EXEC_WRAPPERS:
            words = words[1 + _EXEC_WRAPPERS[name] :]
            while name == "chpst" and words and words[0].startswith("-"):
                words = words[2:] if words[0] in ("-u", "-U", "-e", "-n", "-l", "-L") else words[1:]
        elif name == "newrelic-admin" and words[1:2] == ["run-program"]:
            words = words[2:]
        else:
            break
    return words, execs


def analyse(argv: list[str] | tuple[str, ...]) -> Command:
    """What an exec-form argv runs (init, shell, script, server)."""
    words, _ = unwrap(list(argv))
    if not words:
        return Command(argv=tuple(argv))
    name = os.path.basename(words[0])
    if name in INITS:
        rest, overrides, drain_signal = _skip_init_options(name, words[1:])
        options = words[1 : len(words) - len(rest)]
        if name in ("graceful-run", "dumb-init"):
            group = not any(flag in options for flag in ("-c", "--single-child"))
        else:  # tini (and docker-init, which is tini) signal only the child unless -g
            group = "-g" in options
        inner = analyse(rest)
        return dataclasses.replace(
            inner,
            argv=tuple(argv),
            init=name,
            init_signals_group=group,
            overrides=overrides + inner.overrides,
            drain_signal=drain_signal,
        )
    if name in SHELLS:
        args = words[1:]
        flags = [arg for arg in args if arg.startswith("-")]
        if any("c" in flag.lstrip("-") for flag in flags if not flag.startswith("--")):
            position = next(i for i, arg in enumerate(args) if arg.startswith("-") and "c" in arg)
            text = args[position + 1] if position + 1 < len(args) else ""
            return dataclasses.replace(analyse_shell(text, name), argv=tuple(argv))
        scripts = [arg for arg in args if not arg.startswith("-")]
        return Command(argv=tuple(argv), script=scripts[0] if scripts else None)
    server = _server(words)
    if server is not None:
        return Command(argv=tuple(argv), server=server)
    if name.endswith(".sh") or (words[0].startswith(("./", "/")) and "." in name):
        return Command(argv=tuple(argv), script=words[0])
    return Command(argv=tuple(argv))


def kill_signal(words: list[str]) -> str | None:
    """The signal a ``kill``/``pkill``/``killall`` among ``words`` sends (TERM unless told), or None."""
    for index, word in enumerate(words):
        if os.path.basename(word) not in ("kill", "pkill", "killall"):
            continue
        rest = words[index + 1 :]
        for position, arg in enumerate(rest):
            if arg in ("-s", "--signal") and position + 1 < len(rest):
                return rest[position + 1]
            if arg.startswith("--signal="):
                return arg.partition("=")[2]
            name = arg[1:]
            if arg.startswith("-") and (name.isdigit() or name.isupper()):
                return name  # kill -9, kill -QUIT, pkill -TERM (pkill's own flags are lower case)
            if not arg.startswith("-"):
                break
        return "TERM"
    return None
