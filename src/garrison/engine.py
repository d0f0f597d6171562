"""The Garrison facade: wires sensors -> detectors -> correlator -> responders.

It holds no detection logic of its own. Detectors are routed observations by type; every event
they return goes onto the :class:`~garrison.bus.EventBus`, where responders (the NDJSON log, the
SQLite store, the correlator, the firewall, ...) are just subscribers. Long-running parts
(packet capture, honeypot listeners, pollers) are :class:`Component` objects started by
:meth:`Garrison.run`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from garrison.bus import EventBus, Handler
from garrison.config import GarrisonConfig
from garrison.detect import Detector
from garrison.events import Event

log = logging.getLogger("garrison.engine")


@runtime_checkable
class Component(Protocol):
    """A long-running part started by ``garrison run`` (a sensor, listener or poller).

    ``start`` returns once the component is serving; it feeds observations with
    ``engine.feed(obs)`` and may emit events with ``engine.emit(event)``. ``stop`` releases
    everything it holds. A component that fails to start is logged and skipped, never fatal.
    """

    name: str

    async def start(self, engine: Garrison) -> None: ...

    async def stop(self) -> None: ...


class Garrison:
    """One defended host: configuration, the event bus, detectors and components."""

    def __init__(
        self, config: GarrisonConfig | None = None, *, bus: EventBus | None = None
    ) -> None:
        self.config = config or GarrisonConfig()
        if bus is None:
            from garrison import default_bus

            bus = default_bus
        self.bus = bus
        self.detectors: list[Detector] = []
        self._routes: dict[type, list[Detector]] = defaultdict(list)
        self.components: list[Component] = []
        self.counters: dict[str, int] = defaultdict(int)
        self.latest_ts = 0.0
        self._stop: asyncio.Event | None = None
        self.services: dict[str, Any] = {}

    # -- wiring -----------------------------------------------------------------------------
    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Subscribe to events called ``name`` (``"*"`` for all); usable as a decorator."""
        return self.bus.on(name, handler)

    def add_detector(self, detector: Detector) -> Detector:
        """Route observations of ``detector.accepts`` types to ``detector``."""
        self.detectors.append(detector)
        for kind in detector.accepts:
            self._routes[kind].append(detector)
        return detector

    def add_component(self, component: Component) -> Component:
        self.components.append(component)
        return component

    # -- flow -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Publish an event to every subscriber."""
        self.counters[f"events.{event.name}"] += 1
        self.bus.emit(event)

    def feed(self, obs: Any) -> list[Event]:
        """Hand one observation to the detectors that accept it; emit and return their events."""
        ts = getattr(obs, "ts", None)
        if ts is not None and ts > self.latest_ts:
            self.latest_ts = ts
        out: list[Event] = []
        for detector in self._routes.get(type(obs), ()):
            try:
                events = detector.observe(obs)
            except Exception:
                self.counters[f"detector_errors.{detector.name}"] += 1
                log.exception("detector %s failed on %r", detector.name, type(obs).__name__)
                continue
            for event in events:
                self.emit(event)
            out.extend(events)
        return out

    def flush(self, now: float | None = None) -> list[Event]:
        """Let detectors close episodes as of ``now`` (default: the latest observation time)."""
        at = self.latest_ts if now is None else now
        out: list[Event] = []
        for detector in self.detectors:
            try:
                events = detector.flush(at)
            except Exception:
                log.exception("detector %s failed to flush", detector.name)
                continue
            for event in events:
                self.emit(event)
            out.extend(events)
        return out

    def finish(self) -> list[Event]:
        """End of input (a replay): let every detector report what it still holds. Detectors
        with a ``finish()`` method use it; others are flushed a week past the last packet."""
        out: list[Event] = []
        for detector in self.detectors:
            finish = getattr(detector, "finish", None)
            try:
                events = finish() if finish is not None else detector.flush(
                    self.latest_ts + 7 * 86400.0
                )
            except Exception:
                log.exception("detector %s failed to finish", detector.name)
                continue
            for event in events:
                self.emit(event)
            out.extend(events)
        return out

    # -- running ----------------------------------------------------------------------------
    async def run(self, until: Callable[[], bool] | None = None) -> None:
        """Start every component and serve until :meth:`stop` is called."""
        self._stop = asyncio.Event()
        started: list[Component] = []
        for component in self.components:
            try:
                await component.start(self)
                started.append(component)
                log.info("started %s", component.name)
            except Exception as exc:
                log.error("cannot start %s: %s", component.name, exc)
        try:
            await self._stop.wait()
        finally:
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception:
                    log.exception("error stopping %s", component.name)
            # Report the final state of every open episode before exiting.
            self.finish()
            await self.bus.drain()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe to call from a signal handler on the loop)."""
        if self._stop is not None:
            self._stop.set()
