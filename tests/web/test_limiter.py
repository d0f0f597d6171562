"""The rate limiter, bans and session binding: one suite against memory:// and a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from garrison.store.base import (
    BACKOFF,
    BAN,
    BOT,
    EV_BACKOFF,
    EV_BAN,
    EV_THROTTLE_START,
    EV_TRAVEL,
    THROTTLE,
    TRAVEL,
    Binding,
    CheckRequest,
    CheckResult,
    LimitPolicy,
    LimitStore,
    PendingBan,
    StoreURLError,
    open_store,
)
from tests.web.conftest import RedisServer

T0 = 1_800_000_000.0
POLICY = LimitPolicy(rate=2.0, burst=10.0, strikes=5, strike_window=60.0, backoff=30.0,
                     offences_to_ban=2, ban=100.0, max_ban=1000.0, trust_gain=0.0,
                     trust_loss=0.0)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[LimitStore]:
    if request.param == "memory":
        yield open_store("memory://", POLICY)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    s = open_store(server.url, POLICY, timeout=1.0, namespace=f"t{time.monotonic_ns()}")
    yield s
    s.close()


def ask(store: LimitStore, now: float, *ids: str, **kw: object) -> tuple[bool, str | None,
                                                                          float, str | None]:
    r = store.check(CheckRequest(now=now, identities=ids, **kw))  # type: ignore[arg-type]
    assert not r.degraded
    return r.allowed, r.reason, r.retry_after, r.event


def test_burst_then_throttle_then_refill(store: LimitStore) -> None:
    results = [ask(store, T0, "ip:a") for _ in range(12)]
    assert [r[0] for r in results] == [True] * 10 + [False] * 2
    assert results[10][1] == THROTTLE and results[10][3] == EV_THROTTLE_START
    assert results[11][3] is None  # one event per throttle episode, not per request
    assert 0 < results[10][2] <= 0.5 + 1e-6
    assert ask(store, T0 + 0.5, "ip:a")[0]  # 2 req/s: one token back after 0.5 s
    assert ask(store, T0, "ip:other")[0]  # identities are independent


def test_escalation_throttle_backoff_ban_and_longer_bans_for_repeat_offenders(
        store: LimitStore) -> None:
    now = T0
    for _ in range(10):
        ask(store, now, "ip:b")
    events = [ask(store, now, "ip:b") for _ in range(5)]
    assert events[-1][1] == BACKOFF and events[-1][3] == EV_BACKOFF
    assert events[-1][2] == pytest.approx(30.0)
    assert ask(store, now + 29, "ip:b")[1] == BACKOFF  # refused for the whole back-off
    now += 31
    for _ in range(30):
        r = ask(store, now, "ip:b")
    assert r[1] == BAN and r[2] == pytest.approx(100.0)
    first_ban = r
    assert first_ban[3] in (EV_BAN, None)
    now += 101
    for _ in range(30):
        r = ask(store, now, "ip:b")
    assert r[1] == BAN and r[2] == pytest.approx(200.0)  # repeat offender: doubled


def test_good_behaviour_raises_the_limit() -> None:
    policy = LimitPolicy(rate=1.0, burst=5.0, trust_gain=0.05, trust_loss=0.1)
    s = open_store("memory://", policy)
    now = T0
    for _ in range(40):  # well-behaved: one request every 2 s
        now += 2.0
        assert s.check(CheckRequest(now=now, identities=("ip:good",))).allowed
    good = sum(s.check(CheckRequest(now=now + 100, identities=("ip:good",))).allowed
               for _ in range(20))
    fresh = sum(s.check(CheckRequest(now=now + 100, identities=("ip:new",))).allowed
                for _ in range(20))
    assert good > fresh


def test_all_identities_must_allow(store: LimitStore) -> None:
    for _ in range(10):
        assert ask(store, T0, "s:shared", "ip:x1")[0]
    allowed, reason, _, _ = ask(store, T0, "ip:x2", "s:shared")
    assert not allowed and reason == THROTTLE
    assert ask(store, T0, "ip:x2")[0]  # the refusal did not spend ip:x2's tokens


def test_exact_under_concurrency(store: LimitStore) -> None:
    allowed = []
    lock = threading.Lock()

    def worker() -> None:
        mine = sum(store.check(CheckRequest(now=T0, identities=("ip:race",))).allowed
                   for _ in range(25))
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 10  # exactly the burst, never one more


def test_session_binding_tolerates_same_prefix_and_catches_travel(store: LimitStore) -> None:
    home = Binding("s:1", "198.51.100.0/24")
    assert ask(store, T0, "s:1", binding=home)[0]
    assert ask(store, T0 + 1, "s:1", binding=Binding("s:1", "198.51.100.0/24"))[0]
    allowed, reason, retry, event = ask(store, T0 + 2, "s:1",
                                        binding=Binding("s:1", "203.0.113.0/24"))
    assert not allowed and reason == TRAVEL and event == EV_TRAVEL and retry > 0
    # both ends are now refused: the session itself is banned
    assert ask(store, T0 + 3, "s:1", binding=home)[1] == TRAVEL


def test_pending_bans_are_applied_and_grow(store: LimitStore) -> None:
    r = store.check(CheckRequest(now=T0, identities=("ip:other",),
                                 bans=(PendingBan("ip:bot", 50.0, BOT),)))
    assert r.allowed and r.ban_until == (pytest.approx(T0 + 50.0),)
    allowed, reason, retry, _ = ask(store, T0 + 1, "ip:bot")
    assert not allowed and reason == BOT and retry == pytest.approx(49.0)
    r = store.check(CheckRequest(now=T0 + 60, identities=(),
                                 bans=(PendingBan("ip:bot", 50.0, BOT),)))
    assert r.ban_until == (pytest.approx(T0 + 160.0),)  # second offence: 100 s


def test_bad_store_urls() -> None:
    with pytest.raises(StoreURLError, match="unknown store URL"):
        open_store("mongodb://x")
    with pytest.raises(StoreURLError):
        open_store("memory")
    for bad in ("lease_max=-1", "lease_max=many", "lease_ttl=0", "lease_ttl=soon"):
        with pytest.raises(StoreURLError, match="lease_"):
            open_store("redis://127.0.0.1:6379/0?" + bad)



def test_redis_down_fails_open_and_recovers(redis_server: RedisServer) -> None:
    from garrison.store.redis import CircuitBreaker, RedisStore

    breaker = CircuitBreaker(failures=2, cooldown=0.2, log_interval=60.0)
    s = RedisStore(redis_server.url, POLICY, timeout=0.2, breaker=breaker)
    for _ in range(10):
        s.check(CheckRequest(now=T0, identities=("ip:f",)))
    assert not s.check(CheckRequest(now=T0, identities=("ip:f",))).allowed
    redis_server.stop()
    results = [s.check(CheckRequest(now=T0, identities=("ip:f",),
                                    bans=(PendingBan("ip:later", 50.0, BOT),)))
               for _ in range(20)]
    assert all(r.allowed and r.degraded for r in results)  # fail open, never raises
    assert breaker.opened >= 1 and s.failed_checks <= 3  # the breaker stopped the waiting
    redis_server.start()  # a fresh, empty server

    def recovered() -> bool:
        return not s.check(CheckRequest(now=T0 + 1, identities=("ip:later",))).degraded

    deadline = time.monotonic() + 10
    while not recovered():
        assert time.monotonic() < deadline, "store never recovered"
        time.sleep(0.05)
    # bans decided while Redis was away were queued and written on recovery
    r = s.check(CheckRequest(now=T0 + 2, identities=("ip:later",)))
    assert not r.allowed and r.reason == BOT
    s.close()


async def test_async_pipeline_is_exact_and_fails_open(redis_server: RedisServer) -> None:
    """The ASGI path: concurrent checks share pipelined writes yet stay exact; a dead Redis
    means every waiting check passes, and the next ones reconnect by themselves."""
    import asyncio

    from garrison.store.redis import CircuitBreaker, RedisStore

    s = RedisStore(redis_server.url, POLICY, timeout=0.5,
                   breaker=CircuitBreaker(failures=2, cooldown=0.2))
    assert s._pipe is not None  # the hiredis pipeline is in use
    results = await asyncio.gather(*(s.acheck(CheckRequest(now=T0, identities=("ip:a",)))
                                     for _ in range(100)))
    assert sum(r.allowed for r in results) == 10 and not any(r.degraded for r in results)
    redis_server.stop()
    down = await asyncio.gather(*(s.acheck(CheckRequest(now=T0, identities=("ip:a",)))
                                  for _ in range(20)))
    assert all(r.allowed and r.degraded for r in down)
    redis_server.start()
    deadline = time.monotonic() + 10
    while (await s.acheck(CheckRequest(now=T0, identities=("ip:b",)))).degraded:
        assert time.monotonic() < deadline, "async store never recovered"
        await asyncio.sleep(0.05)
    r = await s.acheck(CheckRequest(now=T0, identities=("ip:b",)))
    assert r.allowed and not r.degraded
    await s.aclose()


def test_async_pipeline_works_on_uvloop(redis_server: RedisServer) -> None:
    """uvicorn[standard] serves on uvloop, whose transports are not asyncio.Transport
    subclasses: the pipeline must connect and stay exact there too (a type check on the
    transport once made every call fail, so the store only ever failed open)."""
    import asyncio

    uvloop = pytest.importorskip("uvloop")
    from garrison.store.redis import RedisStore

    async def flood() -> list[CheckResult]:
        s = RedisStore(redis_server.url, POLICY, timeout=0.5)
        assert s._pipe is not None
        try:
            return list(await asyncio.gather(
                *(s.acheck(CheckRequest(now=T0, identities=("ip:uv",))) for _ in range(100))))
        finally:
            await s.aclose()

    results = uvloop.run(flood())
    assert not any(r.degraded for r in results)
    assert sum(r.allowed for r in results) == 10


async def test_async_pipeline_times_out_on_a_hung_redis_and_recovers(
        redis_server: RedisServer) -> None:
    """A Redis that accepts but does not answer (the process stopped with SIGSTOP): every
    waiting check fails open on the store's own timeout (one shared timer), and
    when Redis answers again the connection carries on with no reply handed to the wrong
    caller."""
    import asyncio
    import os
    import signal

    from garrison.store.redis import CircuitBreaker, RedisStore

    s = RedisStore(redis_server.url, POLICY, timeout=0.2, lease_max=0,
                   breaker=CircuitBreaker(failures=1000, cooldown=0.1))
    first = await s.acheck(CheckRequest(now=T0, identities=("ip:h",)))
    assert first.allowed and not first.degraded
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        # a store that waited on Redis itself would hang here until SIGCONT: wait_for fails it
        hung = await asyncio.wait_for(
            asyncio.gather(*(s.acheck(CheckRequest(now=T0, identities=("ip:h",)))
                             for _ in range(30))), timeout=10.0)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert all(r.allowed and r.degraded for r in hung)
    # The 30 unanswered commands are answered late now and must be discarded, not handed
    # to the next callers: 9 more checks of a fresh identity see exactly its own count.
    deadline = time.monotonic() + 10
    while (await s.acheck(CheckRequest(now=T0, identities=("ip:probe",)))).degraded:
        assert time.monotonic() < deadline, "async store never recovered"
        await asyncio.sleep(0.05)
    fresh = [await s.acheck(CheckRequest(now=T0, identities=("ip:fresh",))) for _ in range(12)]
    assert [r.allowed for r in fresh] == [True] * 10 + [False] * 2
    assert not any(r.degraded for r in fresh)
    await s.aclose()


def test_session_moving_after_a_quiet_window_is_not_travel(store: LimitStore) -> None:
    wifi = Binding("s:m", "198.51.100.0/24", window=60.0)
    phone = Binding("s:m", "203.0.113.0/24", window=60.0)
    assert ask(store, T0, "s:m", binding=wifi)[0]
    assert ask(store, T0 + 300, "s:m", binding=phone)[0]  # five quiet minutes: it moved
    assert ask(store, T0 + 301, "s:m", binding=phone)[0]
    allowed, reason, _, _ = ask(store, T0 + 302, "s:m", binding=wifi)  # and back in 1 s: no
    assert not allowed and reason == TRAVEL


def test_async_store_survives_a_new_event_loop(redis_server: RedisServer) -> None:
    """A store created once and used from successive event loops (as in tests or reloads)."""
    import asyncio

    from garrison.store.redis import RedisStore

    s = RedisStore(redis_server.url, POLICY, timeout=0.5)
    for i in range(3):
        r = asyncio.run(s.acheck(CheckRequest(now=T0, identities=(f"ip:loop{i}",))))
        assert r.allowed and not r.degraded
    s.close()
