"""One record per identity (an IP group, a session, an API key) for everything the web layer
keeps about it: rate-limit state, bans, the session binding and the behavioural history.

Why one record: with many thousands of clients, most of a request's cost is cache misses, and
the first design kept six per-key tables (engine histories for IP and session, a ban map, store
state for IP and session, bindings), each a separate dict lookup and a separate object. Now a
request resolves its client once (a cached lookup) to direct references to its records, and the
limiter, the binding check and the scorer all work on those.

The memory store (``memory://``) keeps its limiter state in these records; the Redis store its
local leases and confirmed bindings (the limiter itself lives in Redis). Either way the web
engine uses the store's table, so a request resolves to one object per identity.

Memory is bounded by :class:`RecordTable`: at most ``cap`` records; when full, idle records go
first, then those that would expire soonest. Records are reset in place when they expire, never
replaced, so a reference held by a cached client stays valid until a sweep evicts it; every sweep
bumps :attr:`RecordTable.gen`, which invalidates the cached clients.
"""

from __future__ import annotations

from garrison.acyclic import allow, untrack
from garrison.web.behaviour import History


class Record(History):
    """Everything known about one identity. Times in seconds since the epoch.

    Limiter (GCRA, see :mod:`garrison.store.base`): ``tat`` theoretical arrival time, ``trust``
    0..1, ``strikes`` refusals since ``wstart``, ``offences`` back-offs and bans so far,
    ``ban_until`` / ``reason`` a standing ban, ``expires`` when the record may be forgotten.
    Binding (sessions): ``bgroup`` / ``bagent`` where it started, ``bexp`` when the binding
    lapses (with Redis: until when this worker may take it as confirmed), ``bseen`` its last
    request. Redis leases: ``ltok`` requests (in cost units) this worker may still admit on its
    own until ``luntil``, ``lseq`` Redis's number of the grant. Scoring: the :class:`History`
    ring, ``score`` the last risk 0..1 (-1.0: not judged yet; :attr:`risk` gives it as
    ``float | None``), ``since`` requests since the last scoring,
    ``reported`` when the last ``bot-blocked`` event about it went out.
    """

    __slots__ = ("bagent", "ban_until", "bexp", "bgroup", "bseen", "expires", "lseq", "ltok",
                 "luntil", "offences", "reason", "reported", "score", "since", "strikes", "tat",
                 "trust", "wstart")

    def __init__(self, trust: float) -> None:
        super().__init__()
        self.reset(trust)
        untrack(self)  # text and numbers only: never in a cycle (garrison.acyclic)

    def reset(self, trust: float) -> None:
        """Forget everything (the record expired); keeps the object so references stay valid."""
        self.clear()
        # Compiled, fields are laid out in the order first assigned (the History ring first):
        # what scoring reads and writes next to the ring's counters (its risk, the trust gain
        # and idle expiry it settles), then what the fast path reads (the rate limit, a ban,
        # the binding), so that each touches as few cache lines of a record as it can.
        # a plain float, not float | None: scoring reads it on every request, and a boxed
        # float is one more object (and cache miss) per record
        self.score = -1.0
        self.since = 0
        self.trust = trust
        self.expires = 0.0
        self.offences = 0
        self.tat = 0.0
        self.ban_until = 0.0
        self.bgroup: str | None = None
        self.bagent = ""
        self.bexp = 0.0
        self.ltok = 0.0
        self.luntil = 0.0
        self.bseen = 0.0
        self.strikes = 0
        self.wstart = 0.0
        self.reason = ""
        self.lseq = 0
        self.reported = -1e18

    @property
    def risk(self) -> float | None:
        """The last risk 0..1 scoring found, None before it judged this identity."""
        return None if self.score < 0.0 else self.score


# Compiled, its deallocator is mypyc's, which copes with an untracked object (garrison.acyclic).
allow(Record)


class RecordTable:
    """Records by identity, at most ``cap`` of them (see the module docstring)."""

    def __init__(self, cap: int, initial_trust: float) -> None:
        if cap < 16:
            raise ValueError(f"cap must be >= 16, got {cap}")
        self.cap = cap
        self.initial_trust = initial_trust
        self.data: dict[str, Record] = {}
        self.gen = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.data)

    def peek(self, identity: str) -> Record | None:
        """The record of ``identity`` if there is one (expired or not), without creating it."""
        return self.data.get(identity)

    def get(self, identity: str, now: float) -> Record:
        """The live record of ``identity``: created if absent, reset if it expired."""
        rec = self.data.get(identity)
        if rec is None:
            rec = Record(self.initial_trust)
            if len(self.data) >= self.cap:
                self.sweep(now)
            self.data[identity] = rec
            # text keys, records never in a cycle: spared the collector's full walks (storing
            # a record tracks the dict again, hence after every store; garrison.acyclic)
            untrack(self.data)
        elif rec.expires <= now:
            rec.reset(self.initial_trust)
        return rec

    def sweep(self, now: float) -> None:
        """Make room: drop expired records, then keep the three quarters of ``cap`` that
        expire last (bans and offenders expire late, so they are the last to go; of those that
        expire together, the newest)."""
        data = self.data
        live = {k: r for k, r in data.items() if r.expires > now}
        keep = self.cap * 3 // 4
        if len(live) > keep:  # newest first, so that of equal expiry the newest stay
            ranked = sorted(reversed(live.items()), key=lambda kv: kv[1].expires, reverse=True)
            live = dict(reversed(ranked[:keep]))
        self.evicted += len(data) - len(live)
        self.data = untrack(live)
        self.gen += 1
