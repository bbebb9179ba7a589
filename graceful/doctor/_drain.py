"""The drain's numbers for one container: pure functions of its command, environment and gunicorn config.

Defaults are the servers' own: uvicorn keeps idle connections 5 s and waits for in-flight requests
without bound unless ``--timeout-graceful-shutdown``; gunicorn keeps them 2 s and gives workers
``graceful_timeout`` 30 s; hypercorn 5 s and 3 s. graceful's come from :class:`graceful._settings.Settings`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from graceful._settings import Settings, SettingsError
from graceful.doctor._commands import Command, Server
from graceful.doctor._gunicorn_conf import GunicornConf

KEEP_ALIVE_DEFAULTS = {"uvicorn": 5.0, "gunicorn": 2.0, "hypercorn": 5.0}
GRACEFUL_TIMEOUT_DEFAULTS: dict[str, float | None] = {"uvicorn": None, "gunicorn": 30.0, "hypercorn": 3.0}
#: Seconds graceful's sizing rule leaves between the drain's end and the kubelet's SIGKILL.
MARGIN = 2.0


def with_config(server: Server, conf: GunicornConf | None) -> Server:
    """A gunicorn server's flags completed by its config file (flags win, as in gunicorn)."""
    if conf is None or server.kind != "gunicorn":
        return server
    worker_class = server.worker_class or conf.values.get("worker_class")
    worker_class = worker_class if isinstance(worker_class, str) else None
    return dataclasses.replace(
        server,
        keep_alive=server.keep_alive if server.keep_alive is not None else conf.number("keepalive"),
        graceful_timeout=(
            server.graceful_timeout
            if server.graceful_timeout is not None
            else conf.number("graceful_timeout")
        ),
        worker_class=worker_class,
        graceful=bool(worker_class and worker_class.startswith("graceful.")),
    )


def uses_graceful(command: Command, env: Mapping[str, str]) -> bool:
    """graceful runs the drain: graceful-run, a graceful server, or GRACEFUL_* set (the middleware)."""
    if command.init == "graceful-run" or (command.server is not None and command.server.graceful):
        return True
    return any(name.startswith("GRACEFUL_") for name in env)


def settings(command: Command, env: Mapping[str, str]) -> Settings:
    """graceful's settings as the container would get them; a bad value falls back to the defaults."""
    environ = {name: value for name, value in env.items() if name.startswith("GRACEFUL_")}
    environ.update(command.overrides)
    if command.server is not None:
        environ.update(command.server.overrides)
    try:
        return Settings.from_env(environ)
    except SettingsError:
        return Settings()


def keep_alive(command: Command, env: Mapping[str, str]) -> tuple[float, str] | None:
    """Seconds the server keeps an idle connection, and where the figure comes from."""
    server = command.server
    if server is None:
        return None
    if server.keep_alive is not None:
        return server.keep_alive, "its keep-alive setting"
    if server.graceful:
        value = settings(command, env).keep_alive
        value = math.ceil(value) if server.kind == "gunicorn" else value
        return float(value), "GRACEFUL_KEEP_ALIVE (default 75)"
    return KEEP_ALIVE_DEFAULTS[server.kind], f"{server.kind}'s default"


def needed_grace(command: Command, env: Mapping[str, str], pre_stop: float) -> tuple[float, str] | None:
    """Seconds from the start of termination to the end of the drain, with the sum written out."""
    if uses_graceful(command, env):
        config = settings(command, env)
        total = pre_stop + config.drain_delay + config.drain_timeout + MARGIN
        sleep = f"preStop sleep {pre_stop:g} + " if pre_stop else ""
        return total, (
            f"{sleep}drain_delay {config.drain_delay:g} + drain_timeout {config.drain_timeout:g} + {MARGIN:g}"
        )
    server = command.server
    if server is None:
        return None
    timeout = server.graceful_timeout
    if timeout is None:
        timeout = GRACEFUL_TIMEOUT_DEFAULTS[server.kind]
    if timeout is None:
        return None  # uvicorn waits for in-flight requests without a bound: no figure to compare
    flag = {"uvicorn": "--timeout-graceful-shutdown", "gunicorn": "graceful_timeout"}.get(
        server.kind, "--graceful-timeout"
    )
    return pre_stop + timeout, f"preStop sleep {pre_stop:g} + {server.kind} {flag} {timeout:g}"


_SIGNALS = {"9": "KILL", "15": "TERM", "2": "INT", "3": "QUIT", "1": "HUP", "10": "USR1", "12": "USR2"}


def signal_name(text: str) -> str:
    """``SIGTERM``, ``TERM``, ``15`` -> ``TERM``."""
    name = text.strip().upper()
    name = name[3:] if name.startswith("SIG") else name
    return _SIGNALS.get(name, name)


def stop_signal_problem(command: Command, signal: str) -> str | None:
    """Why stopping with ``signal`` skips the drain, or None when it starts it."""
    name = signal_name(signal)
    if name == "KILL":
        return "SIGKILL cannot be caught: no drain, in-flight requests are cut"
    if command.init == "graceful-run":
        drain = signal_name(command.drain_signal or "TERM")
        if name != drain:
            return f"graceful-run drains on SIG{drain}; SIG{name} is forwarded to the server as is"
        return None
    server = command.server
    if server is None:
        return None
    allowed = {"uvicorn": {"TERM", "INT"}, "gunicorn": {"TERM"}, "hypercorn": {"TERM", "INT"}}[server.kind]
    if name not in allowed:
        what = {"gunicorn": "a fast shutdown that cuts in-flight requests"}.get(server.kind, "not a shutdown")
        return f"{server.kind} drains on SIGTERM; SIG{name} is {what}"
    return None
