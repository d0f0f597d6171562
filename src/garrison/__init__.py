"""Garrison: defends a Linux host and the Python web apps on it from the inside.

``garrison.on("scan", handler)`` subscribes to events on the default bus, which every
:class:`Garrison` engine created without its own bus publishes to.
"""

from __future__ import annotations

from typing import Any

from garrison.bus import EventBus, Handler
from garrison.config import GarrisonConfig, load_config
from garrison.engine import Component, Garrison
from garrison.events import Event, Severity

__version__ = "0.1.0"

default_bus = EventBus()


def on(name: str, handler: Handler | None = None) -> Any:
    """Subscribe ``handler`` to events called ``name`` on the default bus."""
    return default_bus.on(name, handler)


__all__ = [
    "Component",
    "Event",
    "EventBus",
    "Garrison",
    "GarrisonConfig",
    "Severity",
    "__version__",
    "default_bus",
    "load_config",
    "on",
]
