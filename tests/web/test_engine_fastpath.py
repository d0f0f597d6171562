"""The engine's request path: raw-header client cache, armed clients on the fast path, batched
scoring."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from garrison.bus import EventBus
from garrison.store.base import BAN, BOT, THROTTLE, TRAVEL, CheckRequest, LimitPolicy, PendingBan
from garrison.web.engine import BATCH, BATCH_AGE, REARM_DELTA, Decision, WebEngine
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


def test_an_armed_client_is_answered_by_the_fast_path_and_rearmed_by_scoring() -> None:
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.9"})
    assert eng.fast(client, T0) is None  # a new client is checked in full first
    first = _decide(eng, client, T0)
    assert first.allowed and client.ready is first and client.verdict is first.verdict
    assert eng.fast(client, T0 + 1) is first and client.fast == 1
    rec = client.irec
    assert rec is not None
    trust = rec.trust
    eng.after(client, "/p0", 200, 100, T0 + 1)
    eng.drain()
    assert rec.trust > trust and client.fast == 0  # the batch paid the fast path's trust gain
    for i in range(1, 12):  # a scraper-like walk: scoring judges it and re-arms the client
        assert eng.fast(client, T0 + 1 + i) is not None
        eng.after(client, f"/p{i}", 200, 100, T0 + 1 + i)
        eng.drain()
    assert rec.risk is not None and rec.risk > 0.1
    ready = client.ready
    assert ready is not None and ready is not first and ready.verdict is not None
    assert client.verdict is ready.verdict  # what the ASGI fast path hands the app
    assert ready.verdict.bot_risk is not None
    assert abs(ready.verdict.bot_risk - rec.risk) < REARM_DELTA
    assert ready.verdict.components["bot"] == 1.0 - ready.verdict.bot_risk


def test_the_fast_path_is_the_rate_limit_itself() -> None:
    eng = _engine(limit_policy=LimitPolicy(rate=1.0, burst=5.0), adaptive_limits=False)
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.12",
                                        "cookie": "session=s1"})
    answers = [_decide(eng, client, T0) for _ in range(12)]
    assert sum(d.allowed for d in answers) == 5  # the burst, exactly: no more on the fast path
    assert [d.reason for d in answers[5:]] == [THROTTLE] * 7
    later = _decide(eng, client, T0 + 5.0)  # tokens again (fewer: each refusal cost trust)
    assert later.allowed and client.ready is later


def test_a_ban_or_a_move_ends_the_fast_path_at_once() -> None:
    eng = _engine()
    home = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.13",
                                      "cookie": "session=s2"})
    assert _decide(eng, home, T0).allowed and home.ready is not None
    with eng._lock:
        eng.store.apply_ban(PendingBan(home.key or "", 60.0, BOT), T0)  # type: ignore[attr-defined]
    refused = _decide(eng, home, T0 + 1)
    assert not refused.allowed and refused.reason == BOT
    away = eng.identify("127.0.0.1", {"x-forwarded-for": "203.0.113.7", "cookie": "session=s3"})
    again = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.14",
                                       "cookie": "session=s3"})
    assert _decide(eng, again, T0).allowed and again.ready is not None
    moved = _decide(eng, away, T0 + 1)  # the same session from another /24 a second later
    assert not moved.allowed and moved.reason == TRAVEL
    assert eng.fast(again, T0 + 2) is None  # the session is banned: no fast answer for either
    assert _decide(eng, again, T0 + 2).reason == TRAVEL
    assert BAN not in (moved.reason, refused.reason)


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


def test_the_batch_reuses_its_slots_and_keeps_nothing_after_scoring() -> None:
    """Queueing a request fills a slot of a fixed set (two sets, swapped by a drain); scoring
    empties every slot it reads, so the batch holds no client and no request's string once a
    batch is scored, and a path is kept as one shared object, not each request's copy."""
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.12"})
    _decide(eng, client, T0)
    slots = {id(s) for s in eng._batch} | {id(s) for s in eng._spare}
    first = "".join(["/pa", "ge"])  # built at run time: equal strings, distinct objects
    for _ in range(3):
        for _ in range(BATCH):
            eng.after(client, "".join(["/pa", "ge"]), 200, 100, T0)
        assert eng.queued == 0  # each full batch was scored at once
        for slot in (*eng._batch, *eng._spare):
            assert slot.client is None and slot.path is None
    assert {id(s) for s in eng._batch} | {id(s) for s in eng._spare} == slots  # no new slots
    eng.after(client, first, 404, 5, T0 + 1)
    eng.after(client, "".join(["/pa", "ge"]), 200, 5, T0 + 1)
    assert eng.queued == 2
    a, b = eng._batch[0], eng._batch[1]
    assert a.client is client and a.status == 404 and a.size == 5
    assert a.path is b.path and a.path is not None and a.path.text == "/page"
    assert a.path.text is not first  # the path the cache met first, shared
    eng.drain()
    assert eng.queued == 0 and eng._spare[0].client is None
    assert client.irec is not None and client.irec.count == 3 * BATCH + 2


