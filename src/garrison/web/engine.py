"""The one engine under the ASGI, WSGI and Django middleware.

Per request, three steps, each called by the adapter:

1. :meth:`WebEngine.identify` names the client (address from the socket or a trusted proxy,
   its group, its session and API key as hashes: raw cookies are never stored). Clients are
   cached by the raw header values they came from, so a returning client is one dict lookup.
2. :meth:`WebEngine.precheck` decides before the app. A client that was allowed before holds a
   prepared decision (*armed*); while it is armed, its request costs the rate-limit arithmetic
   on records it already holds and nothing else (see :meth:`WebEngine.precheck`). Everything
   else (a new client, a ban, a refused rate, a session seen elsewhere, another store) is one
   :class:`CheckRequest`, answered by the store and turned into a :class:`Decision` (and a fused
   :class:`Verdict`) by :meth:`WebEngine.decide`, which arms the client again.
3. After the response has been sent, :meth:`WebEngine.after` queues the request; batches are
   scored together (:meth:`WebEngine.drain`), which also does the limiter's bookkeeping that
   the fast path skipped and re-arms the client with its new risk; a bot is banned at once.

Time comes from ``options.clock`` (seconds since the epoch), read by the adapters and passed in,
so scenarios can run on simulated time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from librt.vecs import vec

from garrison.acyclic import allow, untrack
from garrison.bus import EventBus
from garrison.events import BOT_BLOCKED, IMPOSSIBLE_TRAVEL, RATE_LIMITED, Event, Severity

# A module import: garrison.store.records needs garrison.web.behaviour, so this module may be
# loaded while records is still half-initialised; its names are used only at run time.
from garrison.store import records as _records
from garrison.store.base import (
    BAN,
    BOT,
    EV_BACKOFF,
    EV_BAN,
    EV_THROTTLE_START,
    EV_TRAVEL,
    THROTTLE,
    Binding,
    CheckRequest,
    CheckResult,
    LimitStore,
    PendingBan,
    open_store,
)
from garrison.web.behaviour import (
    NOT_JUDGED,
    Features,
    Measure,
    path_hash,
    scratch,
    weight_vector,
    weighted_risk,
)
from garrison.web.clientaddr import AddressPolicy, IPAddress, parse_ip, parse_networks
from garrison.web.metrics import WebMetrics
from garrison.web.options import WebOptions
from garrison.web.rawkey import encode as encode_key
from garrison.web.verdict import SharedComponents, Verdict, fuse

if TYPE_CHECKING:
    from garrison.store.memory import MemoryStore

log = logging.getLogger("garrison.web")

DISTRUST: Final = "distrust"
BLOCKLIST: Final = "blocklist"
_MAX_PENDING: Final = 10_000
_CACHE: Final = 65_536
"""Entries kept at most in the path cache; cleared when full. The client and address caches
hold up to ``max_ips + max_sessions`` entries, as many clients as records may be kept: a cap
below the clients a site serves at once would empty them over and over, and every returning
client would then be identified and checked in full again (with 120,000 active clients and a
cap of 65,536 the middleware served a third of the bare app's requests per second)."""
_CACHE_BYTES: Final = 16 * 1024 * 1024
"""Characters of outside parties' text (header values, addresses, paths) each identification
cache's keys may hold; cleared when they would hold more. The entry caps alone do not bound
memory: a server lets a header be many kilobytes (uvicorn 16 KB, others more), and 65,536
entries keyed by 16 KB cookies would pin a gigabyte. Ordinary keys are tens of bytes, so the
budget only comes into play under a flood of huge headers."""
SCORE_EVERY: Final = 8
"""A key that looks harmless is re-scored every this many requests (bounded delay); one whose
risk is past :data:`HOT` of its threshold, on every request."""
HOT: Final = 0.6
BATCH: Final = 32
"""Answered requests scored together (see :meth:`WebEngine.after`)."""
BATCH_AGE: Final = 0.05
"""Seconds after which a partial batch is scored anyway."""
REFRESH: Final = 300.0
"""Seconds a client stays armed at most: its verdict is computed afresh at least this often.
Without a reputation source nothing the fast path skips can turn an armed client's answer into
a refusal: a limit, a ban or a move disarms it at once, and scoring rebuilds its verdict when
its bot risk moves. What goes stale is the rate trust in the verdict the app sees, which only
rises while the client stays armed (good behaviour), so it errs low for at most this long."""
REPUTATION_REFRESH: Final = 1.0
"""The same with a reputation source, whose answers change outside the middleware."""
REARM_DELTA: Final = 0.05
"""How far a client's bot risk must move in scoring before its prepared verdict is rebuilt."""

_Where = tuple[str | None, str | None, str | None, bool]

# Header names (lower case) the engine may read.
USER_AGENT: Final = "user-agent"
COOKIE: Final = "cookie"


class Client:
    """Who sent a request. ``key``/``session``/``api_key`` are store identities (hashed).

    ``recs`` are the records of ``identities`` (same order; ``r0``/``r1`` the first two),
    ``irec``/``srec`` those of the IP group and the session, and ``sbind`` the session record
    when the store checks a binding; all bound by :meth:`WebEngine.bind` and valid while
    ``gen`` equals the record table's generation. ``ready`` is the decision prepared for the
    next request (None: not armed), valid until ``until`` (seconds), with its verdict also in
    ``verdict`` and that verdict's bot risk in ``armed_risk``; ``fast`` counts requests
    admitted on it whose limiter bookkeeping the next scoring batch still owes.
    """

    __slots__ = ("agent", "allowlisted", "api_key", "armed_risk", "binding", "fast", "gen",
                 "identities", "ip", "irec", "key", "r0", "r1", "ready", "recs", "sbind",
                 "session", "srec", "travel", "until", "verdict")

    def __init__(self, ip: str | None, key: str | None, travel: str | None,
                 session: str | None, api_key: str | None, agent: str, allowlisted: bool,
                 identities: tuple[str, ...]) -> None:
        # What fast() reads comes first: compiled, the fields are laid out in this order, so
        # an armed request touches one or two cache lines of its client, not three.
        self.ready: Decision | None = None
        self.verdict: Verdict | None = None  # ready's verdict, read without touching ready
        # the verdict's bot risk as a plain float (-1.0: none), for scoring's re-arm test:
        # read through the decision and the verdict it was three cold objects per request
        self.armed_risk = -1.0
        self.until = 0.0
        self.gen = -1
        self.r0: _records.Record | None = None
        self.r1: _records.Record | None = None
        self.sbind: _records.Record | None = None
        self.travel = travel
        self.agent = agent
        self.fast = 0
        self.recs: tuple[_records.Record, ...] = ()
        self.irec: _records.Record | None = None
        self.srec: _records.Record | None = None
        self.ip = ip
        self.key = key
        self.session = session
        self.api_key = api_key
        self.allowlisted = allowlisted
        self.identities = identities
        self.binding: Binding | None = None  # what the store checks the session against
        # It refers only to text, numbers and, one way, to records, decisions and a binding:
        # never in a cycle, so out of the cyclic GC (garrison.acyclic).
        untrack(self)


class PathInfo:
    """A request path as scoring keeps it: the text and its :func:`path_hash`, one shared
    object per distinct path (see :meth:`WebEngine.after`)."""

    __slots__ = ("h", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.h = path_hash(text)
        untrack(self)  # text and a number: never in a cycle (garrison.acyclic)


# Compiled, their deallocators are mypyc's, which cope with untracked objects
# (garrison.acyclic).
allow(Client)
allow(PathInfo)


class Answered:
    """A slot of the scoring batch: an answered request's client, path, status, bytes sent and
    arrival time (seconds); ``client`` None when the slot is free.

    Slots are reused, batch after batch (the engine keeps two sets and :meth:`WebEngine.drain`
    swaps them), and scoring empties each slot as it reads it. So queueing a request allocates
    nothing, and nothing a request leaves behind is freed a batch later: an object freed
    when it has gone cold (its memory and its allocator page out of the CPU caches) cost more
    than anything else the batch did per request.
    """

    __slots__ = ("client", "now", "path", "size", "status")

    def __init__(self) -> None:
        self.client: Client | None = None
        self.path: PathInfo | None = None
        self.status = 0
        self.size = 0
        self.now = 0.0


class Decision(NamedTuple):
    """What to do with a request. ``retry_after`` in seconds; ``status`` 429 or 403 if refused."""

    allowed: bool
    reason: str | None = None
    retry_after: float = 0.0
    status: int = 200
    verdict: Verdict | None = None
    dry_run: bool = False

    def body(self) -> bytes:
        """The JSON body of a refusal."""
        doc: dict[str, Any] = {
            "error": "forbidden" if self.status == 403 else "too many requests",
            "reason": self.reason,
        }
        if self.status == 429:
            doc["retry_after"] = self.retry_seconds
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def retry_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after))

    def headers(self) -> list[tuple[str, str]]:
        out = [("content-type", "application/json"), ("cache-control", "no-store")]
        if self.status == 429:
            out.append(("retry-after", str(self.retry_seconds)))
        return out


