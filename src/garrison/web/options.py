"""The keyword options shared by the ASGI, WSGI and Django middleware (same names in all three).

Times in seconds, rates in requests per second, sizes in bytes, scores 0..1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from garrison.bus import EventBus
from garrison.store.base import LimitPolicy
from garrison.web.behaviour import IP_WEIGHTS, SESSION_WEIGHTS
from garrison.web.verdict import DEFAULT_TRUST_WEIGHTS, ReputationSource

TravelTolerance = Literal["prefix", "exact", "off"]


@dataclass(frozen=True)
class WebOptions:
    """Everything the middleware can be told. Unknown keyword names are a ``TypeError``.

    Scoring: ``threshold`` (final risk that blocks), ``session_threshold`` (session risk that
    blocks), ``route_thresholds`` (path prefix -> threshold, longest prefix wins),
    ``min_requests`` / ``min_span`` (history needed before judging), ``window`` (seconds of
    history that count), ``ip_weights`` / ``session_weights``, ``bot_ban`` (first ban, doubled
    per repeat offence). Rate limits: ``rate``, ``burst`` or a whole ``limit_policy``;
    ``adaptive_limits`` raises them to ``baseline_headroom`` times the typical client's rate,
    at most ``max_rate_scale`` times the configured one.
    Identity: ``trusted_proxies`` (CIDRs whose forwarding header is believed),
    ``forwarded_header``, ``ipv4_prefix`` / ``ipv6_prefix`` (grouping), ``session_cookie`` /
    ``session_header``, ``api_key_header``. Hijack: ``travel_tolerance`` ("prefix": same
    ``travel_ipv4_prefix`` / ``travel_ipv6_prefix``, "exact", "off"), ``bind_user_agent``,
    ``travel_window`` (a move after this many quiet seconds is a move, not travel),
    ``travel_session_ttl`` (how long a quiet session stays bound),
    ``travel_ban``. Verdict: ``reputation``, ``trust_weights``, ``min_trust``. Behaviour:
    ``dry_run``, ``allowlist``, ``exempt_paths``, ``on_block``, ``bus``, ``clock``,
    ``metrics_path``. SQL: ``sql_firewall``, ``sql_paranoia``, ``sql_exempt_paths``,
    ``max_body``. State: ``store`` (``memory://``, or ``redis://host:port/db``, whose
    ``?lease_ttl=60&lease_max=12`` set how long and how many requests a worker may answer from
    a lease before asking Redis again), ``store_timeout``, ``max_ips``, ``max_sessions``.
    """

    store: str = "memory://"
    threshold: float = 0.5
    session_threshold: float = 0.6
    dry_run: bool = False
    route_thresholds: Mapping[str, float] = field(default_factory=dict)
    allowlist: Iterable[str] = ()
    exempt_paths: Iterable[str] = ()
    on_block: Callable[[Any], Any] | None = None
    bus: EventBus | None = None
    reputation: ReputationSource | None = None
    clock: Callable[[], float] = time.time
    min_requests: int = 8
    min_span: float = 5.0
    window: float = 120.0
    ip_weights: Mapping[str, float] = field(default_factory=lambda: dict(IP_WEIGHTS))
    session_weights: Mapping[str, float] = field(default_factory=lambda: dict(SESSION_WEIGHTS))
    bot_ban: float = 600.0
    rate: float = 10.0
    burst: float = 50.0
    limit_policy: LimitPolicy | None = None
    adaptive_limits: bool = True
    baseline_headroom: float = 4.0
    max_rate_scale: float = 2.0
    trusted_proxies: Iterable[str] = ()
    forwarded_header: str = "x-forwarded-for"
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    session_cookie: str | None = "session"
    session_header: str | None = None
    api_key_header: str | None = None
    travel_tolerance: TravelTolerance = "prefix"
    travel_ipv4_prefix: int = 24
    travel_ipv6_prefix: int = 64
    bind_user_agent: bool = False
    travel_ban: float = 600.0
    travel_window: float = 60.0
    travel_session_ttl: float = 86400.0
    trust_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_TRUST_WEIGHTS)
    )
    min_trust: float = 0.1
    sql_firewall: bool = False
    sql_paranoia: int = 1
    sql_exempt_paths: Iterable[str] = ()
    max_body: int = 64 * 1024
    store_timeout: float = 0.05
    max_ips: int = 100_000
    max_sessions: int = 100_000
    metrics_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "session_threshold", "min_trust"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {value!r}")
        for path, value in self.route_thresholds.items():
            if not path.startswith("/") or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"route_thresholds: expected '/prefix': 0..1, got {path!r}: {value!r}"
                )
        if self.travel_tolerance not in ("prefix", "exact", "off"):
            raise ValueError(
                f"travel_tolerance must be 'prefix', 'exact' or 'off', "
                f"got {self.travel_tolerance!r}"
            )
        if not 1 <= self.sql_paranoia <= 4:
            raise ValueError(f"sql_paranoia must be 1..4, got {self.sql_paranoia!r}")
        if self.min_requests < 3:
            raise ValueError(f"min_requests must be >= 3, got {self.min_requests!r}")
        for name in ("min_span", "window", "bot_ban", "travel_ban", "travel_window",
                     "travel_session_ttl", "store_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.baseline_headroom <= 0 or self.max_rate_scale < 1:
            raise ValueError("baseline_headroom must be > 0 and max_rate_scale >= 1")
        if self.max_ips < 16 or self.max_sessions < 16 or self.max_body < 0:
            raise ValueError("max_ips and max_sessions must be >= 16, max_body >= 0")
        if self.on_block is not None and not callable(self.on_block):
            raise ValueError(f"on_block must be callable, got {self.on_block!r}")
        if self.reputation is not None and not isinstance(self.reputation, ReputationSource):
            raise ValueError(
                "reputation must have score(ip), is_blocklisted(ip) and honeypot_hits(ip)"
            )

    def policy(self) -> LimitPolicy:
        """The rate-limit policy: ``limit_policy`` if given, else built from rate and burst."""
        return self.limit_policy or LimitPolicy(rate=self.rate, burst=self.burst)

    def threshold_for(self, path: str) -> float:
        """The final-risk threshold for ``path`` (longest matching route prefix wins)."""
        best, best_len = self.threshold, -1
        for prefix, value in self.route_thresholds.items():
            if path.startswith(prefix) and len(prefix) > best_len:
                best, best_len = value, len(prefix)
        return best
