"""Actors for the web scenarios and the small site they visit (ASGI, WSGI and Django twins).

An actor is a generator of :class:`Step`: wait ``dt`` simulated seconds, then send one request.
Clients are told apart by ``X-Forwarded-For`` behind a trusted proxy (127.0.0.1), the way an app
behind nginx sees them; cookies carry sessions.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

PASSWORD = "correct horse"


@dataclass(frozen=True)
class Step:
    dt: float
    path: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] | None = None


Actor = Iterator[Step]


def _h(ip: str | None, cookie: str | None) -> dict[str, str]:
    h: dict[str, str] = {}
    if ip:
        h["x-forwarded-for"] = ip
    if cookie:
        h["cookie"] = f"session={cookie}"
    return h


def scraper(ip: str, interval: float = 1.0, pages: int = 500) -> Actor:
    """Walks distinct pages at a fixed interval, no cookie."""
    for n in range(pages):
        yield Step(interval, f"/page/{n}", headers=_h(ip, None))


def flooder(ip: str | None, interval: float = 0.02, count: int = 1000,
            rotate_xff: bool = False) -> Actor:
    """Hammers one page as fast as it can; optionally writes a new X-Forwarded-For each time."""
    for n in range(count):
        fake = f"203.0.113.{n % 250 + 1}" if rotate_xff else ip
        yield Step(interval, "/page/1", headers=_h(fake, None))


def stuffer(ip: str, interval: float = 0.5, count: int = 500) -> Actor:
    """Credential stuffing: POST /login with leaked pairs, nearly all failing."""
    for n in range(count):
        yield Step(interval, "/login", "POST", headers=_h(ip, None),
                   form={"user": f"user{n}@example.org", "password": f"hunter{n}"})


def rotator(cookie: str, interval: float = 1.0, count: int = 100) -> Actor:
    """A bot spreading one session over many addresses (and networks) to dodge per-IP limits."""
    nets = ["192.0.2.{}", "198.51.100.{}", "203.0.113.{}", "2001:db8:{}::1"]
    for n in range(count):
        ip = nets[n % len(nets)].format(n // len(nets) % 250 + 1)
        yield Step(interval, f"/page/{n}", headers=_h(ip, cookie))


def human(ip: str, cookie: str, rng: random.Random, minutes: float = 15.0) -> Actor:
    """A person: pages with their assets, irregular reading pauses, back and forth, some 404s."""
    t = 0.0
    history = [0]
    first = True
    while t < minutes * 60:
        roll = rng.random()
        if roll < 0.2 and len(history) > 1:
            page = history[-2]  # back
        elif roll < 0.27:
            page = -1  # a dead link
        else:
            page = rng.randrange(0, 40)
        think = 0.0 if first else rng.lognormvariate(2.0, 0.9)  # median ~7 s
        first = False
        t += think
        if page < 0:
            yield Step(think, f"/old/{rng.randrange(1000)}", headers=_h(ip, cookie))
            continue
        history.append(page)
        yield Step(think, f"/page/{page}", headers=_h(ip, cookie))
        for asset in rng.sample(["app.css", "app.js", "logo.png", "font.woff2", "hero.jpg",
                                 "icons.svg"], rng.randint(3, 6)):
            dt = rng.uniform(0.005, 0.08)
            t += dt
            yield Step(dt, f"/static/{asset}", headers=_h(ip, cookie))


def poller(ip: str, cookie: str | None, interval: float = 1.0, minutes: float = 10.0) -> Actor:
    """A dashboard tab asking /api/status at a fixed interval."""
    for _ in range(int(minutes * 60 / interval)):
        yield Step(interval, "/api/status", headers=_h(ip, cookie))


def play(actor: Actor, send: Callable[[Step], int], advance: Callable[[float], None],
         stop_on_block: bool = True) -> list[int]:
    """Play ``actor``; returns the status codes (stops at the first 429/403 if asked)."""
    statuses = []
    for step in actor:
        advance(step.dt)
        status = send(step)
        statuses.append(status)
        if stop_on_block and status in (403, 429):
            break
    return statuses


def http_sender(client: httpx.Client, base: str) -> Callable[[Step], int]:
    def send(step: Step) -> int:
        r = client.request(step.method, base + step.path, headers=step.headers,
                           data=step.form)
        return r.status_code

    return send


def first_block(statuses: list[int]) -> int | None:
    """1-based index of the first refused request, or None."""
    for i, s in enumerate(statuses, 1):
        if s in (403, 429):
            return i
    return None


# -- the site, three times ---------------------------------------------------------------
def starlette_app(**middleware: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from garrison.web import GarrisonMiddleware

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page " + request.path_params["n"] + " " + "x" * 2000)

    async def static(request: Request) -> PlainTextResponse:
        return PlainTextResponse("asset" * 200)

    async def status(request: Request) -> JSONResponse:
        verdict = getattr(request.state, "garrison", None)
        return JSONResponse({"ok": True, "trust": None if verdict is None else verdict.trust})

    async def login(request: Request) -> JSONResponse:
        form = urllib.parse.parse_qs((await request.body()).decode())
        ok = form.get("password") == [PASSWORD]
        return JSONResponse({"ok": ok}, status_code=200 if ok else 401)

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"body": (await request.body()).decode()})

    async def live(ws: WebSocket) -> None:
        await ws.accept()
        verdict = ws.scope.get("state", {}).get("garrison")
        await ws.send_json({"trust": None if verdict is None else verdict.trust})
        await ws.send_text("echo " + await ws.receive_text())
        await ws.close()

    app = Starlette(routes=[
        Route("/page/{n}", page), Route("/static/{name}", static),
        Route("/api/status", status), Route("/login", login, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]), WebSocketRoute("/live", live),
    ])
    app.add_middleware(GarrisonMiddleware, **middleware)
    return app


def middleware_of(app: Any) -> Any:
    """The GarrisonMiddleware instance inside a built Starlette app."""
    from garrison.web import GarrisonMiddleware

    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    node = app.middleware_stack
    while node is not None and not isinstance(node, GarrisonMiddleware):
        node = getattr(node, "app", None)
    assert node is not None
    return node


def flask_app(**middleware: Any) -> Any:
    from flask import Flask, jsonify, request

    from garrison.web import GarrisonWSGIMiddleware

    app = Flask("garrison-test")

    @app.get("/page/<n>")
    def page(n: str) -> str:
        return "page " + n + " " + "x" * 2000

    @app.get("/static/<name>")
    def static_file(name: str) -> str:
        return "asset" * 200

    @app.get("/api/status")
    def status() -> Any:
        return jsonify(ok=True)

    @app.post("/login")
    def login() -> Any:
        ok = request.form.get("password") == PASSWORD
        return jsonify(ok=ok), (200 if ok else 401)

    @app.post("/echo")
    def echo() -> Any:
        return jsonify(body=request.get_data(as_text=True))

    app.wsgi_app = GarrisonWSGIMiddleware(app.wsgi_app, **middleware)  # type: ignore[method-assign]
    return app
