"""Garrison: defends a Linux host and the Python web apps on it from the inside.

``garrison.on("scan", handler)`` subscribes to events on the default bus, which every
:class:`Garrison` engine created without its own bus publishes to.
"""

from __future__ import annotations

from typing import Any

from garrison import _native

_native.install()  # before anything imports a compiled module: the build, or the source

from garrison.bus import EventBus, Handler  # noqa: E402
from garrison.config import GarrisonConfig, load_config  # noqa: E402
from garrison.engine import Component, Garrison  # noqa: E402
from garrison.events import Event, Severity  # noqa: E402

__version__ = "0.1.0"

default_bus = EventBus()


def on(name: str, handler: Handler | None = None) -> Any:
    """Subscribe ``handler`` to events called ``name`` on the default bus."""
    return default_bus.on(name, handler)


# Response verbs (garrison.respond): act on the running engine's service, or on one built
# from garrison.toml when no engine installed one. Imported lazily: they pull in SQLite etc.
def block(ip: str, duration: float | str | None = None) -> Any:
    """Block ``ip`` for ``duration`` (seconds or ``"1h"``; default ``firewall.block_duration``)."""
    from garrison import respond

    return respond.block(ip, duration)


def unblock(ip: str) -> bool:
    """Lift the block on ``ip`` at once; True if it was blocked."""
    from garrison import respond

    return respond.unblock(ip)


def investigate(ip: str) -> dict[str, Any]:
    """Everything Garrison knows about ``ip`` (reputation, scans, alerts, kill chain, ...)."""
    from garrison import respond

    return respond.investigate(ip)


def collect_evidence(ip: str) -> dict[str, Any]:
    """An evidence bundle about ``ip``: metadata, summary and the raw evidence."""
    from garrison import respond

    return respond.collect_evidence(ip)


__all__ = [
    "Component",
    "Event",
    "EventBus",
    "Garrison",
    "GarrisonConfig",
    "Severity",
    "__version__",
    "block",
    "collect_evidence",
    "default_bus",
    "investigate",
    "load_config",
    "on",
    "unblock",
]