async def test_a_partial_batch_is_drained_by_a_timer_under_asyncio() -> None:
    eng = _engine()
    client = eng.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.11"})
    _decide(eng, client, T0)
    eng.after(client, "/only", 200, 100, T0)
    assert client.irec is not None and client.irec.count == 0
    await asyncio.sleep(BATCH_AGE * 3)
    assert client.irec.count == 1 and eng.metrics.scored == 1


async def test_asgi_scoring_sees_the_status_and_every_body_byte_of_the_response() -> None:
    from garrison.web.asgi import GarrisonMiddleware, Message

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 404,  # type: ignore[operator]
                    "headers": [(b"content-type", b"text/plain")]})
        for chunk in (b"not ", b"found", b""):  # streamed in three messages
            await send({"type": "http.response.body", "body": chunk,  # type: ignore[operator]
                        "more_body": bool(chunk)})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    clock = [T0]
    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: clock[0])
    for i in range(3):
        clock[0] = T0 + i
        scope = {"type": "http", "method": "GET", "path": "/missing",
                 "client": ("127.0.0.1", 1),
                 "headers": [(b"x-forwarded-for", b"198.51.100.30"), (b"cookie", b"a=1"),
                             (b"x-forwarded-for", b"198.51.100.31")]}  # the last one counts
        await mw(scope, receive, send)
    assert [m.get("status") for m in sent[:4]] == [404, None, None, None]  # passed on as sent
    mw.engine.drain()
    client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.31"})
    mw.engine.bind(client, T0)  # its records, as the request path binds them
    rec = client.irec
    assert rec is not None and rec.count == 3
    assert rec.volume == 3 * len(b"not found")
    features = rec.features(T0 + 2, 120.0, 3, 0.0)
    assert features is not None and features.errors == 1.0  # every 404 is a client error


async def test_a_queued_request_lets_go_of_the_servers_send() -> None:
    """A request waiting in the scoring batch must not keep the server's per-request objects
    (its ``send`` and what that holds) alive until the batch is scored, and a send after the
    app returned is refused, not passed on."""
    import weakref

    from garrison.web.asgi import GarrisonMiddleware, Message

    kept: list[Any] = []

    async def app(scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        kept.append(send)

    class ServerSend:  # what a server's per-request send callable stands for
        def __init__(self) -> None:
            self.messages: list[Message] = []

        async def __call__(self, message: Message) -> None:
            self.messages.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    clock = [T0]
    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: clock[0])
    refs = []
    for i in range(12):  # full checks first, then armed: both paths
        clock[0] = T0 + i * BATCH_AGE / 100  # the batch never gets old enough to be drained
        server_send = ServerSend()
        refs.append(weakref.ref(server_send))
        scope = {"type": "http", "method": "GET", "path": f"/p{i % 3}",
                 "client": ("127.0.0.1", 1),
                 "headers": [(b"x-forwarded-for", b"198.51.100.40")]}
        await mw(scope, receive, server_send)
        assert len(server_send.messages) == 2
        del server_send
    assert mw.engine.metrics.full_checks < 12  # some went by the fast path
    assert mw.engine.queued, "some requests still wait for scoring"
    assert all(r() is None for r in refs)  # released although their requests wait
    with pytest.raises(RuntimeError):
        kept[-1]({"type": "http.response.body", "body": b"late"})
    mw.engine.drain()
    client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.40"})
    mw.engine.bind(client, T0)
    assert client.irec is not None and client.irec.count == 12
    assert client.irec.volume == 12 * len(b"ok")


