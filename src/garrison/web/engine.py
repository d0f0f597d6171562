"""The one engine under the ASGI, WSGI and Django middleware.

Per request, three steps, each called by the adapter:

1. :meth:`WebEngine.identify` names the client (address from the socket or a trusted proxy,
   its group, its session and API key as hashes: raw cookies are never stored).
2. :meth:`WebEngine.precheck` answers from local memory when it can (allowlist, exempt path,
   a ban this process already knows); otherwise it returns the one :class:`CheckRequest` the
   adapter sends to the store, and :meth:`WebEngine.decide` turns the store's answer into a
   :class:`Decision` (and a fused :class:`Verdict`).
3. After the response has been sent, :meth:`WebEngine.after` scores the client's behaviour; a
   bot is banned locally at once and the ban goes to the store with the next check.

Time comes from ``options.clock`` (seconds since the epoch), read by the adapters and passed in,
so scenarios can run on simulated time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from garrison.bus import EventBus
from garrison.events import BOT_BLOCKED, IMPOSSIBLE_TRAVEL, RATE_LIMITED, Event, Severity
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
from garrison.web.behaviour import History, path_hash
from garrison.web.clientaddr import AddressPolicy, IPAddress, parse_ip, parse_networks
from garrison.web.lru import BoundedMap
from garrison.web.metrics import WebMetrics
from garrison.web.options import WebOptions
from garrison.web.verdict import Verdict, fuse

log = logging.getLogger("garrison.web")

DISTRUST: Final = "distrust"
BLOCKLIST: Final = "blocklist"
_MAX_PENDING: Final = 10_000
_ADDR_CACHE: Final = 65_536
"""Resolved (peer, forwarding header) pairs kept; cleared when full."""
SCORE_EVERY: Final = 8
"""A key that looks harmless is re-scored every this many requests (bounded delay); one whose
risk is past :data:`HOT` of its threshold, on every request."""
HOT: Final = 0.6

_Where = tuple[str | None, str | None, str | None, bool]

# Header names (lower case) the engine may read.
USER_AGENT: Final = "user-agent"
COOKIE: Final = "cookie"


class Client(NamedTuple):
    """Who sent a request. ``key``/``session``/``api_key`` are store identities (hashed)."""

    ip: str | None
    key: str | None
    travel: str | None
    session: str | None
    api_key: str | None
    agent: str
    allowlisted: bool
    identities: tuple[str, ...]


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


class _Tracked(History):
    """A key's history plus its latest risk (None: not judged yet)."""

    __slots__ = ("risk", "since")

    def __init__(self) -> None:
        super().__init__()
        self.risk: float | None = None
        self.since = 0

    def rescore(self, min_requests: int, threshold: float) -> bool:
        """True when this request should (re-)score the key: when it first has enough history,
        on every request while its risk is near ``threshold``, else every
        :data:`SCORE_EVERY` requests."""
        self.since += 1
        risk = self.risk
        if (self.since >= SCORE_EVERY or self.count == min_requests
                or (risk is not None and risk >= HOT * threshold)):
            self.since = 0
            return True
        return False


