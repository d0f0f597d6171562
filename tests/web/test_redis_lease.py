"""Local leases of the Redis store, against a real redis-server and simulated time (``now``).

Every store here is a separate :class:`RedisStore` (a "worker") on one namespace, so they share
state only through Redis, as uvicorn workers or hosts do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from garrison.store.base import (
    BACKOFF,
    BOT,
    EV_TRAVEL,
    THROTTLE,
    TRAVEL,
    Binding,
    CheckRequest,
    CheckResult,
    LimitPolicy,
    PendingBan,
)
from garrison.store.redis import CircuitBreaker, RedisStore
from tests.web.conftest import RedisServer

T0 = 1_800_000_000.0
# 10 req/s, burst 100 at the initial trust (0.5) and no trust drift: 100 requests at once, then
# one per 0.1 s; a round trip on a fresh identity leases min(8, floor(99 / 4)) = 8 requests.
POLICY = LimitPolicy(rate=10.0, burst=100.0, strikes=3, strike_window=60.0, backoff=30.0,
                     offences_to_ban=5, trust_gain=0.0, trust_loss=0.0)
# The same limits without escalation, so a flood keeps getting its refill.
STEADY = LimitPolicy(rate=10.0, burst=100.0, strikes=10**9, trust_gain=0.0, trust_loss=0.0)
# A deep bucket: one round trip leases thousands of requests, so a worker answers a session
# alone for as long as its binding's confirmation lasts.
DEEP = LimitPolicy(rate=10.0, burst=10_000.0, strikes=10**9, trust_gain=0.0, trust_loss=0.0)
BURST = 100  # requests
RATE = 10.0  # requests per second

Make = Callable[..., RedisStore]


@pytest.fixture
def make(redis_server: RedisServer) -> Iterator[Make]:
    """Stores ("workers") on one namespace of the test's redis-server."""
    made: list[RedisStore] = []

    def new(**kw: Any) -> RedisStore:
        kw.setdefault("timeout", 1.0)
        kw.setdefault("lease_ttl", 5.0)  # the timelines below are written for 5 s leases
        kw.setdefault("lease_max", 8)  # of 8 requests
        s = RedisStore(redis_server.url, kw.pop("policy", POLICY), namespace="lease", **kw)
        made.append(s)
        return s

    yield new
    for s in made:
        s.close()


def ask(s: RedisStore, now: float, *ids: str, **kw: Any) -> CheckResult:
    r = s.check(CheckRequest(now, ids, **kw))
    assert not r.degraded
    return r


def test_leases_answer_locally_until_spent_or_expired(make: Make) -> None:
    s = make()
    assert ask(s, T0, "ip:a").allowed
    assert (s.round_trips, s.local_answers) == (1, 0)
    for _ in range(8):  # the lease: no round trip
        assert ask(s, T0, "ip:a").allowed
    assert (s.round_trips, s.local_answers) == (1, 8)
    assert ask(s, T0, "ip:a").allowed  # lease spent: Redis again, which leases 8 more
    assert s.round_trips == 2
    assert ask(s, T0 + 4.99, "ip:a").allowed
    assert (s.round_trips, s.local_answers) == (2, 9)
    assert ask(s, T0 + 5.0, "ip:a").allowed  # tokens left, but the lease (5 s) has expired
    assert s.round_trips == 3
    assert ask(s, T0 + 5.0, "ip:b").allowed  # another identity has its own lease
    assert s.round_trips == 4


def test_lease_with_session_binding_needs_the_same_group_and_agent(make: Make) -> None:
    s = make()
    home = Binding("s:1", "198.51.100.0/24", "ua1")
    assert ask(s, T0, "ip:1", "s:1", binding=home).allowed
    assert ask(s, T0 + 1, "ip:1", "s:1", binding=home).allowed
    assert s.round_trips == 1
    # same group, another user agent: not confirmed locally; Redis decides (travel)
    r = ask(s, T0 + 2, "ip:1", "s:1", binding=home._replace(agent="ua2"))
    assert s.round_trips == 2 and not r.allowed and r.reason == TRAVEL
    # the session is banned now: its lease is gone and Redis refuses it
    r = ask(s, T0 + 3, "ip:1", "s:1", binding=home)
    assert s.round_trips == 3 and r.reason == TRAVEL


