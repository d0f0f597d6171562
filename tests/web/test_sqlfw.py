"""The SQL firewall layer (``sql_firewall=True``) over the guards' detector, real servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from garrison.bus import EventBus
from garrison.events import SQL_INJECTION, Event
from tests.web import scenarios as sc

pytest.importorskip("garrison.guards.sqli", reason="the SQL detector (issue 7) is not merged")

ATTACKS = ["1' OR '1'='1", "1 UNION SELECT username, password FROM users--",
           "x'; DROP TABLE users;--"]


def _bus() -> tuple[EventBus, list[Event]]:
    bus = EventBus()
    events: list[Event] = []
    bus.on(SQL_INJECTION, events.append)
    return bus, events


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_injection_in_query_path_cookie_and_body_is_refused(
        kind: str, serve_asgi: Callable[[Any], str], serve_wsgi: Callable[[Any], str]) -> None:
    bus, events = _bus()
    opts = {"bus": bus, "sql_firewall": True, "sql_exempt_paths": ["/static"]}
    if kind == "asgi":
        base = serve_asgi(sc.starlette_app(**opts))
    else:
        base = serve_wsgi(sc.flask_app(**opts))
    with httpx.Client(timeout=10) as http:
        # benign traffic, including words that merely look like SQL, passes
        assert http.get(base + "/page/1", params={"q": "sleep_hours or select a size"}
                        ).status_code == 200
        assert http.post(base + "/echo", json={"name": "O'Brien", "n": [1, 2]}).status_code == 200
        r = http.post(base + "/echo", data={"comment": "hello there"})
        assert r.status_code == 200 and "hello" in r.json()["body"]  # body replayed to the app
        for attack in ATTACKS:
            r = http.get(base + "/page/1", params={"id": attack})
            assert r.status_code == 403 and r.json()["reason"] == "sql-injection"
        r = http.post(base + "/echo", json={"filter": {"id": ATTACKS[0]}})
        assert r.status_code == 403
        r = http.post(base + "/echo", data={"user": ATTACKS[2]})
        assert r.status_code == 403
        r = http.get(base + "/page/1", headers={"cookie": "pref=" + ATTACKS[1].replace(" ", "+")
                                                .replace(";", "")})
        assert r.status_code in (200, 403)  # cookie encodings vary; must not crash
        r = http.get(base + "/page/1%27%20OR%20%271%27%3D%271")
        assert r.status_code in (403, 404)
        assert http.get(base + "/static/x", params={"id": ATTACKS[0]}).status_code == 200
    assert len(events) >= len(ATTACKS) + 2
    assert {e.detail["where"] for e in events} >= {"query", "body"}
