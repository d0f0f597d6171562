"""The same engine under WSGI (Flask in the stdlib wsgiref server, real httpx clients) and under
Django (its test client), with the same keyword options."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from garrison.bus import EventBus
from garrison.events import BOT_BLOCKED, IMPOSSIBLE_TRAVEL, RATE_LIMITED, Event
from tests.web import scenarios as sc
from tests.web.conftest import FakeClock


@pytest.fixture
def flask_site(serve_wsgi: Callable[[Any], str], clock: FakeClock
               ) -> Iterator[tuple[str, httpx.Client, list[Event], Any]]:
    pytest.importorskip("flask")
    bus = EventBus()
    events: list[Event] = []
    bus.on("*", events.append)
    app = sc.flask_app(clock=clock, bus=bus, trusted_proxies=["127.0.0.1"],
                       metrics_path="/metrics")
    base = serve_wsgi(app)
    with httpx.Client(timeout=10) as http:
        yield base, http, events, app.wsgi_app


def test_wsgi_bots_blocked_people_served(flask_site: tuple[str, httpx.Client, list[Event], Any],
                                         clock: FakeClock) -> None:
    base, http, events, _mw = flask_site
    send = sc.http_sender(http, base)
    for actor, bound in ((sc.scraper("192.0.2.30"), 20), (sc.stuffer("192.0.2.31"), 20),
                         (sc.flooder("192.0.2.32", interval=0.02), 150),
                         (sc.rotator("shared"), 3)):
        n = sc.first_block(sc.play(actor, send, clock.advance))
        assert n is not None and n <= bound
    r = http.get(base + "/page/1", headers={"x-forwarded-for": "192.0.2.30"})
    assert r.status_code == 429 and r.json()["reason"] == "bot" and "retry-after" in r.headers
    for i in range(3):
        statuses = sc.play(sc.human(f"198.51.100.{i}", f"w{i}", random.Random(i), minutes=6),
                           send, clock.advance)
        assert 429 not in statuses and 403 not in statuses
    statuses = sc.play(sc.poller("198.51.100.90", "dash", 1.0, minutes=5), send, clock.advance)
    assert set(statuses) == {200}
    names = {e.name for e in events}
    assert {BOT_BLOCKED, IMPOSSIBLE_TRAVEL, RATE_LIMITED} <= names
    text = http.get(base + "/metrics").text
    assert 'garrison_web_blocked_total{reason="bot"}' in text


_DJANGO_EVENTS: list[Event] = []
_DJANGO_CLOCK = FakeClock()


def _django() -> Any:
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        bus = EventBus()
        bus.on("*", _DJANGO_EVENTS.append)
        settings.configure(
            DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="tests.web.django_urls",
            MIDDLEWARE=["garrison.web.django.GarrisonMiddleware"],
            GARRISON={"store": "memory://", "threshold": 0.5, "dry_run": False, "bus": bus,
                      "clock": _DJANGO_CLOCK, "trusted_proxies": ["127.0.0.1"]},
            INSTALLED_APPS=[], DATABASES={},
        )
        django.setup()
    from django.test import Client

    return Client(REMOTE_ADDR="127.0.0.1")


def _django_sender(client: Any) -> Callable[[sc.Step], int]:
    def send(step: sc.Step) -> int:
        extra = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in step.headers.items()}
        if step.method == "POST":
            r = client.post(step.path, data=step.form or {}, **extra)
        else:
            r = client.get(step.path, **extra)
        return int(r.status_code)

    return send


def test_django_middleware_from_settings() -> None:
    client = _django()
    send = _django_sender(client)
    for actor, bound in ((sc.scraper("192.0.2.40"), 20), (sc.stuffer("192.0.2.41"), 20),
                         (sc.rotator("dj-shared"), 3)):
        n = sc.first_block(sc.play(actor, send, _DJANGO_CLOCK.advance))
        assert n is not None and n <= bound
    r = client.get("/page/1", HTTP_X_FORWARDED_FOR="192.0.2.40")
    assert r.status_code == 429 and r.json()["reason"] == "bot"
    for i in range(2):
        statuses = sc.play(sc.human(f"198.51.100.{60 + i}", f"d{i}", random.Random(i), minutes=5),
                           send, _DJANGO_CLOCK.advance)
        assert 429 not in statuses
    statuses = sc.play(sc.poller("198.51.100.91", "dash", 1.0, minutes=5), send,
                       _DJANGO_CLOCK.advance)
    assert set(statuses) == {200}
    assert {BOT_BLOCKED, IMPOSSIBLE_TRAVEL} <= {e.name for e in _DJANGO_EVENTS}


def test_django_async_handler_runs_the_middleware_as_a_coroutine() -> None:
    """Under Django's async handler (ASGI; here its AsyncClient) the middleware is a coroutine
    in the chain, with the same verdicts: bots refused, people and pollers served."""
    import asyncio

    _django()
    from django.test import AsyncClient

    client = AsyncClient()
    loop = asyncio.new_event_loop()

    def send(step: sc.Step) -> int:
        if step.method == "POST":
            call = client.post(step.path, data=step.form or {}, headers=step.headers)
        else:
            call = client.get(step.path, headers=step.headers)
        return int(loop.run_until_complete(call).status_code)

    try:
        n = sc.first_block(sc.play(sc.scraper("192.0.2.140"), send, _DJANGO_CLOCK.advance))
        assert n is not None and n <= 20
        r = loop.run_until_complete(client.get("/page/1",
                                               headers={"x-forwarded-for": "192.0.2.140"}))
        assert r.status_code == 429 and r.json()["reason"] == "bot"
        assert int(r["retry-after"]) >= 1
        statuses = sc.play(sc.human("198.51.100.160", "ad0", random.Random(9), minutes=5),
                           send, _DJANGO_CLOCK.advance)
        assert 429 not in statuses and 200 in statuses
        statuses = sc.play(sc.poller("198.51.100.191", "adash", 1.0, minutes=3), send,
                           _DJANGO_CLOCK.advance)
        assert set(statuses) == {200}
    finally:
        loop.close()
    mw = client.handler._middleware_chain.__wrapped__
    assert mw.is_async and asyncio.iscoroutinefunction(mw.get_response)