async def test_async_leases_answer_locally(make: Make) -> None:
    s = make()
    first = await s.acheck(CheckRequest(T0, ("ip:a", "s:a")))
    rest = [await s.acheck(CheckRequest(T0, ("ip:a", "s:a"))) for _ in range(8)]
    assert first.allowed and all(r.allowed and not r.degraded for r in rest)
    assert (s.round_trips, s.local_answers) == (1, 8)
    await s.aclose()


def _flood(stores: list[RedisStore], start: float, seconds: float, step: float,
           per_step: int, ident: str = "ip:flood") -> list[tuple[float, int]]:
    """Each store asks ``per_step`` times for ``ident`` every ``step`` seconds; returns
    (time, allowed so far) after every step."""
    allowed = 0
    out = []
    n = round(seconds / step)
    for i in range(n + 1):
        now = start + i * step
        for _ in range(per_step):
            for s in stores:
                allowed += ask(s, now, ident).allowed
        out.append((now, allowed))
    return out


def test_two_workers_never_exceed_the_limit_together(make: Make) -> None:
    a, b = make(policy=STEADY), make(policy=STEADY)
    history = _flood([a, b], T0, 20.0, 0.05, 3)
    for now, allowed in history:  # burst plus refill, at every moment
        assert allowed <= BURST + RATE * (now - T0) + 1e-6, (now, allowed)
    total = history[-1][1]
    limit = BURST + RATE * 20.0
    assert total >= limit - 2 * 8 - 1  # stricter by at most the leases left over per worker
    assert a.local_answers > 0 and b.local_answers > 0


def test_a_lease_spent_late_never_adds_to_a_refilled_bucket(make: Make) -> None:
    """A worker leases 8 requests, stays quiet while the bucket refills, then both workers
    flood: the leased tokens still count, so the instant burst stays within the limit."""
    a, b = make(policy=STEADY), make(policy=STEADY)
    assert ask(a, T0, "ip:late").allowed  # a leases 8
    history = _flood([a, b], T0 + 4.9, 0.0, 1.0, 200, "ip:late")
    assert history[-1][1] <= BURST  # in the same instant: the burst, never burst + lease
    assert history[-1][1] >= BURST - 2 * 8
    assert a.local_answers >= 8


def test_busy_clients_keep_their_burst(make: Make) -> None:
    """Redis counts only the leased tokens a worker still holds (each worker reports them), so
    a client busy at half its rate through two workers, mostly answered locally, can still
    burst: at most the leases left over per worker short of the full burst."""
    a, b = make(policy=STEADY), make(policy=STEADY)
    now = T0
    for i in range(200):  # 5 req/s for 40 s, alternating workers
        assert ask(a if i % 2 else b, now, "ip:busy").allowed
        now += 0.2
    assert a.local_answers + b.local_answers > 150
    burst = _flood([a, b], now, 0.0, 1.0, 100, "ip:busy")[-1][1]
    assert BURST - 2 * 8 - 2 <= burst <= BURST


def test_a_ban_reaches_another_worker_within_one_lease_ttl(make: Make) -> None:
    a, b = make(), make()
    assert ask(b, T0, "ip:x").allowed  # b holds a lease until T0 + 5
    r = a.check(CheckRequest(T0 + 1, ("ip:other",), bans=(PendingBan("ip:x", 100.0, BOT),)))
    assert r.allowed and r.ban_until == (pytest.approx(T0 + 101),)
    assert not ask(a, T0 + 1, "ip:x").allowed  # a asks Redis: refused at once
    assert ask(b, T0 + 4.9, "ip:x").allowed  # b still spends its lease (at most 5 s)
    r = ask(b, T0 + 5.0, "ip:x")  # and not one moment longer
    assert not r.allowed and r.reason == BOT and r.retry_after == pytest.approx(96.0)


