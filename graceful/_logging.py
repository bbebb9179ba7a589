"""Keep probe requests out of the server's access log: a kubelet probing every few seconds drowns it."""

from __future__ import annotations

import logging

from graceful._settings import Settings

# uvicorn logs each request on "uvicorn.access" with args (client, method, path, http version, status);
# gunicorn on "gunicorn.access" with a dict of atoms (its "U" atom is the path).
ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")


class ProbeLogFilter(logging.Filter):
    """Drop access-log records whose request path is a probe endpoint."""

    def __init__(self, paths: frozenset[str]) -> None:
        super().__init__("graceful.probes")
        self.paths = paths

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3:
            path = args[2]
        elif isinstance(args, dict):
            path = args.get("U")
        else:
            return True
        if not isinstance(path, str):
            return True
        return path.partition("?")[0] not in self.paths


def install_probe_log_filter(settings: Settings) -> None:
    """Attach one probe filter per access logger (replacing an earlier one: settings may change)."""
    paths = frozenset({settings.health_path, settings.live_path, settings.ready_path, settings.startup_path})
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, ProbeLogFilter)]:
            logger.removeFilter(existing)
        logger.addFilter(ProbeLogFilter(paths))
