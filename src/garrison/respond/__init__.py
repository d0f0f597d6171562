"""Responders: alerts, firewall, webhooks — and :func:`install`, which wires them to an engine.

``install(engine)`` builds a :class:`~garrison.respond.service.ResponseService` from
``engine.config`` (reputation, kill chain and campaigns, the alert pipeline with its webhooks,
the firewall), subscribes it to every event, registers it as ``engine.services["response"]`` and
adds a component that sweeps expired blocks while ``garrison run`` serves. The module-level
:func:`block`, :func:`unblock`, :func:`investigate` and :func:`collect_evidence` act on the most
recently installed service, or on one built from ``garrison.toml`` when none is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from garrison.engine import Garrison
    from garrison.respond.firewall import BlockRecord
    from garrison.respond.service import ResponseService

log = logging.getLogger("garrison.respond")

_current: ResponseService | None = None


class ResponseComponent:
    """Sweeps expired blocks every ``interval`` seconds while the engine runs."""

    name = "response"

    def __init__(self, service: ResponseService, interval: float = 1.0) -> None:
        self.service = service
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, engine: Garrison) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.service.firewall.sweep(self.service.clock())
            except Exception:
                log.exception("expiry sweep failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.service.alerts.join, 5.0)


def install(engine: Garrison, *, prefix: Sequence[str] = ()) -> ResponseService:
    """Wire reputation, kill chain, alerts and the firewall into ``engine``.

    ``prefix`` wraps firewall commands (tests pass ``["ip", "netns", "exec", NS]``)."""
    from garrison.respond.service import ResponseService

    global _current
    service = ResponseService.from_config(engine.config, emit=engine.emit, prefix=prefix)
    engine.on("*", service.handle)
    engine.services["response"] = service
    engine.add_component(ResponseComponent(service))
    service.start()
    _current = service
    return service


def current() -> ResponseService:
    """The installed service, or one built from the configuration file (CLI, scripts)."""
    global _current
    if _current is None:
        from garrison.config import load_config
        from garrison.respond.service import ResponseService

        # The firewall is set up on the first block/unblock, not for a mere investigate.
        _current = ResponseService.from_config(load_config())
    return _current


def block(ip: str, duration: float | str | None = None) -> BlockRecord:
    """Block ``ip`` for ``duration`` (seconds or ``"1h"``; default ``firewall.block_duration``)."""
    return current().block(ip, duration)


def unblock(ip: str) -> bool:
    """Lift the block on ``ip`` at once; True if it was blocked."""
    return current().unblock(ip)


def investigate(ip: str) -> dict[str, Any]:
    """Everything Garrison knows about ``ip``."""
    return current().investigate(ip)


def collect_evidence(ip: str) -> dict[str, Any]:
    """An evidence bundle about ``ip`` (metadata, summary, raw evidence)."""
    return current().collect_evidence(ip)