def test_an_escalation_reaches_another_worker_within_one_lease_ttl(make: Make) -> None:
    a, b = make(lease_ttl=2.0), make(lease_ttl=2.0)
    assert ask(b, T0, "ip:y").allowed  # b leases 8 until T0 + 2
    results = [ask(a, T0, "ip:y") for _ in range(200)]
    assert [r.reason for r in results if not r.allowed][:3] == [THROTTLE, THROTTLE, BACKOFF]
    assert ask(b, T0 + 1.9, "ip:y").allowed
    r = ask(b, T0 + 2.0, "ip:y")
    assert not r.allowed and r.reason == BACKOFF


def test_impossible_travel_is_caught_while_another_worker_holds_the_lease(make: Make) -> None:
    a, b = make(), make()
    home = Binding("s:t", "198.51.100.0/24", window=60.0)
    away = Binding("s:t", "203.0.113.0/24", window=60.0)
    now = T0
    for _ in range(200):  # a busy session at home for 100 s, mostly answered by a's leases
        assert ask(a, now, "ip:home", "s:t", binding=home).allowed
        now += 0.5
    assert a.local_answers > a.round_trips
    r = ask(b, now, "ip:away", "s:t", binding=away)  # b has no lease: Redis sees the travel
    assert not r.allowed and r.reason == TRAVEL and r.event == EV_TRAVEL
    assert r.bound_group == home.group
    # a refuses the session once its binding's confirmation (a quarter of the window, at
    # most the 5 s lease TTL) has expired
    assert ask(a, now + 5.0, "ip:home", "s:t", binding=home).reason == TRAVEL


def test_default_bindings_are_confirmed_for_a_lease_and_told_every_eighth_of_the_window(
        redis_server: RedisServer) -> None:
    """A session's binding is confirmed to the worker for a lease TTL (the default minute),
    and Redis hears of the session every eighth of the default travel window (7.5 s) by a
    batched call that no request waits on; an identity with no binding spends its lease for up
    to the default minute."""
    s = RedisStore(redis_server.url, POLICY, namespace="lease-default", timeout=1.0)
    try:
        home = Binding("s:d", "198.51.100.0/24", window=60.0)  # the web default travel_window
        assert ask(s, T0, "ip:d", "s:d", binding=home).allowed
        for t in (7.0, 14.9, 15.0, 30.0):
            assert ask(s, T0 + t, "ip:d", "s:d", binding=home).allowed
        assert s.round_trips == 1  # all from the lease and the confirmation
        assert s.tells == 2 and s.told == 2  # at T0 + 14.9 and T0 + 30: Redis heard
        assert seen_by_redis(redis_server, "lease-default", "s:d") == pytest.approx(T0 + 30.0)
        assert ask(s, T0, "ip:alone").allowed
        for t in (15.0, 30.0, 45.0, 59.9):  # a slow client: one request every 15 s
            assert ask(s, T0 + t, "ip:alone").allowed
        assert s.round_trips == 2  # all four from its lease
        assert ask(s, T0 + 60.0, "ip:alone").allowed
        assert s.round_trips == 3  # and not one moment longer
    finally:
        s.close()


def seen_by_redis(server: RedisServer, namespace: str, session: str) -> float:
    """The last-seen time of ``session``'s binding as Redis holds it."""
    import redis

    r = redis.Redis.from_url(server.url)
    try:
        raw = r.get(f"{namespace}:bind:{session}")
    finally:
        r.close()
    assert raw is not None
    return float(raw.decode().rsplit("|", 1)[1])


def test_default_lease_is_a_quarter_of_a_full_default_bucket(redis_server: RedisServer) -> None:
    """With the default policy (burst 50) a fresh client is leased 12 requests: the quarter
    rule's grant for a full bucket, and the default cap."""
    s = RedisStore(redis_server.url, namespace="lease-max", timeout=1.0)
    try:
        assert ask(s, T0, "ip:m").allowed
        for _ in range(12):
            assert ask(s, T0, "ip:m").allowed
        assert (s.round_trips, s.local_answers) == (1, 12)
        assert ask(s, T0, "ip:m").allowed
        assert s.round_trips == 2
    finally:
        s.close()


