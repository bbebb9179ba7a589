"""graceful: rolling deployments of Python web services that lose nothing.

The core (this package's top level) imports only the standard library. Adapters:
``graceful.asgi`` (middleware), ``graceful.uvicorn`` (single-process server integration).
"""

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
