"""The engine's request path: raw-header client cache, decision reuse, batched scoring."""

from __future__ import annotations

import asyncio

from garrison.bus import EventBus
from garrison.store.base import CheckRequest
from garrison.web.engine import BATCH, BATCH_AGE, REUSE, Decision, WebEngine
from garrison.web.options import WebOptions

T0 = 1_800_000_000.0


def _engine(**options: object) -> WebEngine:
    return WebEngine(WebOptions(bus=EventBus(), trusted_proxies=["127.0.0.1"],
                                **options))  # type: ignore[arg-type]


def _raw(eng: WebEngine, peer: str, **headers: str) -> tuple[bytes | str | None, ...]:
    return (peer, *(headers[n.replace("-", "_")].encode() if n.replace("-", "_") in headers
                    else None for n in eng.raw_names))


def _decide(eng: WebEngine, client: object, now: float) -> Decision:
    pre = eng.precheck(client, now)  # type: ignore[arg-type]
    if isinstance(pre, CheckRequest):
        return eng.decide(client, eng.store.check(pre), now)  # type: ignore[arg-type]
    return pre


def test_raw_cache_keys_on_every_header_it_reads() -> None:
    eng = _engine(bind_user_agent=True)
    a = eng.identify_raw(_raw(eng, "127.0.0.1", x_forwarded_for="198.51.100.7",
                              cookie="session=a", user_agent="ua1"))
    assert a is eng.identify_raw(_raw(eng, "127.0.0.1", x_forwarded_for="198.51.100.7",
                                      cookie="session=a", user_agent="ua1"))
    for changed in ({"x_forwarded_for": "198.51.100.8", "cookie": "session=a",
                     "user_agent": "ua1"},
                    {"x_forwarded_for": "198.51.100.7", "cookie": "session=b",
                     "user_agent": "ua1"},
                    {"x_forwarded_for": "198.51.100.7", "cookie": "session=a",
                     "user_agent": "ua2"}):
        b = eng.identify_raw(_raw(eng, "127.0.0.1", **changed))
        assert (b.ip, b.session, b.agent) != (a.ip, a.session, a.agent)
    # the same client through identify() (decoded headers) is the same identity
    c = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.7", "cookie": "session=a",
                                   "user-agent": "ua1"})
    assert (c.key, c.session, c.agent) == (a.key, a.session, a.agent)


def test_a_reused_decision_follows_a_changed_risk() -> None:
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.9"})
    first = _decide(eng, client, T0)
    second = _decide(eng, client, T0 + 1)
    assert first.allowed and second.allowed
    assert first.verdict is not None and first.verdict.bot_risk is None
    assert second is first and client.dleft == REUSE - 1  # reused: nothing changed
    assert client.irec is not None
    client.irec.risk = 0.8  # scoring judged the client meanwhile
    third = _decide(eng, client, T0 + 2)
    assert third is not first and third.verdict is not None
    assert third.verdict.bot_risk == 0.8 and third.verdict.trust < first.verdict.trust
    for i in range(REUSE + 1):  # reuse runs out: a fresh verdict with the current trust
        last = _decide(eng, client, T0 + 3 + i)
    assert last is not third


def test_scoring_is_batched_and_drained_by_count_and_age() -> None:
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.10"})
    _decide(eng, client, T0)
    rec = client.irec
    assert rec is not None
    for i in range(BATCH - 1):
        eng.after(client, f"/p{i}", 200, 100, T0)
    assert rec.count == 0  # queued, not scored yet
    eng.after(client, "/last", 200, 100, T0)
    assert rec.count == BATCH  # a full batch is scored at once
    eng.after(client, "/a", 200, 100, T0 + 1)
    eng.after(client, "/b", 200, 100, T0 + 1 + 2 * BATCH_AGE)  # the batch got old: scored
    assert rec.count == BATCH + 2


async def test_a_partial_batch_is_drained_by_a_timer_under_asyncio() -> None:
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.11"})
    _decide(eng, client, T0)
    eng.after(client, "/only", 200, 100, T0)
    assert client.irec is not None and client.irec.count == 0
    await asyncio.sleep(BATCH_AGE * 3)
    assert client.irec.count == 1 and eng.metrics.scored == 1
