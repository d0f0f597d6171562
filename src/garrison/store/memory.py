"""In-process store (``memory://``): the default, for one process with many threads or tasks.

Exact under concurrency: every check runs under one lock, so two threads can never both spend
the last token. State lives in :class:`~garrison.store.records.Record` objects (one per
identity, shared with the engine's scorer), in a :class:`~garrison.store.records.RecordTable`
capped at ``max_identities`` records; records expire when idle (see :class:`LimitPolicy`), so a
flood of spoofed identities costs bounded memory. A session's binding lives in its record.

:meth:`MemoryStore.spend` is the engine's fast path: the same rules as :meth:`check` for the
common case (no ban, the binding holds, every identity under its limit) on records the caller
already holds, with no lookups; anything else returns -1 and goes through :meth:`check`.
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
        self.records = RecordTable(max_identities, p.initial_trust)
        self.lock = threading.Lock()
        # Constants of the fast path, computed once.
        self._tau = p.burst / p.rate
        self._keep = p.idle_ttl

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

    def spend(self, recs: tuple[Record, ...], sess: Record | None, group: str | None,
              agent: str, bind_ttl: float, now: float, cost: float) -> float:
        """The fast path of :meth:`check` for records the caller holds (caller holds
        :attr:`lock`). Returns the lowest trust (0..1) when the request is allowed and nothing
        else happened; -1.0, having changed nothing, when :meth:`check` must decide (a ban, a
        new, expired or moved session binding, an identity over its limit, an expired record,
        more than two identities). ``sess`` with ``group``/``agent``: the session record and
        where this request comes from (``group`` None: no binding to check)."""
        if sess is not None and group is not None and (
                sess.bgroup != group or sess.bagent != agent or sess.bexp <= now):
            return -1.0
        rate = self.policy.rate
        tau = self._tau
        r0 = recs[0]
        if r0.ban_until > now or r0.expires <= now:
            return -1.0
        tat0 = r0.tat
        tat0 = (tat0 if tat0 > now else now) + cost / (rate * (0.5 + r0.trust))
        if tat0 - now > tau:
            return -1.0
        if len(recs) == 1:
            r1 = None
            tat1 = 0.0
        else:
            if len(recs) > 2:
                return -1.0  # three identities (with an API key): the general path
            r1 = recs[1]
            if r1.ban_until > now or r1.expires <= now:
                return -1.0
            tat1 = r1.tat
            tat1 = (tat1 if tat1 > now else now) + cost / (rate * (0.5 + r1.trust))
            if tat1 - now > tau:
                return -1.0
        gain = self.policy.trust_gain
        keep = now + self._keep
        r0.tat = tat0
        low = r0.trust + gain
        r0.trust = low = low if low < 1.0 else 1.0
        if r0.offences:
            self._touch(r0, now)
        elif keep > r0.expires:
            r0.expires = keep
        if r1 is not None:
            r1.tat = tat1
            t = r1.trust + gain
            r1.trust = t = t if t < 1.0 else 1.0
            if r1.offences:
                self._touch(r1, now)
            elif keep > r1.expires:
                r1.expires = keep
            if t < low:
                low = t
        if sess is not None and group is not None:
            sess.bexp = now + bind_ttl
            sess.bseen = now
        return low

    # -- the algorithm ----------------------------------------------------------------------
    def _touch(self, st: Record, now: float) -> None:
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
        self._touch(st, now)
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
                self._touch(sr, now)
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