def test_redis_hears_of_a_session_answered_locally_every_eighth_of_its_window(
        make: Make, redis_server: RedisServer) -> None:
    s = make(lease_ttl=60.0, lease_max=10**6, policy=STEADY)
    short = Binding("s:w", "198.51.100.0/24", window=8.0)  # told at least every 1 s
    now = T0
    for _ in range(120):  # 30 s at 4 requests/s, mostly answered here
        assert ask(s, now, "ip:w", "s:w", binding=short).allowed
        # Redis's view: at most a quarter of the window (and the second between calls) old
        assert now - seen_by_redis(redis_server, "lease", "s:w") <= 8.0 / 4 + 1.0
        now += 0.25
    assert s.round_trips <= 8  # renewing the leases (a quarter of what is left each time)
    assert 20 <= s.tells <= 31  # about one call a second, not one per request
    assert s.revoked == 0


def test_travel_is_caught_across_workers_after_a_session_was_served_locally_for_long(
        make: Make) -> None:
    """Confirmations last a lease (60 s here) while the travel window is 8 s: without the
    calls that tell Redis of the session, Redis would think it idle since its first request,
    and the same session elsewhere 30 s later would just move there."""
    a, b = make(lease_ttl=60.0, lease_max=10**6, policy=DEEP), make(lease_ttl=60.0, policy=DEEP)
    home = Binding("s:far", "198.51.100.0/24", window=8.0)
    away = Binding("s:far", "203.0.113.0/24", window=8.0)
    now = T0
    for _ in range(60):  # 30 s at home, every request answered by a
        assert ask(a, now, "ip:home", "s:far", binding=home).allowed
        now += 0.5
    assert a.round_trips == 1
    r = ask(b, now, "ip:away", "s:far", binding=away)
    assert not r.allowed and r.reason == TRAVEL and r.event == EV_TRAVEL
    # a hears of the ban with its next call about the session (within 1 s + window/8 of
    # its requests), takes its confirmation back and then asks Redis, which refuses
    refused_at = None
    for k in range(40):
        t = now + 0.1 * k
        res = ask(a, t, "ip:home", "s:far", binding=home)
        if not res.allowed:
            assert res.reason == TRAVEL
            refused_at = t
            break
    assert refused_at is not None and refused_at - now <= 8.0 / 8 + 1.0 + 0.2
    assert a.revoked == 1


def test_a_failed_call_takes_the_confirmations_back_and_requests_pass(
        make: Make, redis_server: RedisServer) -> None:
    s = make(lease_ttl=60.0, lease_max=10**6, policy=STEADY)
    short = Binding("s:down", "198.51.100.0/24", window=8.0)
    assert ask(s, T0, "ip:down", "s:down", binding=short).allowed
    redis_server.stop()
    try:
        r = s.check(CheckRequest(T0 + 2.0, ("ip:down", "s:down"), binding=short))
        assert r.allowed  # answered here; the call that followed it failed
        assert s.revoked == 1 and s.tells == 0
        r = s.check(CheckRequest(T0 + 2.1, ("ip:down", "s:down"), binding=short))
        assert r.allowed and r.degraded  # asked Redis, which is down: fail open
    finally:
        redis_server.start()


def test_sessions_waiting_to_be_told_stay_bounded(make: Make) -> None:
    s = make(max_local=64, lease_ttl=60.0)
    s._tell_at = T0 + 10**6  # hold the calls back (only full batches would go)
    n = 0
    for i in range(60):
        b = Binding(f"s:q{i}", "198.51.100.0/24", window=8.0)
        assert ask(s, T0, f"ip:q{i}", f"s:q{i}", binding=b).allowed
        assert ask(s, T0 + 1.5, f"ip:q{i}", f"s:q{i}", binding=b).allowed
        n += 1
        assert len(s._due) <= 64
    assert s.round_trips >= n


def test_a_call_carries_at_most_a_batch_oldest_first(make: Make,
                                                     redis_server: RedisServer) -> None:
    """600 sessions waiting: each call carries the TELL_BATCH queued first, the rest wait for
    the next, and every one is heard of in the end."""
    from garrison.store.redis import TELL_BATCH

    s = make(max_local=2_000, lease_ttl=60.0)
    sessions = [f"s:b{i}" for i in range(600)]
    for i, sess in enumerate(sessions):
        rec = s.records.get(sess, T0)
        assert s.seen(Binding(sess, "198.51.100.0/24", window=8.0), rec, T0 + 1.0 + i * 1e-3)
    s.tell(T0 + 2.0)  # no event loop: at once
    assert s.told == TELL_BATCH
    assert list(s._due) == sessions[TELL_BATCH:]
    assert seen_by_redis(redis_server, "lease", sessions[TELL_BATCH - 1]) > T0
    s.tell(T0 + 2.5)  # within the second, but a full batch waits: it goes
    assert s.told == 2 * TELL_BATCH
    s.tell(T0 + 3.0)
    s.tell(T0 + 4.0)
    assert s.told == 600 and not s._due
    assert all(seen_by_redis(redis_server, "lease", x) > T0 for x in sessions[::50])


