"""Bounds on what outside parties can make us hold: sessions and events per source.

Sources are keyed by address, IPv6 by its /64 (one host's whole prefix is one source, so
rotating addresses inside it gains nothing). Per-source bookkeeping is an LRU of at most
``max_sources`` entries.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field


def source_key(ip: str) -> str:
    """The key an address is counted under: the address itself, or its /64 for IPv6."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass
class SessionLimiter:
    """Admission of sessions: at most ``total`` at once, ``per_source`` per source key.

    When every slot is taken, a newcomer is still let in if some other source holds more
    sessions than it would: :meth:`acquire` then names that source, and the caller ends its
    oldest session (fair share: a flood from a few sources cannot lock everyone else out).
    """

    total: int
    per_source: int
    active: int = 0
    rejected: int = 0
    evicted: int = 0
    _by_source: dict[str, int] = field(default_factory=dict)
    _pending: int = 0  # evicted sessions that have not released their slot yet

    def acquire(self, key: str) -> tuple[bool, str | None]:
        """Take a slot for ``key``: (admitted, source whose oldest session must end or None).
        Refusals are counted."""
        n = self._by_source.get(key, 0)
        if n >= self.per_source:
            self.rejected += 1
            return False, None
        victim = None
        if self.active - self._pending >= self.total:
            heavy = max(self._by_source, key=self._by_source.__getitem__, default=None)
            if heavy is None or heavy == key or self._by_source[heavy] <= n + 1:
                self.rejected += 1
                return False, None
            victim = heavy
            self._pending += 1
            self.evicted += 1
        self._by_source[key] = n + 1
        self.active += 1
        return True, victim

    def release(self, key: str, *, evicted: bool = False) -> None:
        """Give back a slot taken by :meth:`acquire` (``evicted``: it was a named victim)."""
        n = self._by_source.get(key, 0) - 1
        if n <= 0:
            self._by_source.pop(key, None)
        else:
            self._by_source[key] = n
        self.active = max(0, self.active - 1)
        if evicted:
            self._pending = max(0, self._pending - 1)

    def sources(self) -> int:
        """Source keys holding at least one session (bounded by ``total``)."""
        return len(self._by_source)


@dataclass
class EventBudget:
    """At most ``limit`` events per source key in any ``window`` seconds (a fixed window per
    key); the rest are counted and reported with the next event that gets through."""

    limit: int
    window: float
    max_sources: int
    suppressed_total: int = 0
    _state: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    def admit(self, key: str, now: float) -> tuple[bool, int]:
        """(emit?, events suppressed for ``key`` since its last emitted one). ``now`` in s."""
        st = self._state.get(key)
        if st is None or now - st[0] >= self.window:
            suppressed = int(st[2]) if st is not None else 0
            st = [now, 0.0, 0.0]
            self._state[key] = st
            if len(self._state) > self.max_sources:
                self._state.popitem(last=False)
        else:
            suppressed = int(st[2])
        self._state.move_to_end(key)
        if st[1] >= self.limit:
            st[2] += 1
            self.suppressed_total += 1
            return False, 0
        st[1] += 1
        st[2] = 0
        return True, suppressed

    def __len__(self) -> int:
        return len(self._state)
