"""Reputation: a score per IP in 0..1 that detections lower and time restores.

Unknown public addresses start at 0.5 (neutral). Each detection subtracts
``weight(kind) * severity_factor``; the distance from the baseline halves every ``half_life``
seconds of event time, so an address that stops misbehaving drifts back to neutral. A
blocklisted address has a lower baseline (``blocklisted_score``). Private, loopback and
allowlisted addresses are always 1.0 (trusted) and never tracked.

A growing episode (a scan that emits several updates with one ``episode`` id and rising
severity) is charged once, at the highest severity it reached, not once per update.

State is bounded: at most ``max_ips`` addresses (least recently touched dropped first), at most
``history`` events per address, at most 32 episodes remembered per address.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from garrison.correlate.addresses import IPAddress, IPNetwork, in_any, is_special
from garrison.correlate.attack import SEVERITY_FACTOR, kind_of
from garrison.correlate.blocklist import Blocklists
from garrison.events import Event

NEUTRAL: Final = 0.5
MALICIOUS: Final = 0.15
SUSPICIOUS: Final = 0.3
TRUSTED: Final = 0.8
_MAX_EPISODES: Final = 32


def classify(score: float) -> str:
    """``malicious`` (<= 0.15), ``suspicious`` (<= 0.3), ``trusted`` (>= 0.8) or ``neutral``."""
    if score <= MALICIOUS:
        return "malicious"
    if score <= SUSPICIOUS:
        return "suspicious"
    if score >= TRUSTED:
        return "trusted"
    return "neutral"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One event that touched an address's reputation (``ts`` seconds since the epoch)."""

    ts: float
    name: str
    severity: str
    penalty: float
    score: float


@dataclass
class _State:
    score: float
    at: float
    first_seen: float
    baseline: float
    blocklists: tuple[str, ...]
    events: int = 0
    history: deque[HistoryEntry] = field(default_factory=deque)
    episodes: OrderedDict[str, float] = field(default_factory=OrderedDict)


class Reputation:
    """Scores per address. ``now`` arguments are seconds since the epoch (event time)."""

    def __init__(
        self,
        *,
        half_life: float = 3600.0,
        trusted: Iterable[IPNetwork] = (),
        blocklists: Blocklists | None = None,
        weights: Mapping[str, float] | None = None,
        blocklisted_score: float = 0.1,
        max_ips: int = 100_000,
        history: int = 50,
    ) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be > 0 seconds, got {half_life!r}")
        self.half_life = half_life
        self.trusted = tuple(trusted)
        self.blocklists = blocklists or Blocklists()
        self.weights = dict(weights or {})
        self.blocklisted_score = blocklisted_score
        self.max_ips = max_ips
        self.history_len = history
        self._ips: OrderedDict[IPAddress, _State] = OrderedDict()
        self.evicted = 0

    def is_trusted(self, addr: IPAddress) -> bool:
        """Private, loopback, special-purpose and allowlisted addresses."""
        return is_special(addr) or in_any(addr, self.trusted)

    def weight(self, name: str) -> float:
        """Penalty (0..1) of one event of kind ``name`` at medium severity."""
        return self.weights.get(name, kind_of(name).weight)

    def _decayed(self, st: _State, now: float) -> float:
        dt = max(0.0, now - st.at)
        return st.baseline + (st.score - st.baseline) * math.pow(0.5, dt / self.half_life)

    def _state(self, addr: IPAddress, now: float) -> _State:
        st = self._ips.get(addr)
        if st is None:
            listed = tuple(self.blocklists.match(addr))
            base = self.blocklisted_score if listed else NEUTRAL
            st = _State(base, now, now, base, listed, history=deque(maxlen=self.history_len))
            self._ips[addr] = st
            while len(self._ips) > self.max_ips:
                self._ips.popitem(last=False)
                self.evicted += 1
        else:
            self._ips.move_to_end(addr)
        return st

    def apply(self, addr: IPAddress, event: Event) -> float:
        """Charge ``event`` to ``addr``; returns the new score (0..1)."""
        if self.is_trusted(addr):
            return 1.0
        penalty = self.weight(event.name) * SEVERITY_FACTOR.get(event.severity, 1.0)
        st = self._state(addr, event.ts)
        if event.episode is not None:
            charged = st.episodes.get(event.episode, 0.0)
            st.episodes[event.episode] = max(charged, penalty)
            st.episodes.move_to_end(event.episode)
            while len(st.episodes) > _MAX_EPISODES:
                st.episodes.popitem(last=False)
            penalty = max(0.0, penalty - charged)
        now = max(event.ts, st.at)
        score = max(0.0, min(1.0, self._decayed(st, now) - penalty))
        st.score, st.at = score, now
        st.events += 1
        st.history.append(HistoryEntry(event.ts, event.name, event.severity.label, penalty, score))
        return score

    def score(self, addr: IPAddress, now: float) -> float:
        """The score of ``addr`` at ``now`` (0.5 unknown, 1.0 trusted)."""
        if self.is_trusted(addr):
            return 1.0
        st = self._ips.get(addr)
        if st is None:
            return self.blocklisted_score if self.blocklists.match(addr) else NEUTRAL
        return self._decayed(st, now)

    def restore(self, addr: IPAddress, score: float, at: float, events: int = 0) -> None:
        """Seed ``addr`` with a persisted score (``at``: when it had that score)."""
        if self.is_trusted(addr):
            return
        st = self._state(addr, at)
        st.score, st.at, st.events = max(0.0, min(1.0, score)), at, events

    def known(self, addr: IPAddress) -> bool:
        """True if ``addr`` has state in memory."""
        return addr in self._ips

    def summary(self, addr: IPAddress) -> tuple[int, list[str]]:
        """``(events charged, blocklists holding it)`` for ``addr`` (cheap: no history)."""
        st = self._ips.get(addr)
        return (st.events, list(st.blocklists)) if st else (0, self.blocklists.match(addr))

    def report(self, addr: IPAddress, now: float) -> dict[str, Any]:
        """A plain dict describing ``addr``'s reputation at ``now``."""
        score = self.score(addr, now)
        st = self._ips.get(addr)
        listed = list(st.blocklists) if st else self.blocklists.match(addr)
        return {
            "ip": str(addr),
            "score": round(score, 4),
            "classification": "trusted" if self.is_trusted(addr) else classify(score),
            "trusted": self.is_trusted(addr),
            "blocklisted": bool(listed),
            "blocklists": listed,
            "events": st.events if st else 0,
            "first_seen": st.first_seen if st else None,
            "history": [vars_of(h) for h in st.history] if st else [],
        }

    def __len__(self) -> int:
        return len(self._ips)


def vars_of(h: HistoryEntry) -> dict[str, Any]:
    return {"ts": h.ts, "name": h.name, "severity": h.severity,
            "penalty": round(h.penalty, 4), "score": round(h.score, 4)}