async def test_async_calls_tell_redis_without_a_request_waiting(
        make: Make, redis_server: RedisServer) -> None:
    s = make(lease_ttl=60.0, lease_max=10**6, policy=DEEP)
    short = Binding("s:as", "198.51.100.0/24", window=8.0)
    for k in range(30):
        r = await s.acheck(CheckRequest(T0 + 0.1 * k, ("ip:as", "s:as"), binding=short))
        assert r.allowed and not r.degraded
        await asyncio.sleep(0)
    for _ in range(100):
        if s.tells:
            break
        await asyncio.sleep(0.01)
    assert s.round_trips == 1 and s.tells >= 1
    assert seen_by_redis(redis_server, "lease", "s:as") >= T0 + 1.0
    await s.aclose()


async def test_a_session_queued_while_a_call_is_in_flight_goes_out_by_itself(
        make: Make, redis_server: RedisServer) -> None:
    """A request queued for the tell while the previous call is still in flight, and then no
    request at all: the worker sends it by itself once that call has landed (before, it waited
    for a later request, so an idle worker left Redis's view of the session stale)."""
    s = make(lease_ttl=60.0, lease_max=10**6, policy=DEEP)
    short = Binding("s:fl", "198.51.100.0/24", window=8.0)
    assert (await s.acheck(CheckRequest(T0, ("ip:fl", "s:fl"), binding=short))).allowed
    # no await between these two: the first's call is still in flight when the second queues
    assert (await s.acheck(CheckRequest(T0 + 1.0, ("ip:fl", "s:fl"), binding=short))).allowed
    assert s._telling
    assert (await s.acheck(CheckRequest(T0 + 2.5, ("ip:fl", "s:fl"), binding=short))).allowed
    for _ in range(300):
        if seen_by_redis(redis_server, "lease", "s:fl") >= T0 + 2.5:
            break
        await asyncio.sleep(0.01)
    assert seen_by_redis(redis_server, "lease", "s:fl") == pytest.approx(T0 + 2.5)
    assert s.round_trips == 1 and s.tells == 2
    await s.aclose()


def test_local_cache_stays_bounded_under_a_flood_of_identities(make: Make) -> None:
    s = make(max_local=64)
    for i in range(1000):
        assert ask(s, T0, f"ip:{i}", f"s:{i}",
                   binding=Binding(f"s:{i}", f"10.{i // 256}.{i % 256}.0/24")).allowed
        assert len(s.records) <= 64
    assert s.round_trips == 1000
    assert ask(s, T0, "ip:999", "s:999", binding=Binding("s:999", "10.3.231.0/24")).allowed
    assert s.round_trips == 1000  # the newest client kept its lease
    assert ask(s, T0, "ip:0", "s:0", binding=Binding("s:0", "10.0.0.0/24")).allowed
    assert s.round_trips == 1001  # the oldest was dropped


def test_lease_max_zero_asks_redis_every_time(make: Make) -> None:
    s = make(lease_max=0)
    results = [ask(s, T0, "ip:z").allowed for _ in range(110)]
    assert results == [True] * BURST + [False] * 10  # exact, as without leases
    assert (s.round_trips, s.local_answers) == (110, 0)


def test_leases_are_spent_while_redis_is_down(make: Make, redis_server: RedisServer) -> None:
    s = make(breaker=CircuitBreaker(failures=1, cooldown=60.0), timeout=0.2)
    assert ask(s, T0, "ip:kept").allowed
    redis_server.stop()
    kept = [s.check(CheckRequest(T0 + 1, ("ip:kept",))) for _ in range(8)]
    assert all(r.allowed and not r.degraded for r in kept)  # the lease, no Redis needed
    other = s.check(CheckRequest(T0 + 1, ("ip:new",)))
    assert other.allowed and other.degraded  # fail open


