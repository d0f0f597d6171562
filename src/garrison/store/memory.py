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


class _State:
    """One identity's limiter state. Times in seconds since the epoch."""

    __slots__ = ("ban_until", "expires", "offences", "reason", "strikes", "tat", "trust",
                 "wstart")

    def __init__(self, trust: float) -> None:
        self.tat = 0.0
        self.trust = trust
        self.strikes = 0
        self.wstart = 0.0
        self.offences = 0
        self.ban_until = 0.0
        self.reason = ""
        self.expires = 0.0


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
        self._ids: OrderedDict[str, _State] = OrderedDict()
        self._bindings: OrderedDict[str, tuple[str, str, float, float]] = OrderedDict()
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
    def _state(self, identity: str, now: float) -> _State:
        ids = self._ids
        st = ids.get(identity)
        if st is None or st.expires <= now:
            st = _State(self.policy.initial_trust)
            ids[identity] = st
            if len(ids) > self.max_identities:
                ids.popitem(last=False)
                self.evicted += 1
        else:
            ids.move_to_end(identity)
        return st

    def _touch(self, st: _State, now: float) -> None:
        keep = self.policy.idle_ttl
        if st.offences and self.policy.offence_memory > keep:
            keep = self.policy.offence_memory
        st.expires = max(st.expires, now + keep, st.ban_until)

    def _apply_ban(self, ban: PendingBan, now: float) -> float:
        st = self._state(ban.identity, now)
        st.offences += 1
        until = now + ban_length(self.policy, ban.duration, st.offences)
        if until > st.ban_until:
            st.ban_until = until
            st.reason = ban.reason
        self._touch(st, now)
        return st.ban_until

    def _check(self, req: CheckRequest) -> CheckResult:
        p, now = self.policy, req.now
        ban_until = tuple(self._apply_ban(b, now) for b in req.bans) if req.bans else ()
        ids = self._ids
        states: list[tuple[str, _State]] = []
        for ident in req.identities:  # self._state(), inlined: this is the hot path
            st = ids.get(ident)
            if st is None or st.expires <= now:
                st = self._state(ident, now)
            else:
                ids.move_to_end(ident)
            states.append((ident, st))
        # 1. standing bans
        for ident, st in states:
            if st.ban_until > now:
                return CheckResult(False, st.reason or BAN, st.ban_until - now, st.trust, None,
                                   ident, ban_until=ban_until)
        # 2. session binding: (group, agent, expires, last seen)
        b = req.binding
        if b is not None:
            bound = self._bindings.get(b.session)
            if bound is None or bound[2] <= now or (
                    (bound[0] != b.group or bound[1] != b.agent) and now - bound[3] > b.window):
                self._bindings[b.session] = (b.group, b.agent, now + b.ttl, now)
                self._bindings.move_to_end(b.session)
                if len(self._bindings) > self.max_sessions:
                    self._bindings.popitem(last=False)
            elif bound[0] != b.group or bound[1] != b.agent:
                st = self._state(b.session, now)
                st.offences += 1
                st.ban_until = max(st.ban_until, now + b.ban)
                st.reason = TRAVEL
                self._touch(st, now)
                return CheckResult(False, TRAVEL, b.ban, st.trust, EV_TRAVEL, b.session,
                                   bound[0], ban_until=ban_until)
            else:
                bindings = self._bindings
                bindings[b.session] = (bound[0], bound[1], now + b.ttl, now)
                bindings.move_to_end(b.session)
        # 3. GCRA on every identity; all or nothing
        rate = p.rate
        tau = p.burst / rate  # burst in requests scales with trust, like the rate
        cost = req.cost
        refused: tuple[str, _State, float] | None = None
        new_tats: list[float] = []
        for ident, st in states:
            tat = st.tat
            tat = (tat if tat > now else now) + cost / (rate * (0.5 + st.trust))
            if refused is None and tat - now > tau:
                refused = (ident, st, tat - now - tau)
            new_tats.append(tat)
        if refused is None:
            low = 1.0 if states else p.initial_trust
            gain = p.trust_gain
            keep = now + p.idle_ttl
            for (_, st), tat in zip(states, new_tats, strict=True):
                st.tat = tat
                trust = st.trust + gain
                st.trust = trust = trust if trust < 1.0 else 1.0
                if st.offences:
                    self._touch(st, now)
                elif keep > st.expires:  # no standing ban here: idle expiry is all that counts
                    st.expires = keep
                if trust < low:
                    low = trust
            return CheckResult(True, None, 0.0, low, None, None, None, False, ban_until)
        ident, st, wait = refused
        st.trust = max(0.0, st.trust - p.trust_loss)
        if now - st.wstart > p.strike_window:
            st.strikes, st.wstart = 0, now
        st.strikes += 1
        event = EV_THROTTLE_START if st.strikes == 1 else None
        reason = THROTTLE
        if st.strikes >= p.strikes:
            st.strikes = 0
            st.offences += 1
            if st.offences < p.offences_to_ban:
                reason, event, wait = BACKOFF, EV_BACKOFF, p.backoff
            else:
                reason, event = BAN, EV_BAN
                wait = ban_length(p, p.ban, st.offences - p.offences_to_ban + 1)
            st.ban_until = now + wait
            st.reason = reason
        self._touch(st, now)
        return CheckResult(False, reason, wait, st.trust, event, ident, ban_until=ban_until)
