"""A bounded map for state keyed by outside parties (IPs, sessions): LRU cap plus idle expiry."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedMap(Generic[V]):
    """At most ``cap`` entries; an entry not touched for ``ttl`` seconds is gone.

    Time comes in as arguments (seconds since the epoch), never from the clock. ``evicted``
    counts entries pushed out by the cap, so a flood of new keys shows in metrics.
    """

    def __init__(self, cap: int, ttl: float) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        self.cap = cap
        self.ttl = ttl
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: float) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if now - item[0] > self.ttl:
            del self._data[key]
            return None
        return item[1]

    def peek(self, key: str) -> V | None:
        """The value for ``key`` if present, without checking expiry or marking it used (for
        read-only lookups on the hot path; a stale answer is at most ``ttl`` old)."""
        item = self._data.get(key)
        return None if item is None else item[1]

    def get_or_create(self, key: str, now: float, factory: Callable[[], V]) -> V:
        """The live value for ``key`` (created if absent or expired), marked as used at ``now``."""
        item = self._data.get(key)
        if item is None or now - item[0] > self.ttl:
            value = factory()
            self._data[key] = (now, value)
            self._data.move_to_end(key)
            self._trim()
            return value
        self._data[key] = (now, item[1])
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: str, value: V, now: float) -> None:
        self._data[key] = (now, value)
        self._data.move_to_end(key)
        self._trim()

    def pop(self, key: str) -> V | None:
        item = self._data.pop(key, None)
        return None if item is None else item[1]

    def _trim(self) -> None:
        while len(self._data) > self.cap:
            self._data.popitem(last=False)
            self.evicted += 1
