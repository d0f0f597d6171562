"""Publish/subscribe for events: ``bus.on("scan", handler)``.

Handlers may be plain functions or coroutine functions. A handler that raises is logged and
isolated: the other handlers and the detectors that emitted the event carry on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from garrison.events import EVENT_NAMES, Event

log = logging.getLogger("garrison.bus")

Handler = Callable[[Event], Any]
ANY = "*"


class EventBus:
    """Routes events to handlers registered by event name (or ``"*"`` for all)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.handler_errors = 0

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for events called ``name``; usable as a decorator."""
        if name != ANY and name not in EVENT_NAMES:
            raise ValueError(f"unknown event name {name!r}: expected one of {sorted(EVENT_NAMES)}")

        def register(fn: Handler) -> Handler:
            self._handlers[name].append(fn)
            return fn

        return register(handler) if handler is not None else register

    def off(self, name: str, handler: Handler) -> None:
        """Remove a handler registered with :meth:`on`."""
        if handler in self._handlers.get(name, []):
            self._handlers[name].remove(handler)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to its handlers. Async handlers are scheduled on the running loop
        when there is one, else run to completion here."""
        for handler in (*self._handlers.get(event.name, ()), *self._handlers.get(ANY, ())):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    self._schedule(result, handler)
            except Exception:
                self.handler_errors += 1
                log.exception("event handler %r failed on %s event", handler, event.name)

    def _schedule(self, awaitable: Awaitable[Any], handler: Handler) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                self.handler_errors += 1
                log.exception("async event handler %r failed", handler)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(guarded())
            return
        task = loop.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for scheduled async handlers to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
