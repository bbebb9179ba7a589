"""gunicorn worker classes with the drain: ``gunicorn -k graceful.gunicorn.<Class> app:app``.

    UvicornWorker        ASGI on uvicorn (one event loop per worker process)
    ThreadWorker         WSGI, gunicorn's gthread worker (``--threads N``)
    SingleThreadWorker   WSGI, gunicorn's sync worker (one request at a time per process)

(Not called ``SyncWorker``: gunicorn silently replaces any worker class path ending in ``SyncWorker``
by its own gthread worker when ``--threads`` > 1, gunicorn/config.py ``worker_class``, which would
drop the drain without a word.)

Every class, from its ``check_config`` (which gunicorn runs in the arbiter before any fork):
  1. makes the shared state board (or attaches the supervisor's, ``GRACEFUL_STATE``) and puts the
     drain clock in the arbiter (graceful/_gunicorn_master.py): on SIGTERM readiness fails in every
     worker at once, everything keeps serving for the drain delay, then gunicorn's normal graceful
     stop runs, bounded by ``graceful_timeout`` (``drain_timeout`` unless you set it);
  2. in each worker, wraps the app in the graceful middleware unless it already is.
Idle keep-alive connections stay open for graceful's ``keep_alive`` (75 s) rather than gunicorn's
2 s, unless ``--keep-alive`` is set (see ``Settings.keep_alive``). A worker's own exit (HUP reload,
``max_requests``, TTOU) never moves the instance's phase: only the master does. After the delay
each worker closes its copy of the listeners at once, so no connection is left queued in the
backlog to be reset when the last copy closes (gunicorn #3397).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

# gunicorn ships no type information (no py.typed): its classes are Any to mypy.
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from gunicorn.workers.base import Worker  # type: ignore[import-untyped]
from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker  # type: ignore[import-untyped]
from gunicorn.workers.sync import SyncWorker as _SyncWorker  # type: ignore[import-untyped]

from graceful._gunicorn_master import prepare_master, signal_name
from graceful._lifecycle import get_lifecycle

__all__ = ["SingleThreadWorker", "ThreadWorker", "UvicornWorker"]


def map_keep_alive(cfg: Any, keep_alive: float) -> None:
    """graceful's ``keep_alive`` as gunicorn's ``keepalive``, unless the user set gunicorn's.

    "Set" is told as gunicorn tells nothing else: a value other than gunicorn's default (2 s), as
    for ``graceful_timeout``. gunicorn takes whole seconds: rounded up, never below the setting.
    Runs in the arbiter before any fork, and again on every HUP reload (which rebuilds the config).
    """
    setting = cfg.settings["keepalive"]
    if setting.value == setting.default:
        cfg.set("keepalive", math.ceil(keep_alive))


def _wrap_wsgi(app: Any) -> Any:
    """The app wrapped in the middleware unless it is already, started (this is the worker)."""
    from graceful.wsgi import GracefulMiddleware

    # Not only the app's own chain of wrappers: one a walk cannot see (a closure, a wrapper with
    # another attribute name) would otherwise get a second middleware in front of it, without the
    # user's checks, opening the gate at once and counting every request twice.
    lifecycle = get_lifecycle()
    middleware = lifecycle.middleware_for(app, GracefulMiddleware)
    if middleware is None:
        app = middleware = GracefulMiddleware(app, lifecycle=lifecycle)
    # The worker serves from now on: open the startup gate (or start its checks) without waiting
    # for a first request.
    middleware.server_started()
    return app


def _wrap_asgi(app: Any) -> Any:
    """The ASGI app wrapped in the middleware unless it is already (found as for WSGI, above)."""
    from graceful.asgi import GracefulMiddleware

    lifecycle = get_lifecycle()
    if lifecycle.middleware_for(app, GracefulMiddleware) is None:
        app = GracefulMiddleware(app, lifecycle=lifecycle)
    return app  # uvicorn's lifespan startup (or the first request) starts it


class _WSGIWorkerMixin:
    """What both WSGI worker classes add to gunicorn's: the master hook and the wrapped app."""

    wsgi: Any
    sockets: list[Any]
    alive: bool

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        map_keep_alive(cfg, prepare_master(cfg, log).settings.keep_alive)
        parent = super()
        if hasattr(parent, "check_config"):
            parent.check_config(cfg, log)

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        self.wsgi = _wrap_wsgi(self.wsgi)

    def close_listeners(self) -> None:
        """Close this worker's copy of the listeners (gunicorn's socket wrappers close once)."""
        for listener in self.sockets:
            with contextlib.suppress(OSError):
                listener.close()
        get_lifecycle().note_listener_closed()  # the drain report's moment (a no-op unless draining)

    def run(self) -> None:
        # gunicorn's loop returns once in-flight work is done or graceful_timeout is over: then
        # this worker's drain report (no-ops when the instance is not draining, as on a HUP reload).
        try:
            super().run()  # type: ignore[misc]
        finally:
            lifecycle = get_lifecycle()
            lifecycle.note_listener_closed()
            lifecycle.note_drain_finished(cut=lifecycle.local_in_flight)


