"""The store protocol for web state: rate limits, bans and session bindings, chosen by a URL.

One request asks the store one question (:meth:`LimitStore.check`): are any of these identities
banned, does this session still belong to where it started, and may each identity spend one
request under its rate limit? The answer comes back in one call (one Redis round trip), together
with any bans the caller queued since its last call, so a request never costs two trips.

The algorithm is GCRA (generic cell rate algorithm) with per-identity trust and escalation:

* every identity has a *trust* in 0..1 (starts at :attr:`LimitPolicy.initial_trust`); staying
  under the limit raises it, each refused request lowers it; the identity's allowed rate and
  burst are ``rate * (0.5 + trust)`` and ``burst * (0.5 + trust)``, so good behaviour earns up
  to 1.5x the base limits and bad behaviour sinks to 0.5x;
* a refused request is a *throttle* (wait ``retry_after`` seconds); ``strikes`` throttles within
  ``strike_window`` seconds turn into a *back-off* (refused for ``backoff`` seconds); the
  ``offences_to_ban``-th offence is a *ban*, and every further offence doubles the ban (capped
  at ``max_ban``). Offences are remembered for ``offence_memory`` seconds.

The same rules run in Python (memory store) and in Lua (Redis store); the tests run one scenario
suite against both.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from garrison.store.records import RecordTable

# Reasons a request is refused; they appear in events, metrics and the 429 body.
THROTTLE: Final = "throttle"
BACKOFF: Final = "backoff"
BAN: Final = "ban"
BOT: Final = "bot"
TRAVEL: Final = "impossible-travel"

# Escalation events a check can report (what changed with this request).
EV_THROTTLE_START: Final = "throttle-start"
EV_BACKOFF: Final = "backoff"
EV_BAN: Final = "ban"
EV_TRAVEL: Final = "impossible-travel"


class StoreError(Exception):
    """The store could not answer (down, slow, or replied nonsense)."""


class StoreURLError(ValueError):
    """A store URL that names no known backend or is malformed."""


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """Rate-limit and escalation parameters. Rates in requests per second, times in seconds."""

    rate: float = 10.0
    burst: float = 50.0
    initial_trust: float = 0.5
    trust_gain: float = 0.002
    trust_loss: float = 0.05
    strikes: int = 20
    strike_window: float = 60.0
    backoff: float = 30.0
    offences_to_ban: int = 3
    ban: float = 600.0
    max_ban: float = 86400.0
    offence_memory: float = 86400.0
    idle_ttl: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("rate", "burst", "strike_window", "backoff", "ban", "max_ban", "idle_ttl"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"LimitPolicy.{name} must be a positive number, got {value!r}")
        if not 0.0 <= self.initial_trust <= 1.0:
            raise ValueError(f"LimitPolicy.initial_trust must be in 0..1, got {self.initial_trust}")
        if self.strikes < 1 or self.offences_to_ban < 1:
            raise ValueError("LimitPolicy.strikes and offences_to_ban must be >= 1")


class Binding(NamedTuple):
    """Where a session is: its travel group (an address or prefix) and user-agent hash.

    The same session from another group within ``window`` seconds of its last request is
    impossible travel (the session is banned for ``ban`` seconds); after a quiet ``window`` it
    simply moves (a laptop going from home Wi-Fi to a phone tether). ``ttl``: seconds a
    binding lives without requests.
    """

    session: str
    group: str
    agent: str = ""
    ttl: float = 86400.0
    ban: float = 600.0
    window: float = 60.0


class PendingBan(NamedTuple):
    """A ban decided off the request path (by scoring), to be written with the next check.

    ``duration`` (seconds) is the first-offence length; repeat offenders get it doubled per
    earlier offence, capped at the policy's ``max_ban``.
    """

    identity: str
    duration: float
    reason: str


class CheckRequest(NamedTuple):
    """One request's question to the store. ``now`` in seconds since the epoch."""

    now: float
    identities: tuple[str, ...]
    binding: Binding | None = None
    bans: tuple[PendingBan, ...] = ()
    cost: float = 1.0