async def test_asgi_watching_forwards_what_the_server_would_refuse_and_never_raises() -> None:
    """A response the server would refuse (a status given as text, a body that is not bytes)
    reaches the server as the app sent it; the middleware adds no error of its own and
    scores the status it can read (a number as text), else 500."""
    import warnings

    from garrison.web.asgi import GarrisonMiddleware, Message
    from garrison.web.behaviour import WIDTH

    statuses = iter(["404", "teapot", 201])

    async def app(scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": next(statuses), "headers": []})
        await send({"type": "http.response.body", "body": "not bytes"})

    got: list[Message] = []

    async def server_send(message: Message) -> None:
        got.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: T0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a never-awaited send would warn
        for _ in range(3):
            await mw({"type": "http", "method": "GET", "path": "/", "client": ("127.0.0.1", 1),
                      "headers": [(b"x-forwarded-for", b"198.51.100.41")]}, receive, server_send)
    assert [m.get("status") for m in got[::2]] == ["404", "teapot", 201]
    assert all(m["body"] == "not bytes" for m in got[1::2])
    mw.engine.drain()
    client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.41"})
    mw.engine.bind(client, T0)
    rec = client.irec
    assert rec is not None and rec.count == 3 and rec.volume == 0
    assert [rec._ring[WIDTH * i + 3] for i in range(3)] == [1.0, 2.0, 0.0]  # 4xx, 5xx, 2xx


async def test_asgi_fast_and_full_paths_agree_for_any_scope_mapping() -> None:
    """A plain dict scope is decided on the fast path, any other mapping (allowed by ASGI in
    principle) on the full path; both see the same limit, verdict and scoring."""
    from collections import UserDict

    from garrison.web.asgi import GarrisonMiddleware, Message

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    results: dict[str, list[int]] = {}
    for kind in ("dict", "mapping"):
        statuses: list[int] = []
        states: list[object] = []

        async def send(message: Message, statuses: list[int] = statuses) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))

        clock = [T0]
        mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                                clock=lambda clock=clock: clock[0], rate=1.0, burst=5.0)
        for i in range(12):
            clock[0] = T0 + i * 0.01  # 100 requests/s against a limit of 1/s, burst 5
            raw = {"type": "http", "method": "GET", "path": "/", "client": ("127.0.0.1", 1),
                   "headers": [(b"x-forwarded-for", b"198.51.100.40")]}
            scope = raw if kind == "dict" else UserDict(raw)
            await mw(scope, receive, send)  # type: ignore[arg-type]
            state = scope.get("state")
            states.append(state.get("garrison") if isinstance(state, dict) else None)
        mw.engine.drain()
        results[kind] = statuses
        allowed = [s for s, st in zip(statuses, states, strict=True) if s == 200]
        assert all(st is not None for s, st in zip(statuses, states, strict=True) if s == 200)
        client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.40"})
        mw.engine.bind(client, T0)
        assert client.irec is not None and client.irec.count == len(allowed)
    assert results["dict"] == results["mapping"]
    assert results["dict"][:5] == [200] * 5 and 429 in results["dict"]


