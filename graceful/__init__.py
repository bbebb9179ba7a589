"""graceful: rolling deployments of Python web services that lose nothing.

The core (this package's top level) imports only the standard library. Adapters:
``graceful.asgi`` (middleware), ``graceful.uvicorn`` (single-process server integration),
``graceful.supervisor`` (``graceful-run``, the PID-1 supervisor).

The public names are loaded lazily (PEP 562): ``import graceful._board`` runs this file first, and
the supervisor must not pay for asyncio and logging (pulled in by the lifecycle) at every start.
"""

from __future__ import annotations

import importlib

# Not ``typing.TYPE_CHECKING``: importing typing alone costs the supervisor ~5 ms at every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from graceful._board import BoardError, StateBoard
    from graceful._lifecycle import STATE_ENV, Lifecycle, get_lifecycle, set_lifecycle
    from graceful._phase import ALLOWED_TRANSITIONS, Phase
    from graceful._settings import Settings, SettingsError

__all__ = [
    "ALLOWED_TRANSITIONS",
    "STATE_ENV",
    "BoardError",
    "Lifecycle",
    "Phase",
    "Settings",
    "SettingsError",
    "StateBoard",
    "get_lifecycle",
    "set_lifecycle",
]
__version__ = "0.1.0"

_HOMES = {
    "ALLOWED_TRANSITIONS": "graceful._phase",
    "Phase": "graceful._phase",
    "BoardError": "graceful._board",
    "StateBoard": "graceful._board",
    "STATE_ENV": "graceful._lifecycle",
    "Lifecycle": "graceful._lifecycle",
    "get_lifecycle": "graceful._lifecycle",
    "set_lifecycle": "graceful._lifecycle",
    "Settings": "graceful._settings",
    "SettingsError": "graceful._settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'graceful' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