PASS: Final = Decision(allowed=True)
_NEUTRAL: Final = Verdict(0.5)
_INF: Final = float("inf")


def _kept(decision: Decision) -> Decision:
    """``decision``, which a client keeps (armed), out of the cyclic GC with its verdict and
    the verdict's components: text and numbers only, never in a cycle (garrison.acyclic).
    With ``redis://`` every renewal arms a new one, and tracked, each was promoted to the
    oldest generation, calling full collections over every client's objects."""
    verdict = decision.verdict
    if verdict is not None:
        untrack(verdict.components)
        untrack(verdict)
    return untrack(decision)


def _risk_of(verdict: Verdict | None) -> float:
    """A verdict's bot risk as a plain float, -1.0 when it has none."""
    if verdict is None or verdict.bot_risk is None:
        return -1.0
    return verdict.bot_risk


def _settle(rec: _records.Record, owed: int, gain: float, mem: MemoryStore | None,
            now: float, keep: float) -> None:
    """The limiter's bookkeeping the fast path left for ``rec``: the trust gain of ``owed``
    admitted requests (memory://) and its idle expiry (caller holds the lock)."""
    if owed:
        t = rec.trust + gain * owed
        rec.trust = t if t < 1.0 else 1.0
    if rec.offences and mem is not None:
        mem.touch(rec, now)
    elif rec.expires < keep:
        rec.expires = keep


def _text_size(key: tuple[bytes | str | None, ...]) -> int:
    """Characters of text in a cache key (its str and bytes parts)."""
    total = 0
    for part in key:
        if part is not None:
            total += len(part)
    return total


class _Budget:
    """What one identification cache may hold: ``cap`` entries and :data:`_CACHE_BYTES` of key
    text; ``text`` is what its keys hold now. Kept beside the cache, not in a dict subclass, so
    the adapters' lookups stay plain dict lookups."""

    __slots__ = ("cap", "text")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.text = 0

    def keep(self, cache: dict[Any, Any], key: Any, value: Any, size: int) -> None:
        """Store ``value`` under ``key`` (``size`` characters of text); a cache that would pass
        either bound is emptied first (a flood of new keys: start over, stay bounded), and a
        key bigger than the whole budget is not kept at all."""
        if len(cache) >= self.cap or self.text + size > _CACHE_BYTES:
            cache.clear()
            self.text = 0
        if size <= _CACHE_BYTES:
            cache[key] = value
            self.text += size
            # Keys of text, values never in a cycle (clients, paths, address tuples): a dict
            # of up to 200,000 of them is spared the collector's every full walk. Storing an
            # object the collector may track tracks the dict again, hence after every store.
            untrack(cache)


def _hash(kind: str, value: str) -> str:
    return kind + hashlib.blake2b(value.encode("utf-8", "surrogateescape"),
                                  digest_size=12).hexdigest()