async def test_asgi_reads_every_header_and_message_shape_the_spec_allows_alike() -> None:
    """The compiled request path reads ``(bytes, bytes)`` header tuples and dict messages with
    direct calls; header pairs as lists, a header tuple instead of a list, and messages that are
    other mappings take the generic steps and must come to the same client, the same limit and
    the same scoring (status and body bytes)."""
    from collections import UserDict

    from garrison.web.asgi import GarrisonMiddleware, Message

    shapes = ("tuples", "lists", "tuple-of-tuples", "mapping-messages")

    def app_for(shape: str) -> object:
        async def app(scope: object, receive: object, send: object) -> None:
            start: Message = {"type": "http.response.start", "status": 404, "headers": []}
            body: Message = {"type": "http.response.body", "body": b"missing"}
            if shape == "mapping-messages":
                start, body = UserDict(start), UserDict(body)
            await send(start)  # type: ignore[operator]
            await send(body)  # type: ignore[operator]
        return app

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    seen: dict[str, tuple[list[int], int, int, int, int]] = {}
    for shape in shapes:
        statuses: list[int] = []

        async def send(message: Message, statuses: list[int] = statuses) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))

        clock = [T0]
        mw = GarrisonMiddleware(app_for(shape), bus=EventBus(),  # type: ignore[arg-type]
                                trusted_proxies=["127.0.0.1"],
                                clock=lambda clock=clock: clock[0], rate=1.0, burst=5.0)
        for i in range(8):
            clock[0] = T0 + i * 0.01
            pairs = [(b"host", b"example.test"), (b"x-forwarded-for", b"198.51.100.41"),
                     (b"cookie", b"session=abc")]
            headers: object = (
                [list(p) for p in pairs] if shape == "lists"
                else tuple(pairs) if shape == "tuple-of-tuples" else pairs)
            scope = {"type": "http", "method": "GET", "path": "/x", "client": ("127.0.0.1", 1),
                     "headers": headers}
            await mw(scope, receive, send)  # type: ignore[arg-type]
        mw.engine.drain()
        client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "198.51.100.41",
                                                  "cookie": "session=abc"})
        mw.engine.bind(client, T0)
        assert client.irec is not None and client.srec is not None
        assert client.ip == "198.51.100.41"  # the forwarded address, not the proxy's
        seen[shape] = (statuses, client.irec.count, int(client.irec.volume),
                       int(client.srec.count), mw.metrics.full_checks)
    assert len(set(map(repr, seen.values()))) == 1, seen
    statuses, count, volume, _, full = seen["tuples"]
    assert statuses[:5] == [404] * 5 and 429 in statuses  # the app's answer, then the limit
    assert count == 5 and volume == 5 * len(b"missing")  # every answered request scored
    assert 1 <= full < len(statuses)  # the first visit is checked in full, armed ones are not


def test_asgi_owner_is_the_thread_that_serves_not_the_one_that_built_it() -> None:
    """An app built in one thread and served from an event loop in another keeps the lock-free
    fast path; a second serving thread turns the lock on for good, and both keep working."""
    import threading

    from garrison.web.asgi import GarrisonMiddleware, Message

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    clock = [T0]
    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: clock[0])

    async def serve(n: int, statuses: list[int]) -> None:
        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))

        for i in range(n):
            clock[0] += 1.3 + (i % 5) * 0.7  # an unhurried client
            scope = {"type": "http", "method": "GET", "path": f"/p{i % 3}",
                     "client": ("127.0.0.1", 1),
                     "headers": [(b"x-forwarded-for", b"198.51.100.50")]}
            await mw(scope, receive, send)  # type: ignore[arg-type]

    def in_thread(n: int, statuses: list[int]) -> None:
        t = threading.Thread(target=lambda: asyncio.run(serve(n, statuses)))
        t.start()
        t.join(timeout=30)
        assert not t.is_alive()

    first: list[int] = []
    in_thread(40, first)
    assert first == [200] * 40
    assert not mw.engine.threaded  # one serving thread: no lock on the fast path
    assert mw.metrics.full_checks < 10  # armed after the first visit: the fast path answered
    second: list[int] = []
    asyncio.run(serve(5, second))  # the main thread (a worker's id may be reused once it ends)
    assert second == [200] * 5
    assert mw.engine.threaded  # a second serving thread: the fast path takes the lock now
