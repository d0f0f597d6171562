"""Detectors: pure state machines ``observe(obs) -> list[Event]`` with bounded state."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from garrison.events import Event


@runtime_checkable
class Detector(Protocol):
    """A detector. ``accepts`` lists the observation types it wants; the engine routes by type.

    It must not touch sockets, files or the clock: time comes in with each observation.
    ``flush(now)`` lets it close episodes when time passes without observations (the engine
    calls it with the latest observation time, and once at the end of a replay).
    """

    @property
    def name(self) -> str: ...

    @property
    def accepts(self) -> tuple[type, ...]: ...

    def observe(self, obs: Any) -> list[Event]: ...

    def flush(self, now: float) -> list[Event]: ...
