"""In-process store (``memory://``): the default, for one process with many threads or tasks.

Exact under concurrency: every check runs under one lock, so two threads can never both spend
the last token. State lives in :class:`~garrison.store.records.Record` objects (one per
identity, shared with the engine's scorer), in a :class:`~garrison.store.records.RecordTable`
capped at ``max_identities`` records; records expire when idle (see :class:`LimitPolicy`), so a
flood of spoofed identities costs bounded memory. A session's binding lives in its record.

The web engine's fast path (:meth:`garrison.web.engine.WebEngine.fast`) runs the common case of
the same rules (no ban, the binding holds, every identity under its limit) on records it
already holds, with no lookups, and leaves the trust gain and idle expiry of what it admitted to
its scoring batch; anything else comes here through :meth:`check`.
"""

from __future__ import annotations

import threading

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
from garrison.store.records import Record, RecordTable


def ban_length(policy: LimitPolicy, base: float, offences: int) -> float:
    """Length in seconds of the ``offences``-th ban: ``base`` doubled per earlier offence."""
    return float(min(base * (2.0 ** max(offences - 1, 0)), policy.max_ban))


class MemoryStore(LimitStore):
    """Rate limits, bans and bindings in local records; see the module docstring."""

    def __init__(self, policy: LimitPolicy | None = None, *, max_identities: int = 200_000) -> None:
        if max_identities < 16:
            raise ValueError("max_identities must be >= 16")
        self.policy = p = policy or LimitPolicy()
        self.records: RecordTable = RecordTable(max_identities, p.initial_trust)
        self.lock = threading.Lock()
        self._tau = p.burst / p.rate

    def __len__(self) -> int:
        return len(self.records)

    @property
    def evicted(self) -> int:
        return self.records.evicted

    # -- protocol ---------------------------------------------------------------------------
    def check(self, req: CheckRequest) -> CheckResult:
        with self.lock:
            return self._check(req)

    async def acheck(self, req: CheckRequest) -> CheckResult:
        # Microseconds of arithmetic under a lock no coroutine holds across an await.
        with self.lock:
            return self._check(req)

    # -- the algorithm ----------------------------------------------------------------------
    def touch(self, st: Record, now: float) -> None:
        """Extend the idle expiry of ``st`` (longer for an offender, never before its ban)."""
        keep = self.policy.idle_ttl
        if st.offences and self.policy.offence_memory > keep:
            keep = self.policy.offence_memory
        st.expires = max(st.expires, now + keep, st.ban_until)

    def apply_ban(self, ban: PendingBan, now: float) -> float:
        """Write one ban (caller holds :attr:`lock`); returns when it ends."""
        st = self.records.get(ban.identity, now)
        st.offences += 1
        until = now + ban_length(self.policy, ban.duration, st.offences)
        if until > st.ban_until:
            st.ban_until = until
            st.reason = ban.reason
        self.touch(st, now)
        return st.ban_until

    def _check(self, req: CheckRequest) -> CheckResult:
        p, now = self.policy, req.now
        ban_until = tuple(self.apply_ban(b, now) for b in req.bans) if req.bans else ()
        table = self.records
        states = [(ident, table.get(ident, now)) for ident in req.identities]
        # 1. standing bans
        for ident, st in states:
            if st.ban_until > now:
                return CheckResult(False, st.reason or BAN, st.ban_until - now, st.trust, None,
                                   ident, ban_until=ban_until)
        # 2. session binding, kept in the session's record
        b = req.binding
        if b is not None:
            sr = table.get(b.session, now)
            if sr.bgroup is None or sr.bexp <= now or (
                    (sr.bgroup != b.group or sr.bagent != b.agent) and now - sr.bseen > b.window):
                sr.bgroup, sr.bagent = b.group, b.agent
                sr.bexp, sr.bseen = now + b.ttl, now
                if sr.expires < sr.bexp:
                    sr.expires = sr.bexp
            elif sr.bgroup != b.group or sr.bagent != b.agent:
                sr.offences += 1
                sr.ban_until = max(sr.ban_until, now + b.ban)
                sr.reason = TRAVEL
                self.touch(sr, now)
                return CheckResult(False, TRAVEL, b.ban, sr.trust, EV_TRAVEL, b.session,
                                   sr.bgroup, ban_until=ban_until)
            else:
                sr.bexp, sr.bseen = now + b.ttl, now
                if sr.expires < sr.bexp:
                    sr.expires = sr.bexp
        # 3. GCRA on every identity; all or nothing
        rate = p.rate
        tau = self._tau  # burst in requests scales with trust, like the rate
        cost = req.cost
        refused: tuple[str, Record, float] | None = None
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
                    self.touch(st, now)
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
        self.touch(st, now)
        return CheckResult(False, reason, wait, st.trust, event, ident, ban_until=ban_until)