def _hash(kind: str, value: str) -> str:
    return kind + hashlib.blake2b(value.encode("utf-8", "surrogateescape"),
                                  digest_size=12).hexdigest()


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
        self.store = store or open_store(o.store, o.policy(), timeout=o.store_timeout)
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
        self.ips: BoundedMap[_Tracked] = BoundedMap(o.max_ips, max(o.window, 600.0))
        self.sessions: BoundedMap[_Tracked] = BoundedMap(o.max_sessions, max(o.window, 600.0))
        max_ban = self.store.policy.max_ban
        self.bans: BoundedMap[tuple[float, str]] = BoundedMap(o.max_ips + o.max_sessions, max_ban)
        self.reported: BoundedMap[float] = BoundedMap(o.max_ips + o.max_sessions, o.bot_ban)
        self._pending: list[PendingBan] = []
        self._lock = threading.Lock()
        self._ip_weights = dict(o.ip_weights)
        self._session_weights = dict(o.session_weights)
        self.metrics = WebMetrics()
        self.metrics.gauges = {"ip": lambda: len(self.ips), "session": lambda: len(self.sessions)}
        self.dropped_bans = 0
        self._warned_forwarding = False
        self._last_error_log = -1e18
        self.baseline_rpm = 0.0
        self._cost = 1.0
        self._unlogged_errors = 0
        self._addr_cache: dict[tuple[str | None, str | None], _Where] = {}
        # Whole clients by the raw values they were derived from: a returning client costs one
        # dict lookup instead of a cookie parse and two hashes (bounded like _addr_cache).
        self._client_cache: dict[tuple[str | None, ...], Client] = {}
        self._session_header = o.session_header.lower() if o.session_header else None
        self._api_header = o.api_key_header.lower() if o.api_key_header else None
        # Header names the adapters should collect for identify() (lower case).
        wanted = {USER_AGENT, COOKIE, self.addresses.forwarded_header}
        for name in (o.session_header, o.api_key_header):
            if name:
                wanted.add(name.lower())
        self.header_names = frozenset(wanted)

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
        cache = self._client_cache
        if len(cache) >= _ADDR_CACHE:
            cache.clear()  # a flood of new clients: start over, stay bounded
        cache[ck] = client
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
            agent = _hash("", headers.get(USER_AGENT, ""))
        session = _hash("s:", session_raw) if session_raw else None
        api_key = _hash("k:", api_raw) if api_raw else None
        key = where[1]
        if api_key is None:
            identities: tuple[str, ...] = ((key, session) if key and session
                                           else (key,) if key else (session,) if session else ())
        else:
            identities = tuple(i for i in (key, session, api_key) if i)
        return Client(where[0], key, where[2], session, api_key, agent, where[3], identities)

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
                self.addresses.travel_group(ip, o.travel_tolerance)
                if o.travel_tolerance != "off" else None,
                self._allowlisted(ip),
            )
        if len(self._addr_cache) >= _ADDR_CACHE:
            self._addr_cache.clear()  # a flood of new addresses: start over, stay bounded
        self._addr_cache[(peer, fwd)] = where
        return where

    def _allowlisted(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.allowlist)

    def is_exempt(self, path: str) -> bool:
        """True when ``path`` starts with one of ``exempt_paths`` (one C call, no generator)."""
        return bool(self.exempt) and path.startswith(self.exempt)

    def sql_applies(self, path: str) -> bool:
        return self.options.sql_firewall and not (
            self.sql_exempt and path.startswith(self.sql_exempt))

    # -- 2. before the app -----------------------------------------------------------------
    def precheck(self, client: Client, now: float) -> Decision | CheckRequest:
        """A decision from local memory, or the question to put to the store."""
        self.metrics.seen()
        if client.allowlisted:
            return PASS
        bans: tuple[PendingBan, ...] = ()
        banned = self.bans._data  # one dict lookup per identity for keys with no ban
        if banned or self._pending:
            with self._lock:
                for ident in client.identities:
                    if ident in banned:
                        hit = self.bans.get(ident, now)
                        if hit is not None and hit[0] > now:
                            return self._refuse(client, hit[1], hit[0] - now, 429, None, now)
                if self._pending:
                    bans, self._pending = tuple(self._pending), []
        binding = None
        if client.session and client.travel:
            o = self.options
            binding = Binding(client.session, client.travel, client.agent, o.travel_session_ttl,
                              o.travel_ban, o.travel_window)
        return CheckRequest(now, client.identities, binding, bans, self._cost)

    def decide(self, client: Client, result: CheckResult, now: float) -> Decision:
        """Turn the store's answer into a decision; emit events for escalations."""
        if result.degraded:
            self.metrics.store_failures += 1
        if not result.allowed:
            reason = result.reason or BAN
            if reason != THROTTLE and result.culprit:
                with self._lock:
                    self.bans.put(result.culprit, (now + result.retry_after, reason), now)
            if result.event:
                self._escalation_event(client, result, now)
            return self._refuse(client, reason, result.retry_after, 429, None, now)
        verdict = self.verdict(client, None if result.degraded else result.trust, now)
        if verdict.trust < self.options.min_trust:
            reason = BLOCKLIST if verdict.blocklisted else DISTRUST
            return self._refuse(client, reason, self.options.bot_ban, 403, verdict, now)
        return Decision(True, None, 0.0, 200, verdict)

    def verdict(self, client: Client, rate_trust: float | None, now: float) -> Verdict:
        """The fused trust verdict of this client right now."""
        bot_risk = None
        key = client.key
        if key:
            item = self.ips._data.get(key)  # peek: read-only, no expiry bookkeeping
            if item is not None:
                bot_risk = item[1].risk
        key = client.session
        if key:
            item = self.sessions._data.get(key)
            if item is not None:
                risk = item[1].risk
                if risk is not None and (bot_risk is None or risk > bot_risk):
                    bot_risk = risk
        rep = self.options.reputation
        reputation, hits, blocklisted = None, 0, False
        if rep is not None and client.ip is not None:
            try:
                reputation = rep.score(client.ip)
                hits = int(rep.honeypot_hits(client.ip))
                blocklisted = bool(rep.is_blocklisted(client.ip))
            except Exception as exc:  # a failing reputation source must not take requests down
                self.internal_error(exc)
        return fuse(bot_risk=bot_risk, reputation=reputation,
                    honeypot_hits=hits, rate_trust=rate_trust, blocklisted=blocklisted,
                    weights=self.options.trust_weights)

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
        return decision

    # -- 3. after the response -------------------------------------------------------------
    def after(self, client: Client, path: str, status: int, size: int, now: float) -> None:
        """Score the client's behaviour now that the response is out; ban a bot."""
        if client.allowlisted:
            return
        t0 = time.perf_counter()
        o = self.options
        h = path_hash(path)
        with self._lock:
            ip_risk = sess_risk = None
            ip_feat = sess_feat = None
            if client.key:
                st = self.ips.get_or_create(client.key, now, _Tracked)
                st.add(now, h, status, size)
                if st.rescore(o.min_requests, o.threshold):
                    ip_feat = st.features(now, o.window, o.min_requests, o.min_span)
                    st.risk = ip_feat.risk(self._ip_weights) if ip_feat else None
                ip_risk = st.risk
            if client.session:
                ss = self.sessions.get_or_create(client.session, now, _Tracked)
                ss.add(now, h, status, size)
                if ss.rescore(o.min_requests, o.session_threshold):
                    sess_feat = ss.features(now, o.window, o.min_requests, o.min_span)
                    ss.risk = sess_feat.risk(self._session_weights) if sess_feat else None
                sess_risk = ss.risk
            if ip_risk is None:
                final = sess_risk
            elif sess_risk is None:
                final = ip_risk
            else:
                final = (ip_risk + sess_risk) / 2.0
            if final is None:
                self.metrics.scoring(time.perf_counter() - t0)
                return  # nothing judged yet (a new key): no ban to consider
            if ip_feat is not None and final is not None and final < o.threshold:
                self._learn_baseline(ip_feat.rpm)
            targets: list[str] = []
            if final is not None and final >= o.threshold_for(path) and client.key:
                targets.append(client.key)
                if client.session:
                    targets.append(client.session)
            elif sess_risk is not None and sess_risk >= o.session_threshold and client.session:
                targets.append(client.session)
            fresh = [t for t in targets if self.reported.get(t, now) is None]
            for t in fresh:
                self.reported.put(t, now, now)
                if not o.dry_run:
                    self.bans.put(t, (now + o.bot_ban, BOT), now)
                    if len(self._pending) < _MAX_PENDING:
                        self._pending.append(PendingBan(t, o.bot_ban, BOT))
                    else:
                        self.dropped_bans += 1
        if fresh:
            detail = {
                "ip": client.ip, "session": client.session, "path": path,
                "risk": round(final or 0.0, 3),
                "ip_risk": None if ip_risk is None else round(ip_risk, 3),
                "session_risk": None if sess_risk is None else round(sess_risk, 3),
                "ip_features": ip_feat.as_dict() if ip_feat else None,
                "session_features": sess_feat.as_dict() if sess_feat else None,
                "banned": fresh, "ban_seconds": o.bot_ban, "dry_run": o.dry_run,
            }
            self._emit(Event(BOT_BLOCKED, now, Severity.HIGH, source_ip=client.ip,
                             detail=detail, message=f"bot blocked: {client.ip}"))
        self.metrics.scoring(time.perf_counter() - t0)

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
            wanted = o.baseline_headroom * self.baseline_rpm / 60.0 / self.store.policy.rate
            self._cost = 1.0 / max(1.0, min(wanted, o.max_rate_scale))

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
