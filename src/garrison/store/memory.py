"""In-process store (``memory://``): the default, for one process with many threads or tasks.

Exact under concurrency: every check runs under one lock, so two threads can never both spend
the last token. State per identity is a small list; the table is an LRU capped at
``max_identities`` entries, and entries expire when idle (see :class:`LimitPolicy`), so a flood
of spoofed identities costs bounded memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from garrison.store.base import (
    BACKOFF,
    BAN,
    EV_BACKOFF,
    EV_BAN,
    EV_THROTTLE_START,
    EV_TRAVEL,
    THROTTLE,
    TRAVEL,
    CheckRequest,
    CheckResult,
    LimitPolicy,
    LimitStore,
    PendingBan,
)

# Slots of an identity's state list.
_TAT, _TRUST, _STRIKES, _WSTART, _OFFENCES, _BAN_UNTIL, _REASON, _EXPIRES = range(8)


def _new_state(policy: LimitPolicy) -> list[float | str]:
    return [0.0, policy.initial_trust, 0.0, 0.0, 0.0, 0.0, "", 0.0]


def ban_length(policy: LimitPolicy, base: float, offences: int) -> float:
    """Length in seconds of the ``offences``-th ban: ``base`` doubled per earlier offence."""
    return float(min(base * (2.0 ** max(offences - 1, 0)), policy.max_ban))


class MemoryStore(LimitStore):
    """Rate limits, bans and bindings in a dict; see the module docstring."""

    def __init__(self, policy: LimitPolicy | None = None, *, max_identities: int = 200_000,
                 max_sessions: int = 200_000) -> None:
        if max_identities < 16 or max_sessions < 16:
            raise ValueError("max_identities and max_sessions must be >= 16")
        self.policy = policy or LimitPolicy()
        self.max_identities = max_identities
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._ids: OrderedDict[str, list[float | str]] = OrderedDict()
        self._bindings: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._ids)

    # -- protocol ---------------------------------------------------------------------------
    def check(self, req: CheckRequest) -> CheckResult:
        with self._lock:
            return self._check(req)

    async def acheck(self, req: CheckRequest) -> CheckResult:
        # Microseconds of arithmetic under a lock no coroutine holds across an await.
        with self._lock:
            return self._check(req)

    # -- the algorithm ----------------------------------------------------------------------
    def _state(self, identity: str, now: float) -> list[float | str]:
        st = self._ids.get(identity)
        if st is None or float(st[_EXPIRES]) <= now:
            st = _new_state(self.policy)
            self._ids[identity] = st
            while len(self._ids) > self.max_identities:
                self._ids.popitem(last=False)
                self.evicted += 1
        else:
            self._ids.move_to_end(identity)
        return st

    def _touch(self, st: list[float | str], now: float) -> None:
        p = self.policy
        keep = p.idle_ttl
        if float(st[_OFFENCES]) > 0:
            keep = max(keep, p.offence_memory)
        st[_EXPIRES] = max(float(st[_EXPIRES]), now + keep, float(st[_BAN_UNTIL]))

    def _apply_ban(self, ban: PendingBan, now: float) -> float:
        st = self._state(ban.identity, now)
        st[_OFFENCES] = float(st[_OFFENCES]) + 1
        until = now + ban_length(self.policy, ban.duration, int(float(st[_OFFENCES])))
        if until > float(st[_BAN_UNTIL]):
            st[_BAN_UNTIL] = until
            st[_REASON] = ban.reason
        self._touch(st, now)
        return float(st[_BAN_UNTIL])

    def _check(self, req: CheckRequest) -> CheckResult:
        p, now = self.policy, req.now
        ban_until = tuple(self._apply_ban(b, now) for b in req.bans)
        states = [(ident, self._state(ident, now)) for ident in req.identities]
        # 1. standing bans
        for ident, st in states:
            if float(st[_BAN_UNTIL]) > now:
                return CheckResult(False, str(st[_REASON]) or BAN, float(st[_BAN_UNTIL]) - now,
                                   float(st[_TRUST]), None, ident, ban_until=ban_until)
        # 2. session binding
        b = req.binding
        if b is not None:
            bound = self._bindings.get(b.session)
            here = (b.group, b.agent)
            if bound is None or bound[2] <= now:
                self._bindings[b.session] = (b.group, b.agent, now + b.ttl)
                while len(self._bindings) > self.max_sessions:
                    self._bindings.popitem(last=False)
            elif (bound[0], bound[1]) != here:
                st = self._state(b.session, now)
                st[_OFFENCES] = float(st[_OFFENCES]) + 1
                st[_BAN_UNTIL] = max(float(st[_BAN_UNTIL]), now + b.ban)
                st[_REASON] = TRAVEL
                self._touch(st, now)
                return CheckResult(False, TRAVEL, b.ban, float(st[_TRUST]), EV_TRAVEL,
                                   b.session, bound[0], ban_until=ban_until)
            else:
                self._bindings[b.session] = (bound[0], bound[1], now + b.ttl)
                self._bindings.move_to_end(b.session)
        # 3. GCRA on every identity; all or nothing
        refused: tuple[str, list[float | str], float] | None = None
        new_tats: list[float] = []
        for ident, st in states:
            trust = float(st[_TRUST])
            interval = req.cost / (p.rate * (0.5 + trust))
            tau = p.burst / p.rate  # burst in requests scales with trust too
            tat = max(float(st[_TAT]), now) + interval
            if tat - now > tau and refused is None:
                refused = (ident, st, tat - now - tau)
            new_tats.append(tat)
        if refused is None:
            low = 1.0
            for (_, st), tat in zip(states, new_tats, strict=True):
                st[_TAT] = tat
                st[_TRUST] = min(1.0, float(st[_TRUST]) + p.trust_gain)
                self._touch(st, now)
                low = min(low, float(st[_TRUST]))
            return CheckResult(True, trust=low if states else p.initial_trust,
                               ban_until=ban_until)
        ident, st, wait = refused
        st[_TRUST] = max(0.0, float(st[_TRUST]) - p.trust_loss)
        if now - float(st[_WSTART]) > p.strike_window:
            st[_STRIKES], st[_WSTART] = 0.0, now
        st[_STRIKES] = float(st[_STRIKES]) + 1
        event = EV_THROTTLE_START if float(st[_STRIKES]) == 1 else None
        reason = THROTTLE
        if float(st[_STRIKES]) >= p.strikes:
            st[_STRIKES] = 0.0
            st[_OFFENCES] = float(st[_OFFENCES]) + 1
            offences = int(float(st[_OFFENCES]))
            if offences < p.offences_to_ban:
                reason, event, wait = BACKOFF, EV_BACKOFF, p.backoff
            else:
                reason, event = BAN, EV_BAN
                wait = ban_length(p, p.ban, offences - p.offences_to_ban + 1)
            st[_BAN_UNTIL] = now + wait
            st[_REASON] = reason
        self._touch(st, now)
        return CheckResult(False, reason, wait, float(st[_TRUST]), event, ident,
                           ban_until=ban_until)