class CheckResult(NamedTuple):
    """The store's answer.

    ``retry_after`` in seconds (0 when allowed); ``trust`` the lowest rate-limit trust among the
    identities (0..1); ``event`` what escalated with this request (``EV_*``) or None; ``culprit``
    the identity that caused a refusal; ``bound_group`` the session's original group on travel;
    ``ban_until`` for each pending ban written, when it ends (seconds since the epoch).
    """

    allowed: bool
    reason: str | None = None
    retry_after: float = 0.0
    trust: float = 0.5
    event: str | None = None
    culprit: str | None = None
    bound_group: str | None = None
    degraded: bool = False
    ban_until: tuple[float, ...] = ()


OPEN: Final = CheckResult(allowed=True, degraded=True)
"""What a store that cannot answer says: let the request through (fail open)."""


class LimitStore(ABC):
    """Where rate limits, bans and session bindings live; one per middleware instance.

    A store that keeps local state per identity does it in ``records`` (guarded by ``lock``),
    which the web engine then shares instead of keeping a table of its own; None otherwise.
    """

    policy: LimitPolicy
    records: RecordTable | None = None
    lock: Any = None
    seen_every: float = 0.125
    """The part of a session's travel window after which :meth:`seen` queues it again (it does
    nothing sooner): read by the web engine too, which then skips the call."""

    @abstractmethod
    def check(self, req: CheckRequest) -> CheckResult:
        """Answer ``req`` (blocking; for WSGI and Django). Never raises: fails open."""

    @abstractmethod
    async def acheck(self, req: CheckRequest) -> CheckResult:
        """Answer ``req`` without blocking the event loop (for ASGI). Never raises."""

    def answers(self) -> dict[str, int]:
        """Checks answered so far, by where the answer came from (for metrics); a store that
        answers every check alike reports nothing."""
        return {}

    def seen(self, binding: Binding, rec: Any, now: float) -> bool:
        """A request of session ``binding`` was admitted at ``now`` on a binding this worker
        holds as confirmed (``rec`` the session's record), without asking the store: a shared
        store queues it for :meth:`tell`. False when the confirmation must not stand (the
        queue is full): the session's next request then asks the store. A store that answers
        every check itself has nothing to hear."""
        return True

    def tell(self, now: float) -> None:  # noqa: B027 - optional hook, nothing queued by default
        """Send what :meth:`seen` queued, if it is time (under asyncio as a task, otherwise at
        once); never raises."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    async def aclose(self) -> None:
        """Release connections (async)."""
        self.close()


def _lease_params(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without the query parameters Garrison reads itself (``lease_ttl``, seconds;
    ``lease_max``, requests; see :class:`~garrison.store.redis.RedisStore`), and their values.
    Any other parameter stays in the URL, for the Redis client."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    kept: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in ("lease_ttl", "lease_max"):
            kept.append((name, value))
            continue
        try:
            out[name] = float(value) if name == "lease_ttl" else int(value)
        except ValueError:
            raise StoreURLError(f"store URL parameter {name}={value!r} is not a number") from None
    return urlunsplit(parts._replace(query=urlencode(kept))), out


def open_store(url: str, policy: LimitPolicy | None = None, *, timeout: float = 0.05,
               namespace: str = "garrison", max_keys: int = 200_000) -> LimitStore:
    """A store for ``url``: ``memory://`` or ``redis://host:port/db`` (``rediss://`` too;
    ``?lease_ttl=60&lease_max=12`` set the Redis store's leases).

    ``timeout`` (seconds) bounds every Redis call before the request fails open; ``max_keys``
    caps the identities a store keeps locally.
    """
    policy = policy or LimitPolicy()
    if not isinstance(url, str):
        raise StoreURLError(f"store URL must be a string, got {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from garrison.store.memory import MemoryStore

        return MemoryStore(policy, max_identities=max_keys)
    if scheme in ("redis", "rediss"):
        from garrison.store.redis import RedisStore

        url, leases = _lease_params(url)
        try:
            return RedisStore(url, policy, timeout=timeout, namespace=namespace,
                              max_local=max_keys, **leases)
        except ValueError as exc:
            if isinstance(exc, StoreURLError):
                raise
            raise StoreURLError(f"bad store URL {url!r}: {exc}") from None
    raise StoreURLError(f"unknown store URL {url!r}: expected memory:// or redis://host:port/db")
