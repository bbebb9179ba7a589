"""Lifecycle events: one log record per transition, figures in ``extra``, text or one JSON object a line.

    log_event(logging.WARNING, "drain_started", "graceful: draining (SIGTERM) ...", reason="SIGTERM")

Every record carries a stable ``event`` name (``EVENTS``) and its figures as attributes of the
record (``logging``'s ``extra``), so a text handler shows the message and a ``JsonFormatter`` shows
everything, for log pipelines (``GRACEFUL_LOG_FORMAT=json``). The supervisor writes the same events
without the logging module (graceful.supervisor: its start-up is a product figure).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from graceful._jsonline import event_line, utc_timestamp
from graceful._settings import LOG_FORMATS

logger = logging.getLogger("graceful")

#: Every event graceful logs, with what it means. docs/observability.md lists their fields.
EVENTS = {
    "phase_changed": "the shared phase moved (from, to)",
    "drain_started": "termination began: readiness fails from now on (reason: signal or route)",
    "listener_closed": "the drain delay is over: listeners closed, in-flight work finishing",
    "drain_finished": "every in-flight request finished, or the drain timeout cut the rest",
    "drain_report": "one summary per process (and per supervisor) of the whole drain",
    "shed_began": "admission control started answering 503 (over the cap, queue full or timed out)",
    "shed_ended": "no request was shed for SHED_QUIET seconds; the count shed in between",
    "check_flipped": "a dependency check's result changed (up to down, down to up, or its first result)",
    "signal_forwarded": "supervisor: the stop signal went to the child",
    "sigkill_sent": "supervisor: the drain timeout is over, SIGKILL sent",
    "child_exited": "supervisor: the child exited (wait status and exit status)",
}


# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def log_event(level: int, event: str, message: str, *, log: logging.Logger = logger, **fields: Any) -> None:
    """Log ``message`` with ``event`` and ``fields`` as extra attributes of the record."""
    if log.isEnabledFor(level):
        log.log(level, message, extra={"event": event, **fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, event, pid, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "event": getattr(record, "event", None),
            "pid": record.process,
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and name not in fields:
                fields[name] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return event_line(fields)


class TextFormatter(logging.Formatter):
    """``INFO:     message``: uvicorn's default look (the level and colon padded to 10 columns)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<10}{super().format(record)}"


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def install_stderr_handler(log_format: str) -> None:
    """Give the ``graceful`` logger a stderr handler at INFO, unless the application configured
    logging itself (a handler on ``graceful`` or on the root logger): then theirs decides.

    Without one, Python's last-resort handler prints WARNING and above as bare messages only, so
    the drain report (INFO) never showed and JSON was impossible.
    """
    if logger.handlers or logging.getLogger().handlers:
        if log_format == "json":
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False


def json_handlers_like(handlers: list[logging.Handler]) -> list[logging.Handler]:
    """For gunicorn: handlers writing where its error log writes, but one JSON object a line.

    Not the error log's own handlers with another formatter: gunicorn's lines would change too.
    """
    made: list[logging.Handler] = []
    for handler in handlers:
        stream = getattr(handler, "stream", None)
        clone: logging.Handler = logging.StreamHandler(stream) if stream is not None else handler
        clone.setFormatter(JsonFormatter())
        clone.setLevel(handler.level)
        made.append(clone)
    return made


__all__ = ["EVENTS", "LOG_FORMATS", "JsonFormatter", "install_stderr_handler", "log_event"]
