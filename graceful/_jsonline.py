"""One JSON object per line, the shape every graceful event takes (imports only json and time).

Shared by graceful._events (the logging side) and the supervisor, which may not import logging.
"""

from __future__ import annotations

import json
import time
from typing import Any


def utc_timestamp(seconds: float) -> str:
    """``2026-12-02T15:30:40.123Z``: ISO 8601 in UTC, milliseconds."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def event_line(fields: dict[str, Any]) -> str:
    """One JSON object on one line; values JSON cannot hold become their ``repr``."""
    return json.dumps(fields, default=repr, separators=(", ", ": "))
