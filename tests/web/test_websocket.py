"""WebSocket handshakes behind GarrisonMiddleware: a real uvicorn server (its ``websockets``
implementation) and a real WebSocket client. A banned, limited or blocklisted client is refused
before the app; an allowed one reaches it with its verdict; handshakes count for the limiter
and for scoring like requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from garrison.bus import EventBus
from garrison.events import RATE_LIMITED, Event
from tests.web import scenarios as sc
from tests.web.conftest import FakeClock
from tests.web.test_asgi_scenarios import Reputation

websockets = pytest.importorskip("websockets", reason="needs the websockets package (web extra)")
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


def _ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/live"


def _open(base: str, ip: str) -> tuple[int, dict[str, str], bytes, list[str]]:
    """One handshake from ``ip``: (status, response headers, refusal body, messages)."""
    try:
        with connect(_ws(base), additional_headers={"X-Forwarded-For": ip},
                     open_timeout=10, close_timeout=5) as ws:
            first = str(ws.recv(timeout=10))
            ws.send("hello")
            return 101, {}, b"", [first, str(ws.recv(timeout=10))]
    except InvalidStatus as exc:
        r = exc.response
        return r.status_code, {k.lower(): v for k, v in r.headers.raw_items()}, r.body or b"", []


def _site(serve_asgi: Callable[[Any], str], clock: FakeClock,
          **options: Any) -> tuple[str, Any, list[Event]]:
    bus = EventBus()
    events: list[Event] = []
    bus.on("*", events.append)
    app = sc.starlette_app(clock=clock, bus=bus, trusted_proxies=["127.0.0.1"], **options)
    return serve_asgi(app), sc.middleware_of(app), events


def test_an_allowed_client_reaches_the_app_with_its_verdict(
        serve_asgi: Callable[[Any], str], clock: FakeClock) -> None:
    base, mw, _ = _site(serve_asgi, clock)
    status, _, _, messages = _open(base, "203.0.113.20")
    assert status == 101
    assert 0.0 < json.loads(messages[0])["trust"] <= 1.0  # the verdict, in scope["state"]
    assert messages[1] == "echo hello"
    mw.engine.drain()
    client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "203.0.113.20"})
    mw.engine.bind(client, clock())
    assert client.irec is not None and client.irec.count == 1  # the handshake was scored


def test_a_blocklisted_address_is_refused_before_the_app(
        serve_asgi: Callable[[Any], str], clock: FakeClock) -> None:
    base, _, _ = _site(serve_asgi, clock, reputation=Reputation({"203.0.113.66"}))
    status, _, body, messages = _open(base, "203.0.113.66")
    assert status == 403 and messages == []
    assert json.loads(body)["reason"] == "blocklist"
    assert _open(base, "203.0.113.67")[0] == 101  # its neighbour is not


def test_a_handshake_flood_is_limited_with_retry_after_and_others_are_not(
        serve_asgi: Callable[[Any], str], clock: FakeClock) -> None:
    base, _, events = _site(serve_asgi, clock, rate=1.0, burst=3.0)
    codes: list[int] = []
    refusal: tuple[dict[str, str], bytes] = ({}, b"")
    for _ in range(12):  # bounded: twelve handshakes, no time passing
        status, headers, body, _ = _open(base, "203.0.113.30")
        codes.append(status)
        if status == 429:
            refusal = (headers, body)
    assert codes[:3] == [101] * 3 and codes[-1] == 429
    assert int(refusal[0]["retry-after"]) >= 1
    assert json.loads(refusal[1])["error"] == "too many requests"
    assert RATE_LIMITED in [e.name for e in events]
    assert _open(base, "203.0.113.31")[0] == 101  # another client keeps its own limit


def test_a_client_refused_over_http_cannot_open_a_websocket_either(
        serve_asgi: Callable[[Any], str], clock: FakeClock) -> None:
    import httpx

    base, _, _ = _site(serve_asgi, clock, rate=1.0, burst=3.0)
    with httpx.Client(timeout=10) as http:
        codes = [http.get(base + "/page/1", headers={"x-forwarded-for": "203.0.113.40"})
                 .status_code for _ in range(10)]
    assert 429 in codes
    assert _open(base, "203.0.113.40")[0] == 429


async def test_without_the_http_response_extension_a_refusal_is_a_close() -> None:
    """A server without ``websocket.http.response`` (wsproto, say) gets a close before the
    accept, which it answers with 403; the app never runs."""
    from garrison.web.asgi import GarrisonMiddleware, Message

    ran: list[str] = []

    async def app(scope: object, receive: object, send: object) -> None:
        ran.append("app")

    sent: list[Message] = []
    inbox: list[Message] = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    mw = GarrisonMiddleware(app, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            reputation=Reputation({"203.0.113.70"}))
    scope = {"type": "websocket", "path": "/live", "client": ("127.0.0.1", 1),
             "headers": [(b"x-forwarded-for", b"203.0.113.70")]}
    await mw(scope, receive, send)  # type: ignore[arg-type]
    assert ran == [] and sent == [{"type": "websocket.close", "code": 1008}]


def test_the_sql_firewall_checks_a_handshake_query(serve_asgi: Callable[[Any], str],
                                                    clock: FakeClock) -> None:
    pytest.importorskip("garrison.guards.sqli", reason="the SQL detector is not installed")
    from garrison.events import SQL_INJECTION

    base, _, events = _site(serve_asgi, clock, sql_firewall=True)
    assert _open(base, "203.0.113.90")[0] == 101  # a plain handshake passes
    url = _ws(base) + "?room=" + "1' OR '1'='1".replace(" ", "%20").replace("'", "%27")
    try:
        with connect(url, additional_headers={"X-Forwarded-For": "203.0.113.91"},
                     open_timeout=10):
            refused: tuple[int, bytes] = (101, b"")
    except InvalidStatus as exc:
        refused = (exc.response.status_code, exc.response.body or b"")
    assert refused[0] == 403 and json.loads(refused[1])["reason"] == "sql-injection"
    assert SQL_INJECTION in [e.name for e in events]
    with connect(_ws(base) + "?room=lobby", open_timeout=10,
                 additional_headers={"X-Forwarded-For": "203.0.113.92"}) as ws:
        # a harmless query string still connects
        assert json.loads(str(ws.recv(timeout=10)))["trust"] is not None