def _note(rec: _records.Record, now: float, path: int, cls: int, size: int, hot: float,
          weights: tuple[float, float, float, float, float], window: float, min_requests: int,
          min_span: float, counts: vec[float]) -> Measure:
    """Add an answered request to ``rec``'s history and re-score it when due: every
    :data:`SCORE_EVERY` requests, at ``min_requests``, and on every request once its risk is
    past ``hot``. Re-scoring sets ``rec.score`` and resets ``rec.since`` to 0; returns the
    features it measured (:data:`NOT_JUDGED`, ``requests`` 0, when not re-scored or not enough
    history; ``counts``: the scorer's :func:`scratch`)."""
    rec.note(now, path, cls, size)
    rec.since += 1
    if not (rec.since >= SCORE_EVERY or rec.count == min_requests or rec.score >= hot):
        return NOT_JUDGED  # (score is -1.0 before the first judgement, below any hot: 0..1)
    rec.since = 0
    feat = rec.assess(now, window, min_requests, min_span, counts)
    rec.score = weighted_risk(feat, weights) if feat[8] else -1.0
    return feat


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"') or None
    return None


class WebEngine:
    """Block list, rate limiter, session binding and scoring for one application."""

    def __init__(self, options: WebOptions, store: LimitStore | None = None) -> None:
        self.options = o = options
        self.clock: Callable[[], float] = o.clock
        self.store = store or open_store(o.store, o.policy(), timeout=o.store_timeout,
                                         max_keys=o.max_ips + o.max_sessions)
        if o.bus is None:
            from garrison import default_bus

            self.bus: EventBus = default_bus
        else:
            self.bus = o.bus
        self.addresses = AddressPolicy(
            trusted_proxies=parse_networks(o.trusted_proxies),
            forwarded_header=o.forwarded_header.lower(),
            ipv4_prefix=o.ipv4_prefix, ipv6_prefix=o.ipv6_prefix,
            travel_ipv4_prefix=o.travel_ipv4_prefix, travel_ipv6_prefix=o.travel_ipv6_prefix,
        )
        self.allowlist = parse_networks(o.allowlist)
        self.exempt = tuple(str(p) for p in o.exempt_paths)
        self.sql_exempt = tuple(str(p) for p in o.sql_exempt_paths)
        # One record per identity (see garrison.store.records). A store that keeps records
        # (memory://: its limiter state; redis://: its leases and confirmed bindings) shares
        # them and its lock, so the limiter, the binding and the scorer work on one object per
        # client; with any other store the engine keeps records for scoring and for the bans
        # it already knows.
        from garrison.store.memory import MemoryStore  # here: see the records import above

        self._mem: MemoryStore | None = (self.store if isinstance(self.store, MemoryStore)
                                         else None)
        table = self.store.records
        self.records: _records.RecordTable
        if isinstance(table, _records.RecordTable):
            self.records = table
            self._lock = self.store.lock
        else:
            self.records = _records.RecordTable(o.max_ips + o.max_sessions,
                                                self.store.policy.initial_trust)
            self._lock = threading.Lock()
        policy = self.store.policy
        self.threaded = False
        """Set by adapters whose requests run on several threads: the fast path then takes
        the lock; on one event loop it needs none."""
        # What the fast path may decide alone: the rate limit itself (memory://), or spending
        # leases the store granted (a store with records); with neither it is never armed.
        self._local = self._mem is not None
        self._leased = not self._local and isinstance(table, _records.RecordTable)
        self._tau = policy.burst / policy.rate
        self._gain = policy.trust_gain
        self._keep = max(o.window, 600.0)
        self._retain = max(self._keep, policy.idle_ttl) if self._mem is not None else self._keep
        self._refresh = min(REFRESH if o.reputation is None else REPUTATION_REFRESH,
                            policy.idle_ttl / 2, o.travel_session_ttl / 2)
        self._pending: list[PendingBan] = []
        self._batch = [Answered() for _ in range(BATCH)]  # the slots being filled
        self._spare = [Answered() for _ in range(BATCH)]  # the slots of the last drain
        self.queued = 0
        """Requests waiting in the batch for scoring."""
        self._first = 0.0  # when the batch's first request came
        self._timer = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ip_weights = dict(o.ip_weights)
        self._session_weights = dict(o.session_weights)
        self._ip_w = weight_vector(self._ip_weights)
        self._s_w = weight_vector(self._session_weights)
        self._counts = scratch()  # scoring's buffer for counting paths (under the lock)
        self._paths: dict[str, PathInfo] = {}
        self.metrics = WebMetrics()
        self.metrics.gauges = {"ip": lambda: self._count("ip:"),
                               "session": lambda: self._count("s:")}
        self.metrics.answers = self.store.answers
        self.dropped_bans = 0
        self._warned_forwarding = False
        self._last_error_log = -1e18
        self.baseline_rpm = 0.0
        self._cost = 1.0
        self._k = self._cost / policy.rate  # seconds one request adds to a GCRA TAT at trust 0.5
        self._unlogged_errors = 0
        # The identification caches hold what outside parties send (addresses, header values),
        # so they are bounded by the caps as well: as many entries as records may be kept (and
        # _CACHE_BYTES of key text), no fewer (see _CACHE).
        self._cache_cap = o.max_ips + o.max_sessions
        self._addr_cache: dict[tuple[str | None, str | None], _Where] = {}
        # Whole clients by the raw values they were derived from: a returning client costs one
        # dict lookup instead of a cookie parse and two hashes (bounded like _addr_cache).
        self._client_cache: dict[tuple[str | None, ...], Client] = {}
        # What each cache may hold, in entries and in key text (see _CACHE_BYTES).
        self._client_budget = _Budget(self._cache_cap)
        self._raw_budget = _Budget(self._cache_cap)
        self._addr_budget = _Budget(self._cache_cap)
        self._paths_budget = _Budget(_CACHE)
        self._w_bot = float(o.trust_weights.get("bot", 0.0))
        self._w_rate = float(o.trust_weights.get("rate", 0.0))
        # The verdict and decision of a client not judged yet, kept for the rate trust they
        # were made for: every new client of a flood has the same ones (see _plain), two
        # allocations fewer per new client. (They were first shared to spare the cyclic GC,
        # whose walks were 40 % of a new client's cost; armed objects are now untracked
        # anyway, see _kept.)
        self._unjudged_rate = -1.0
        self._unjudged = _NEUTRAL
        self._unjudged_admit = PASS
        self._session_header = o.session_header.lower() if o.session_header else None
        self._api_header = o.api_key_header.lower() if o.api_key_header else None
        # Header names the adapters collect for identify() (lower case); the user agent only
        # when sessions are bound to it, since nothing else reads it.
        wanted = {COOKIE, self.addresses.forwarded_header}
        if o.bind_user_agent:
            wanted.add(USER_AGENT)
        for name in (o.session_header, o.api_key_header):
            if name:
                wanted.add(name.lower())
        self.header_names = frozenset(wanted)
        self.raw_names = tuple(sorted(wanted))
        self.raw_clients: dict[bytes, Client] = {}
        """Clients by the key of ``(peer, *raw header values)`` (see :meth:`identify_raw`
        and :mod:`garrison.web.rawkey`)."""
        self._cached_gen = self.records.gen
        """The record table's generation when the client caches were last emptied."""

    def _forget_clients(self) -> None:
        """The record table swept since the last call: drop every cached client, which may
        point at evicted records (a client cache of tens of thousands would otherwise keep
        every record it ever pointed at alive, with its history, whatever the caps say).
        Cleared in place, as the adapters hold the dicts; a returning client is identified
        again, once. Called with each scoring batch (the caller holds the lock)."""
        gen = self.records.gen
        if gen != self._cached_gen:
            self._cached_gen = gen
            self.raw_clients.clear()
            self._client_cache.clear()
            self._raw_budget.text = self._client_budget.text = 0

    # -- 1. who ----------------------------------------------------------------------------
    def identify(self, peer: str | None, headers: dict[str, str]) -> Client:
        """The client of a request from the socket peer and its (lower-case) headers."""
        fwd = headers.get(self.addresses.forwarded_header)
        sh, ah = self._session_header, self._api_header
        ck = (peer, fwd, headers.get(COOKIE), headers.get(USER_AGENT),
              headers.get(sh) if sh else None, headers.get(ah) if ah else None)
        cached = self._client_cache.get(ck)
        if cached is not None:
            return cached
        client = self._identify(peer, fwd, headers)
        self._client_budget.keep(self._client_cache, ck, client, _text_size(ck))
        return client

    def identify_raw(self, parts: tuple[bytes | str | None, ...],
                     key: bytes | None = None) -> Client:
        """:meth:`identify` from ``(peer, *raw)``: the socket peer, then the raw values of
        :attr:`raw_names` in that order (None when absent), as ASGI gives them. Decodes only a
        client it has not seen, so a returning client costs one dict lookup, by ``key``
        (:func:`garrison.web.rawkey.encode` of ``parts``, made here when not given)."""
        if key is None:
            key = encode_key(parts)
        cached = self.raw_clients.get(key)
        if cached is not None:
            return cached
        headers = {name: raw.decode("latin-1") for name, raw in zip(self.raw_names, parts[1:],
                                                                     strict=True)
                   if isinstance(raw, bytes)}
        peer = parts[0]
        client = self._identify(peer if isinstance(peer, str) else None,
                                headers.get(self.addresses.forwarded_header), headers)
        self._raw_budget.keep(self.raw_clients, key, client, len(key))
        return client

    def _identify(self, peer: str | None, fwd: str | None, headers: dict[str, str]) -> Client:
        """:meth:`identify` without the cache."""
        o = self.options
        where = self._addr_cache.get((peer, fwd))
        if where is None:
            where = self._resolve(peer, fwd)
        session_raw = None
        if o.session_header:
            session_raw = headers.get(o.session_header.lower())
        if session_raw is None and o.session_cookie:
            session_raw = cookie_value(headers.get(COOKIE), o.session_cookie)
        api_raw = headers.get(o.api_key_header.lower()) if o.api_key_header else None
        agent = ""
        if o.bind_user_agent:
            agent = sys.intern(_hash("", headers.get(USER_AGENT, "")))  # as travel groups
        session = _hash("s:", session_raw) if session_raw else None
        api_key = _hash("k:", api_raw) if api_raw else None
        key = where[1]
        if api_key is None:
            identities: tuple[str, ...] = ((key, session) if key and session
                                           else (key,) if key else (session,) if session else ())
        else:
            identities = tuple(i for i in (key, session, api_key) if i)
        # The client (untracked by its __init__) and what it keeps are never in a reference
        # cycle: they are kept out of the cyclic GC, which would otherwise walk them all in
        # every full collection (garrison.acyclic; tests/web/test_acyclic.py checks the graph).
        client = Client(where[0], key, where[2], session, api_key, agent, where[3], identities)
        if session and client.travel:
            client.binding = untrack(Binding(session, client.travel, agent,
                                             o.travel_session_ttl, o.travel_ban,
                                             o.travel_window))
        return client

    def _resolve(self, peer: str | None, fwd: str | None) -> _Where:
        """Address, group key, travel group and allowlisting of a (peer, header) pair, cached
        (parsing addresses costs more than everything else on the request path)."""
        o = self.options
        ip = self.addresses.client(peer, fwd)
        if fwd and not self.addresses.trusted_proxies and not self._warned_forwarding:
            addr = parse_ip(peer)
            if addr is not None and addr.is_loopback:
                self._warned_forwarding = True
                log.warning(
                    "%s header from a loopback peer but no trusted_proxies set: every client "
                    "behind that proxy shares one address; set trusted_proxies=['127.0.0.1']",
                    self.addresses.forwarded_header,
                )
        if ip is None:
            where: _Where = (None, None, None, False)
        else:
            where = (
                str(ip), "ip:" + self.addresses.group(ip),
                # interned: clients of one group share one string, so the fast path's
                # binding check is an identity test, not a read of two cold strings
                sys.intern(self.addresses.travel_group(ip, o.travel_tolerance))
                if o.travel_tolerance != "off" else None,
                self._allowlisted(ip),
            )
        self._addr_budget.keep(self._addr_cache, (peer, fwd), where, _text_size((peer, fwd)))
        return where

    def _allowlisted(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.allowlist)

    def is_exempt(self, path: str) -> bool:
        """True when ``path`` starts with one of ``exempt_paths`` (one C call, no generator)."""
        return bool(self.exempt) and path.startswith(self.exempt)

    def sql_applies(self, path: str) -> bool:
        return self.options.sql_firewall and not (
            self.sql_exempt and path.startswith(self.sql_exempt))

    def bind(self, client: Client, now: float) -> None:
        """Point ``client`` at the records of its identities (after a sweep, or the first time)."""
        with self._lock:
            self._bind(client, now)

    def _bind(self, client: Client, now: float) -> None:
        """:meth:`bind`, the caller holding the lock. Disarms the client: records fetched anew
        may have been reset, so its next request is checked in full."""
        table = self.records
        recs: tuple[_records.Record, ...] = ()
        if not client.allowlisted:  # an allowlisted client is never limited nor scored
            for _ in range(3):  # a sweep while binding evicts what was fetched: fetch again
                gen = table.gen
                recs = tuple(table.get(i, now) for i in client.identities)
                if table.gen == gen:
                    break
        client.recs = untrack(recs)
        client.r0 = recs[0] if recs else None
        client.r1 = recs[1] if len(recs) > 1 else None
        data = table.data
        client.irec = data.get(client.key) if client.key and recs else None
        client.srec = data.get(client.session) if client.session and recs else None
        client.sbind = client.srec if client.binding is not None else None
        client.gen = table.gen
        client.ready = None

    def record(self, identity: str) -> _records.Record | None:
        """The record of ``identity``, if one is kept (for inspection and tests)."""
        return self.records.peek(identity)

    def _count(self, prefix: str) -> int:
        return sum(1 for k in list(self.records.data) if k.startswith(prefix))

    # -- 2. before the app -----------------------------------------------------------------
    def precheck(self, client: Client, now: float) -> Decision | CheckRequest:
        """A decision from local memory, or the question to put to the store: :meth:`fast`,
        else :meth:`check`."""
        if self.threaded:
            with self._lock:
                ready = self.fast(client, now)
        else:
            ready = self.fast(client, now)
        return ready if ready is not None else self.check(client, now)

    def fast(self, client: Client, now: float) -> Decision | None:
        """The prepared decision of an armed client (see :class:`Client`) when :meth:`armed`
        admits the request, else None."""
        return client.ready if self.armed(client, now) else None

    def armed(self, client: Client, now: float) -> bool:
        """True when ``client`` is armed and its request is admitted on its prepared
        decision (its verdict is ``client.verdict``).

        One test per identity on records the client already holds, all or nothing: with
        ``memory://`` the GCRA step of :mod:`garrison.store.base` itself (no standing ban,
        every identity under its limit, the session still bound where it was). The trust gain
        and idle expiry of the admitted request are left to the scoring batch (within
        :data:`BATCH_AGE` seconds), so the verdict a request sees may lag by up to one batch.
        With threads the caller holds the lock (:meth:`precheck` does).

        Written as chained reads (``client.r0.tat``, not ``r0 = client.r0``): compiled, a
        local takes a reference, which writes the object's first cache line (its reference
        count) even where only fields in another line are read; the decision, a record's head
        and the travel group's string would be three more cold lines per request.
        """
        if client.ready is None or now >= client.until or client.gen != self.records.gen:
            return False
        if client.r0 is None:
            return True  # allowlisted, or no identity to limit
        if client.sbind is not None and (
                (client.sbind.bgroup is not client.travel  # interned: one test when equal
                 and client.sbind.bgroup != client.travel)
                or (client.sbind.bagent is not client.agent
                    and client.sbind.bagent != client.agent)
                or client.sbind.bexp <= now):
            return False
        if not self._local:  # a shared store: spend what its leases hold
            cost = self._cost
            if (client.r0.ltok < cost or client.r0.luntil <= now
                    or client.r0.ban_until > now):
                return False
            if client.r1 is not None:
                if (client.r1.ltok < cost or client.r1.luntil <= now
                        or client.r1.ban_until > now):
                    return False
                client.r1.ltok -= cost
            client.r0.ltok -= cost
            client.fast += 1
            return True
        k = self._k
        t0 = client.r0.tat
        if t0 < now:
            t0 = now
        t0 += k / (0.5 + client.r0.trust)
        if t0 - now > self._tau or client.r0.ban_until > now:
            return False
        if client.r1 is not None:
            t1 = client.r1.tat
            if t1 < now:
                t1 = now
            t1 += k / (0.5 + client.r1.trust)
            if t1 - now > self._tau or client.r1.ban_until > now:
                return False
            client.r1.tat = t1
        client.r0.tat = t0
        client.fast += 1
        return True

    def check(self, client: Client, now: float) -> Decision | CheckRequest:
        """The full check of a request: a decision from local memory (allowlist, a ban this
        process knows, the memory store), else the :class:`CheckRequest` for the store."""
        self.metrics.full_checks += 1
        if client.allowlisted:  # armed for good (until a sweep moves the generation on)
            client.ready, client.until, client.gen = PASS, _INF, self.records.gen
            client.verdict = None
            client.armed_risk = -1.0
            return PASS
        if self.queued and self.threaded:
            self.drain()  # sync adapters: score what is queued first, so state is current
        if client.gen != self.records.gen:
            self.bind(client, now)
        client.ready = None
        for rec in client.recs:
            if rec.ban_until > now:
                return self._refuse(client, rec.reason or BAN, rec.ban_until - now, 429, None,
                                    now)
        bans: tuple[PendingBan, ...] = ()
        if self._pending:
            with self._lock:
                bans, self._pending = tuple(self._pending), []
        req = CheckRequest(now, client.identities, client.binding, bans, self._cost)
        if self._mem is not None and self.store is self._mem:
            return self.decide(client, self._mem.check(req), now)  # no coroutine for memory://
        return req

    def decide(self, client: Client, result: CheckResult, now: float) -> Decision:
        """Turn the store's answer into a decision; emit events for escalations."""
        if result.degraded:
            self.metrics.store_failures += 1
        if not result.allowed:
            reason = result.reason or BAN
            if reason != THROTTLE and result.culprit:
                with self._lock:  # remember the ban here, so its next request stays local
                    rec = self.records.get(result.culprit, now)
                    until = now + result.retry_after
                    if until > rec.ban_until:
                        rec.ban_until, rec.reason = until, reason
                    if rec.expires < until:
                        rec.expires = until
            if result.event:
                self._escalation_event(client, result, now)
            return self._refuse(client, reason, result.retry_after, 429, None, now)
        decision = self._admit(client, None if result.degraded else result.trust, now)
        if (decision.allowed and not decision.dry_run and not result.degraded
                and (self._local or self._leased)
                and len(client.recs) <= 2):  # three identities (an API key): always in full
            client.ready, client.until = _kept(decision), now + self._refresh
            client.verdict = decision.verdict
            client.armed_risk = _risk_of(decision.verdict)
        return decision

    def _admit(self, client: Client, rate_trust: float | None, now: float) -> Decision:
        """An allowed request's decision, unless the fused verdict distrusts the client."""
        verdict = self.verdict(client, rate_trust, now)
        if verdict.trust < self.options.min_trust:
            reason = BLOCKLIST if verdict.blocklisted else DISTRUST
            return self._refuse(client, reason, self.options.bot_ban, 403, verdict, now)
        if verdict is self._unjudged:  # shared by every client not judged yet (see _plain)
            return self._unjudged_admit
        return Decision(True, None, 0.0, 200, verdict)

    def verdict(self, client: Client, rate_trust: float | None, now: float) -> Verdict:
        """The fused trust verdict of this client right now."""
        if client.gen != self.records.gen:
            self.bind(client, now)
        bot_risk = None
        rec = client.irec
        if rec is not None:
            bot_risk = rec.risk
        rec = client.srec
        if rec is not None:
            risk = rec.risk
            if risk is not None and (bot_risk is None or risk > bot_risk):
                bot_risk = risk
        rep = self.options.reputation
        if rep is None:
            return self._plain(bot_risk, rate_trust)
        reputation, hits, blocklisted = None, 0, False
        if client.ip is not None:
            try:
                reputation = rep.score(client.ip)
                hits = int(rep.honeypot_hits(client.ip))
                blocklisted = bool(rep.is_blocklisted(client.ip))
            except Exception as exc:  # a failing reputation source must not take requests down
                self.internal_error(exc)
        return fuse(bot_risk=bot_risk, reputation=reputation,
                    honeypot_hits=hits, rate_trust=rate_trust, blocklisted=blocklisted,
                    weights=self.options.trust_weights)

    def _plain(self, bot_risk: float | None, rate_trust: float | None) -> Verdict:
        """:func:`fuse` without a reputation source (the common case), inlined: the same
        arithmetic and result without building it up generically on every request."""
        wb, wr = self._w_bot, self._w_rate
        if bot_risk is None:
            if rate_trust is None:
                return _NEUTRAL
            if rate_trust == self._unjudged_rate:
                return self._unjudged  # one shared verdict (immutable) per rate trust
            trust = rate_trust if wr else 0.5
            trust = 0.0 if trust < 0.0 else 1.0 if trust > 1.0 else trust
            shared = Verdict(trust, None, None, 0, rate_trust, False,
                             SharedComponents({"rate": rate_trust}))
            self._unjudged_rate, self._unjudged = rate_trust, shared
            self._unjudged_admit = Decision(True, None, 0.0, 200, shared)
            return shared
        b = 1.0 - bot_risk
        if rate_trust is None:
            parts = {"bot": b}
            trust = b if wb else 0.5
        else:
            parts = {"bot": b, "rate": rate_trust}
            total = wb + wr
            trust = (b * wb + rate_trust * wr) / total if total else 0.5
        trust = 0.0 if trust < 0.0 else 1.0 if trust > 1.0 else trust
        return Verdict(trust, bot_risk, None, 0, rate_trust, False, parts)

    def _rearm(self, client: Client, now: float) -> None:
        """Prepare an armed client's next decision with its current risk and trust (its risk
        changed in scoring); a verdict that would refuse disarms it instead, so the refusal
        goes through :meth:`check` with its events. Caller holds the lock."""
        low = 1.0
        for rec in client.recs:
            if rec.trust < low:
                low = rec.trust
        verdict = self.verdict(client, low if client.recs else None, now)
        if verdict.trust < self.options.min_trust:
            client.ready = None
        else:
            client.ready = _kept(Decision(True, None, 0.0, 200, verdict))
            client.verdict = verdict
            client.armed_risk = _risk_of(verdict)

    def refuse_sql(self, client: Client, finding: Any, where: str, now: float) -> Decision:
        """The decision for a request carrying SQL injection (403), with its event."""
        from garrison.events import SQL_INJECTION

        detail = {
            "ip": client.ip, "where": where,
            "fingerprint": getattr(finding, "fingerprint", ""),
            "reason": getattr(finding, "reason", str(finding)),
            "dry_run": self.options.dry_run,
        }
        self._emit(Event(SQL_INJECTION, now, Severity.HIGH, source_ip=client.ip, detail=detail,
                         message=f"SQL injection in {where} from {client.ip}"))
        return self._refuse(client, "sql-injection", 0.0, 403, None, now)

    def _refuse(self, client: Client, reason: str, retry: float, status: int,
                verdict: Verdict | None, now: float) -> Decision:
        self.metrics.block(reason)
        decision = Decision(False, reason, retry, status, verdict, self.options.dry_run)
        hook = self.options.on_block
        if hook is not None:
            try:
                hook({"ip": client.ip, "reason": reason, "status": status,
                      "retry_after": retry, "dry_run": self.options.dry_run, "ts": now})
            except Exception:
                log.exception("on_block hook failed")
        if self.options.dry_run:
            return Decision(True, reason, retry, 200, verdict, True)
        self.metrics.requests += 1  # a refused request is never queued for scoring
        return decision

    # -- 3. after the response -------------------------------------------------------------
    def after(self, client: Client, path: str, status: int, size: int, now: float) -> None:
        """Queue an answered request for scoring; score the queue when it is full or old.

        Scoring runs in batches (:data:`BATCH` requests, or :data:`BATCH_AGE` seconds after the
        first one; under asyncio a timer drains a batch that traffic leaves behind). One hot
        loop over a batch costs a fraction of scoring each request among the server's own work,
        which evicts the scorer's code and data from the CPU caches between requests. The
        price is that a bot's ban can come up to one batch later.
        """
        paths = self._paths
        info = paths.get(path)
        if info is None:  # a path not seen lately; the request's own string is let go hot
            info = PathInfo(path)
            self._paths_budget.keep(paths, path, info, len(path))
        if self.threaded:
            with self._lock:
                n = self._put(client, info, status, size, now)
        else:
            n = self._put(client, info, status, size, now)
        if n >= BATCH or now - self._first >= BATCH_AGE:
            self.drain()
        elif n == 1 and not self._timer:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop (WSGI, Django): the next request drains it
            self._timer = True
            loop.call_later(BATCH_AGE, self._drain_timer)

    def _put(self, client: Client, info: PathInfo, status: int, size: int,
             now: float) -> int:
        """Fill the next free slot of the batch; the requests now queued."""
        n = self.queued
        batch = self._batch
        if n < len(batch):
            slot = batch[n]
        else:  # threads queued past BATCH before one of them drained: grow, lose nothing
            slot = Answered()
            batch.append(slot)
        slot.client = client
        slot.path = info
        slot.status = status
        slot.size = size
        slot.now = now
        if n == 0:
            self._first = now
        self.queued = n + 1
        return n + 1

    def _drain_timer(self) -> None:
        self._timer = False
        self.drain()

    def drain(self) -> None:
        """Score every queued request now (see :meth:`_score`)."""
        with self._lock:
            n = self.queued
            if not n:
                return
            batch = self._batch
            self._batch, self._spare = self._spare, batch
            self.queued = 0
            t0 = time.perf_counter()
            events = self._score(batch, n)
            self._forget_clients()  # after scoring: binding its clients may have swept
        self.metrics.requests += n
        self.metrics.scoring(time.perf_counter() - t0, n)
        for event in events:
            self._emit(event)
        if not self._local:
            if self._pending:
                self._flush_bans()
            self.store.tell(self.clock())  # the sessions admitted here that it should hear of

    def _score(self, batch: list[Answered], n: int) -> list[Event]:
        """Score the first ``n`` slots of ``batch`` (caller holds the lock), emptying them; the
        events to emit.

        Per request, in one loop (the scorer's code and data stay in the CPU caches for the
        whole batch): the limiter's bookkeeping the fast path left (trust gain per admitted
        request, idle expiry, the session binding's last-seen time), the request added to the
        IP's and the session's history, a fresh risk when due, a ban for a bot, and the client
        re-armed when its risk changed.
        """
        o = self.options
        table = self.records
        mem = self._mem
        retain = self._retain
        gain = self._gain
        bind_ttl = o.travel_session_ttl
        store = self.store
        tell_after = o.travel_window * store.seen_every  # seen() does nothing sooner
        min_requests, window, min_span = o.min_requests, o.window, o.min_span
        threshold, s_threshold, routes = o.threshold, o.session_threshold, bool(o.route_thresholds)
        hot_ip, hot_s = HOT * threshold, HOT * s_threshold
        ip_w, s_w = self._ip_w, self._s_w
        counts = self._counts
        events: list[Event] = []
        for i in range(n):
            slot = batch[i]
            client, info = slot.client, slot.path
            now, status, size = slot.now, slot.status, slot.size
            slot.client = slot.path = None  # let go here, where they are in the caches
            if client is None or info is None:
                continue
            path = info.text
            try:
                if client.allowlisted:
                    continue
                h = info.h
                cls = 0 if status < 400 else 1 if status < 500 else 2
                if client.gen != table.gen:
                    self._bind(client, now)
                keep = now + retain
                owed = client.fast if mem is not None else 0  # trust Redis keeps there
                client.fast = 0
                # the first two records through the client's own fields, not its recs tuple
                # (one more cold object per request); a third (an API key) is rare
                if client.r0 is not None:
                    _settle(client.r0, owed, gain, mem, now, keep)
                    if client.r1 is not None:
                        _settle(client.r1, owed, gain, mem, now, keep)
                        if client.api_key is not None and len(client.recs) > 2:
                            for rec in client.recs[2:]:
                                _settle(rec, owed, gain, mem, now, keep)
                sb = client.sbind
                if sb is not None and mem is not None and sb.bgroup == client.travel:
                    sb.bseen = now
                    sb.bexp = now + bind_ttl
                    if sb.expires < sb.bexp:
                        sb.expires = sb.bexp
                elif (sb is not None and mem is None and now - sb.bseen >= tell_after
                      and client.binding is not None and sb.bexp > now
                      and not store.seen(client.binding, sb, now)):
                    sb.bexp = 0.0  # the shared store cannot hear of it: ask it next time
                changed = False
                # risks as plain floats, -1.0 for "not judged" (Record.score): no boxed floats
                ip_risk = sess_risk = -1.0
                # features as unboxed tuples, requests 0 for none (see NOT_JUDGED)
                ip_feat = sess_feat = NOT_JUDGED
                st = client.irec
                if st is not None:
                    ip_feat = _note(st, now, h, cls, size, hot_ip, ip_w, window, min_requests,
                                    min_span, counts)
                    changed = st.since == 0
                    ip_risk = st.score
                ss = client.srec
                if ss is not None:
                    sess_feat = _note(ss, now, h, cls, size, hot_s, s_w, window, min_requests,
                                      min_span, counts)
                    changed = changed or ss.since == 0
                    sess_risk = ss.score
                if changed and client.ready is not None:
                    # re-arm with the new risk when it moved enough to matter (the verdict's
                    # bot risk is then at most REARM_DELTA stale, or REFRESH seconds old)
                    bot = ip_risk if ip_risk > sess_risk else sess_risk
                    was = client.armed_risk
                    if (bot < 0.0) != (was < 0.0) or (
                            bot >= 0.0 and was >= 0.0
                            and (bot - was >= REARM_DELTA or was - bot >= REARM_DELTA)):
                        self._rearm(client, now)
                if ip_risk < 0.0:
                    final = sess_risk
                elif sess_risk < 0.0:
                    final = ip_risk
                else:
                    final = (ip_risk + sess_risk) / 2.0
                if final < 0.0:
                    continue  # nothing judged yet (a new key): no ban to consider
                if ip_feat[8] and final < threshold:
                    self._learn_baseline(ip_feat[5])  # requests per minute
                if (final >= (o.threshold_for(path) if routes else threshold)
                        or sess_risk >= s_threshold):  # -1.0 never: thresholds are 0..1
                    event = self._judge(client, path, now, final,
                                        ip_risk if ip_risk >= 0.0 else None,
                                        sess_risk if sess_risk >= 0.0 else None,
                                        ip_feat if ip_feat[8] else None,
                                        sess_feat if sess_feat[8] else None)
                    if event is not None:
                        events.append(event)
            except Exception:  # one bad record must not lose the rest of the batch
                log.exception("scoring failed")
        return events

    def _judge(self, client: Client, path: str, now: float, final: float,
               ip_risk: float | None, sess_risk: float | None, ip_feat: Measure | None,
               sess_feat: Measure | None) -> Event | None:
        """Ban a client whose risk reached a threshold (caller holds the lock); the
        ``bot-blocked`` event, or None when it was reported within the last ban."""
        o = self.options
        st, ss = client.irec, client.srec
        targets: list[tuple[str, _records.Record]] = []
        if final >= o.threshold_for(path) and st is not None and client.key:
            targets.append((client.key, st))
            if ss is not None and client.session:
                targets.append((client.session, ss))
        elif (sess_risk is not None and sess_risk >= o.session_threshold
              and ss is not None and client.session):
            targets.append((client.session, ss))
        fresh = [t for t, rec in targets if now - rec.reported >= o.bot_ban]
        if not fresh:
            return None
        for t, rec in targets:
            if t not in fresh:
                continue
            rec.reported = now
            if o.dry_run:
                continue
            if self._mem is not None:
                self._mem.apply_ban(PendingBan(t, o.bot_ban, BOT), now)
                continue
            if now + o.bot_ban > rec.ban_until:
                rec.ban_until, rec.reason = now + o.bot_ban, BOT
            if rec.expires < rec.ban_until:
                rec.expires = rec.ban_until
            if len(self._pending) < _MAX_PENDING:
                self._pending.append(PendingBan(t, o.bot_ban, BOT))
            else:
                self.dropped_bans += 1
        detail = {
            "ip": client.ip, "session": client.session, "path": path,
            "risk": round(final, 3),
            "ip_risk": None if ip_risk is None else round(ip_risk, 3),
            "session_risk": None if sess_risk is None else round(sess_risk, 3),
            "ip_features": Features(*ip_feat).as_dict() if ip_feat else None,
            "session_features": Features(*sess_feat).as_dict() if sess_feat else None,
            "banned": fresh, "ban_seconds": o.bot_ban, "dry_run": o.dry_run,
        }
        return Event(BOT_BLOCKED, now, Severity.HIGH, source_ip=client.ip, detail=detail,
                     message=f"bot blocked: {client.ip}")

    def _flush_bans(self) -> None:
        """Send the bans scoring decided to a shared store now, not with some later request's
        check: under asyncio as a task, otherwise at once (the response has gone out)."""
        with self._lock:
            bans, self._pending = tuple(self._pending), []
        if not bans:
            return
        req = CheckRequest(self.clock(), (), None, bans, self._cost)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.store.check(req)  # fails open and keeps the bans queued in the store
            return
        task = loop.create_task(self.store.acheck(req))
        self._tasks.add(task)  # hold it until done (the loop keeps only a weak reference)
        task.add_done_callback(self._tasks.discard)

    def _learn_baseline(self, rpm: float) -> None:
        """Fold one client's request rate (per minute) into the baseline and rescale limits.

        The baseline is an exponentially weighted mean of the rates of clients that were
        scored and not judged bots. When ``adaptive_limits`` is on, every identity's rate limit
        is at least ``baseline_headroom`` times the baseline rate, up to ``max_rate_scale``
        times the configured rate; it never drops below the configured rate, so nobody can
        talk the limits down, and talking them up is capped.
        """
        self.baseline_rpm += 0.02 * (rpm - self.baseline_rpm)
        o = self.options
        if o.adaptive_limits:
            rate = self.store.policy.rate
            wanted = o.baseline_headroom * self.baseline_rpm / 60.0 / rate
            self._cost = 1.0 / max(1.0, min(wanted, o.max_rate_scale))
            self._k = self._cost / rate

    @property
    def rate_scale(self) -> float:
        """How far the adaptive baseline has raised the rate limits (1.0: not at all)."""
        return 1.0 / self._cost

    def internal_error(self, exc: BaseException) -> None:
        """A failure inside the middleware itself: the request passes (fail open), the error is
        counted and logged at most once per minute (with how many were not logged)."""
        self.metrics.internal_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:
            log.error("garrison web middleware failed; request passed unchecked "
                      "(%d earlier failures not logged)", self._unlogged_errors,
                      exc_info=(type(exc), exc, exc.__traceback__))
            self._last_error_log = now
            self._unlogged_errors = 0
        else:
            self._unlogged_errors += 1

    # -- events ----------------------------------------------------------------------------
    def _escalation_event(self, client: Client, result: CheckResult, now: float) -> None:
        if result.event == EV_TRAVEL:
            detail = {"ip": client.ip, "session": result.culprit, "from": result.bound_group,
                      "to": client.travel, "ban_seconds": result.retry_after,
                      "dry_run": self.options.dry_run}
            self._emit(Event(IMPOSSIBLE_TRAVEL, now, Severity.HIGH, source_ip=client.ip,
                             detail=detail,
                             message=f"session moved from {result.bound_group} to {client.ip}"))
            return
        severity = {EV_THROTTLE_START: Severity.LOW, EV_BACKOFF: Severity.MEDIUM,
                    EV_BAN: Severity.HIGH}.get(result.event or "", Severity.LOW)
        detail = {"ip": client.ip, "identity": result.culprit, "level": result.reason,
                  "retry_after": round(result.retry_after, 3), "trust": round(result.trust, 3),
                  "dry_run": self.options.dry_run}
        self._emit(Event(RATE_LIMITED, now, severity, source_ip=client.ip, detail=detail,
                         message=f"rate limited ({result.reason}): {result.culprit}"))

    def _emit(self, event: Event) -> None:
        try:
            self.bus.emit(event)
        except Exception:  # the bus isolates handlers; this guards the request regardless
            log.exception("emitting %s failed", event.name)