def test_concurrent_async_checks_stay_exact_across_workers(make: Make) -> None:
    """Both workers' requests in flight at once (one pipeline each): the burst, not more, and
    not much less (a worker asks for a lease only with no request of that client in flight,
    so the concurrent ones are checked exactly)."""
    a, b = make(policy=STEADY), make(policy=STEADY)

    async def run() -> int:
        rs = await asyncio.gather(*(s.acheck(CheckRequest(T0, ("ip:c",)))
                                    for _ in range(150) for s in (a, b)))
        assert not any(r.degraded for r in rs)
        await a.aclose()
        await b.aclose()
        return sum(r.allowed for r in rs)

    allowed = asyncio.run(run())
    assert BURST - 2 * 8 <= allowed <= BURST


def test_a_concurrent_burst_within_the_limit_is_all_allowed(make: Make) -> None:
    """A page load: 60 requests of one client at once, under the burst of 100: all pass
    (leasing each reply's tokens to requests already in flight would refuse some)."""
    s = make()

    async def run() -> list[CheckResult]:
        rs = await asyncio.gather(*(s.acheck(CheckRequest(T0, ("ip:page", "s:page")))
                                    for _ in range(60)))
        await s.aclose()
        return rs

    rs = asyncio.run(run())
    assert all(r.allowed and not r.degraded for r in rs)
    assert s.round_trips == 60


def test_the_store_url_sets_the_leases_and_keeps_the_rest_for_redis(
        redis_server: RedisServer) -> None:
    from garrison.store.base import open_store

    s = open_store(redis_server.url + "?lease_ttl=5&lease_max=3&health_check_interval=0",
                   POLICY, timeout=1.0, namespace="lease-url")
    try:
        assert isinstance(s, RedisStore) and (s.lease_ttl, s.lease_max) == (5.0, 3)
        assert "lease" not in s.url and "health_check_interval=0" in s.url
        for _ in range(8):  # three leased requests per round trip: R, l, l, l, R, l, l, l
            ask(s, T0, "ip:url")
        assert (s.round_trips, s.local_answers) == (2, 6)
        assert s.breaker.total_failures == 0  # the client connects with the rest of the URL
        assert ask(s, T0 + 5.0, "ip:url").allowed and s.round_trips == 3  # 5 s leases
    finally:
        s.close()


def test_metrics_say_how_often_redis_is_asked(make: Make) -> None:
    from garrison.bus import EventBus
    from garrison.web.engine import WebEngine
    from garrison.web.options import WebOptions

    s = make()
    eng = WebEngine(WebOptions(bus=EventBus()), store=s)
    for _ in range(10):
        ask(s, T0, "ip:metrics")  # one round trip, then eight from the lease, then Redis again
    text = eng.metrics.render()
    assert (s.round_trips, s.local_answers) == (2, 8)
    assert 'garrison_web_store_answers_total{by="redis"} 2' in text
    assert 'garrison_web_store_answers_total{by="lease"} 8' in text
    memory = WebEngine(WebOptions(bus=EventBus())).metrics.render()
    assert "garrison_web_store_answers_total" not in memory  # one source: nothing to split