class ThreadWorker(_WSGIWorkerMixin, _GThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with the drain (``-k graceful.gunicorn.ThreadWorker --threads N``)."""

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # The stop began: stock gthread only unregisters the listeners and closes them after
            # the last in-flight request; until then new connections queue in the backlog and are
            # reset at the end (gunicorn #3397). Refuse them now instead: the drain delay is over,
            # the load balancer has stopped sending here.
            self.close_listeners()

    def handle_quit(self, sig: int, frame: Any) -> None:
        # Stock gthread raises SystemExit here, but interpreter exit then joins the thread pool's
        # threads (concurrent.futures), so one long request holds the "quick" exit until the
        # master's SIGKILL at graceful_timeout. QUIT/INT mean "stop now": cut in-flight work.
        self.alive = False
        self.cfg.worker_int(self)
        self.log.info("Worker exiting at once on %s (pid: %s)", signal_name(sig), self.pid)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class SingleThreadWorker(_WSGIWorkerMixin, _SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker with the drain: one request at a time per process."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.threads > 1:
            log.warning("graceful: SingleThreadWorker ignores --threads; use graceful.gunicorn.ThreadWorker")


# -- ASGI ------------------------------------------------------------------------------------------


def _uvicorn_server_class() -> type[Any]:
    import uvicorn

    from graceful.uvicorn import linger, track_drain, watch_drain

    class WorkerServer(uvicorn.Server):
        """uvicorn's Server as a gunicorn worker runs it: signals belong to the worker class."""

        #: The master's pid, as the worker was forked (gunicorn's ``Worker.ppid``).
        master_pid = 0

        async def on_tick(self, counter: int) -> bool:
            # gunicorn's own workers stop when their master is gone (sync.py and gthread.py
            # ``is_parent_alive``): a SIGKILLed master would otherwise leave this worker serving,
            # orphaned, forever (uvicorn's loop never looks). Once a second (ticks are 0.1 s).
            if (
                counter % 10 == 0
                and self.master_pid  # 0: not run by the worker class (nothing to compare with)
                and not self.should_exit
                and os.getppid() != self.master_pid
            ):
                logging.getLogger("uvicorn.error").warning(
                    "Parent changed, shutting down: pid %s (master %s gone)", os.getpid(), self.master_pid
                )
                self.should_exit = True
            return await super().on_tick(counter)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn would install handle_exit for SIGINT/SIGTERM and re-raise the signal after
            # the stop (exit status 143); the worker installs its own handlers instead.
            yield

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            if not self.force_exit:
                # Every worker exit, also when the instance is not draining (HUP reload,
                # max_requests, TTOU): linger marks this process's responses Connection: close
                # (the instance's phase is left alone: only the master moves it).
                await linger(self, get_lifecycle())
                await watch_drain(self, get_lifecycle(), super().shutdown(sockets))
                return
            await super().shutdown(sockets)

        async def serve(self, sockets: list[Any] | None = None) -> None:
            track_drain(self, get_lifecycle())  # this worker's drain report tells new from old connections
            await super().serve(sockets)

    return WorkerServer


class UvicornWorker(Worker):  # type: ignore[misc]
    """ASGI on uvicorn, as ``uvicorn-worker``'s UvicornWorker does, with the drain.

    Built on gunicorn's base ``Worker`` and ``uvicorn.Server`` directly rather than on
    ``uvicorn.workers`` (deprecated in uvicorn) or the ``uvicorn-worker`` package (an extra
    dependency whose signal handling is the part we must change anyway): the worker owns its
    signals. SIGTERM (from the master, once the drain delay is over) stops gracefully; SIGQUIT and
    SIGINT stop quickly. uvicorn-worker lets SIGQUIT only set ``alive = False``, which uvicorn never
    reads, so INT/QUIT end in SIGKILL after graceful_timeout (uvicorn-worker #2).
    """

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import uvicorn

        for name, source in (("uvicorn.error", self.log.error_log), ("uvicorn.access", self.log.access_log)):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers = source.handlers
            uvicorn_logger.setLevel(source.level)
            uvicorn_logger.propagate = False
        options: dict[str, Any] = {
            "app": None,
            "log_config": None,
            "timeout_keep_alive": self.cfg.keepalive,
            "timeout_notify": self.timeout,
            "callback_notify": self.callback_notify,
            "limit_max_requests": self.max_requests,
            "forwarded_allow_ips": self.cfg.forwarded_allow_ips,
            # gunicorn's master SIGKILLs at graceful_timeout: cut what is left just before that.
            "timeout_graceful_shutdown": max(0.0, float(self.cfg.graceful_timeout) - 0.5),
        }
        if self.cfg.is_ssl:
            ssl = self.cfg.ssl_options
            options.update(
                ssl_keyfile=ssl.get("keyfile"),
                ssl_certfile=ssl.get("certfile"),
                ssl_keyfile_password=ssl.get("password"),
                ssl_version=ssl.get("ssl_version"),
                ssl_cert_reqs=ssl.get("cert_reqs"),
                ssl_ca_certs=ssl.get("ca_certs"),
                ssl_ciphers=ssl.get("ciphers"),
            )
        if self.cfg.settings["backlog"].value:
            options["backlog"] = self.cfg.settings["backlog"].value
        options.update(self.CONFIG_KWARGS)
        self.config = uvicorn.Config(**options)
        self.server: Any = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        map_keep_alive(cfg, prepare_master(cfg, log).settings.keep_alive)

    def init_signals(self) -> None:
        # Default dispositions until the loop runs (see _serve); keep gunicorn's SIGUSR1 (reopen
        # logs) without interrupting system calls.
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def _install_loop_signals(self, server: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop, server, False)
        loop.add_signal_handler(signal.SIGQUIT, self._stop, server, True)
        loop.add_signal_handler(signal.SIGINT, self._stop, server, True)
        loop.add_signal_handler(signal.SIGABRT, self.handle_abort, signal.SIGABRT, None)

    def _stop(self, server: Any, quick: bool) -> None:
        # A worker's own stop never moves the instance's phase: the master (or the supervisor)
        # owns it, and a HUP reload or a TTOU must not fail readiness for the whole instance.
        self.alive = False
        server.should_exit = True
        if quick:
            server.force_exit = True

    async def _serve(self) -> None:
        self.config.app = _wrap_asgi(self.wsgi)  # gunicorn's name for the loaded app, ASGI here
        server = self.server = _uvicorn_server_class()(config=self.config)
        server.master_pid = self.ppid
        self._install_loop_signals(server)
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def run(self) -> None:
        from uvicorn._compat import asyncio_run

        asyncio_run(self._serve(), loop_factory=self.config.get_loop_factory())

    async def callback_notify(self) -> None:
        self.notify()