@pytest.mark.parametrize("namespace", ["lease", "défense"])  # ASCII, and not (bytes != chars)
def test_the_pipeline_text_encoding_is_the_byte_encoding(redis_server: RedisServer,
                                                         namespace: str) -> None:
    from garrison.store.redis import _resp, _resp_text

    s = RedisStore(redis_server.url, POLICY, namespace=namespace, lease_ttl=5.0, lease_max=8)
    assert s._pipe is not None  # hiredis is installed with the redis extra
    home = Binding("s:1", "198.51.100.0/24", "ua1")
    moved = Binding("s:2", "2001:db8::/64", "ua2", ttl=3600.0, ban=30.5, window=120.0)
    bans = (PendingBan("ip:9", 600.0, BOT), PendingBan("s:9", 12.25, "impossible-travel"))
    cases = [
        (CheckRequest(T0, ("ip:1",)), (), False, None),
        (CheckRequest(T0 + 0.123456789, ("ip:1", "s:1"), home, (), 2.5), (), True,
         ["7.0", repr(T0 + 4.9), "3", "0", "0", "0"]),
        (CheckRequest(T0, ("ip:2", "s:2", "key:3"), moved), bans, True, None),
        (CheckRequest(T0, (), None), bans[:1], False, None),
        (CheckRequest(T0, ("ip:" + "f" * 300,), Binding("s:4", "203.0.113.7")), (), True,
         None),  # an empty agent, and a key past the table of length prefixes
    ]
    try:
        for req, ban, lease, held in cases:
            keys, argv = s._args(req, ban, lease, held)
            assert argv[0] == repr(req.now) and argv[14] == repr(req.cost)
            if req.binding is not None:  # the cached window is the binding's own
                assert argv[-3 * len(req.identities) - 2 * len(ban) - 3:][:3] == [
                    repr(req.binding.ttl), repr(req.binding.ban), repr(req.binding.window)]
            args = ["EVALSHA", s._pipe.sha, str(len(keys)), *keys, *argv]
            assert _resp_text(args) == _resp([a.encode() for a in args])
    finally:
        s.close()


async def test_the_asgi_fast_path_tells_redis_of_the_sessions_it_admits(
        redis_server: RedisServer) -> None:
    """Through the middleware, a returning session is admitted by the engine's fast path
    (never calling the store); the scoring batch queues it and the store tells Redis, so
    Redis's view of its last request stays fresh without a round trip per confirmation."""
    from garrison.bus import EventBus
    from garrison.web import GarrisonMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    clock = [T0]
    mw = GarrisonMiddleware(app, store=redis_server.url + "?lease_max=1000000",
                            bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: clock[0], travel_window=8.0, burst=10_000.0,
                            threshold=1.0, session_threshold=1.0)  # a poller: never judged
    headers = [(b"x-forwarded-for", b"198.51.100.40"), (b"cookie", b"session=fast")]
    try:
        for _ in range(120):  # 60 s, a request every 0.5 s
            scope = {"type": "http", "method": "GET", "path": "/", "headers": headers,
                     "client": ("127.0.0.1", 5000), "query_string": b""}
            await mw(scope, receive, send)
            clock[0] += 0.5
            await asyncio.sleep(0)
        mw.engine.drain()
        for _ in range(100):
            await asyncio.sleep(0.01)
        store = mw.engine.store
        assert isinstance(store, RedisStore)
        assert store.round_trips <= 3  # the first requests; then leases and confirmations
        assert store.tells >= 10
        sess = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.40",
                                                "cookie": "session=fast"}).session
        assert sess is not None
        last = seen_by_redis(redis_server, "garrison", sess)
        assert clock[0] - last <= 8.0 / 4 + 1.0 + 0.5
    finally:
        await mw.engine.store.aclose()


async def test_a_cancelled_call_does_not_stop_later_ones(
        make: Make, redis_server: RedisServer) -> None:
    """A call cancelled in flight (its event loop closing) takes its batch's confirmations
    back and lets the next call go; without that, Redis would never hear of the worker's
    sessions again while their confirmations lasted."""
    s = make(lease_ttl=60.0, lease_max=10**6, policy=DEEP)
    b = Binding("s:cx", "198.51.100.0/24", window=8.0)
    assert (await s.acheck(CheckRequest(T0, ("ip:cx", "s:cx"), binding=b))).allowed
    assert (await s.acheck(CheckRequest(T0 + 1.5, ("ip:cx", "s:cx"), binding=b))).allowed
    assert len(s._tasks) == 1
    for task in list(s._tasks):
        task.cancel()
    await asyncio.sleep(0.05)
    assert s.revoked == 1 and not s._telling
    assert (await s.acheck(CheckRequest(T0 + 1.6, ("ip:cx", "s:cx"), binding=b))).allowed
    assert (await s.acheck(CheckRequest(T0 + 3.2, ("ip:cx", "s:cx"), binding=b))).allowed
    for _ in range(100):
        if s.tells:
            break
        await asyncio.sleep(0.01)
    assert s.tells == 1
    await s.aclose()
