"""What a BaseHTTPMiddleware-style wrapper breaks and GarrisonMiddleware must not (FIELD-NOTES:
the predecessor's middleware broke context variables, background tasks and streaming): a real
Starlette app in a real uvicorn server, real httpx clients."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from garrison.bus import EventBus
from tests.web import scenarios as sc
from tests.web.conftest import FakeClock, wait_for

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _app(clock: FakeClock, ran: list[str], release: threading.Event) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    from garrison.web import GarrisonMiddleware

    async def context(request: Request) -> PlainTextResponse:
        seen = REQUEST_ID.get()  # set by the outer middleware, before ours
        REQUEST_ID.set("set-by-endpoint")  # seen by the outer middleware after the app
        return PlainTextResponse(seen)

    async def background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(ran.append, "task"))

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            import anyio

            yield b"first;"
            for _ in range(200):  # bounded: the test releases it, or 10 s pass
                if release.is_set():
                    break
                await anyio.sleep(0.05)
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    inner = Starlette(routes=[Route("/context", context), Route("/background", background),
                              Route("/stream", stream)])
    inner.add_middleware(GarrisonMiddleware, clock=clock, bus=EventBus(),
                         trusted_proxies=["127.0.0.1"])

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        """A pure ASGI middleware outside Garrison's: sets a context variable before and
        reads it after the app."""
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        token = REQUEST_ID.set("outer-" + scope["path"])
        try:
            await inner(scope, receive, send)
            ran.append("after:" + REQUEST_ID.get())
        finally:
            REQUEST_ID.reset(token)

    return inner, outer


@pytest.mark.parametrize(("path", "body", "mark"), [
    # a context variable set outside is seen by the endpoint, and the endpoint's by the outside
    ("/context", "outer-/context", "after:set-by-endpoint"),
    # a background task runs after the response
    ("/background", "queued", "task"),
], ids=["context-variables", "background-task"])
def test_what_runs_around_the_endpoint_still_runs(serve_asgi: Callable[[Any], str],
                                                  clock: FakeClock, path: str, body: str,
                                                  mark: str) -> None:
    ran: list[str] = []
    _, app = _app(clock, ran, threading.Event())
    base = serve_asgi(app)
    r = httpx.get(base + path, timeout=10)
    assert r.status_code == 200 and r.text == body
    wait_for(lambda: mark in ran, what=mark)


def test_streaming_is_not_buffered_and_every_byte_is_scored(serve_asgi: Callable[[Any], str],
                                                            clock: FakeClock) -> None:
    ran: list[str] = []
    release = threading.Event()
    inner, app = _app(clock, ran, release)
    base = serve_asgi(app)
    with httpx.stream("GET", base + "/stream", timeout=10,
                      headers={"x-forwarded-for": "203.0.113.80"}) as r:
        parts = r.iter_raw()
        first = next(parts)  # arrives while the generator still waits: not buffered
        assert first == b"first;" and not release.is_set()
        release.set()
        rest = b"".join(parts)
    assert first + rest == b"first;second"
    mw = sc.middleware_of(inner)
    client = mw.engine.identify("127.0.0.1", {"x-forwarded-for": "203.0.113.80"})

    def scored() -> bool:
        # The server queues the request once the app has returned, which may be after the
        # client has read the last chunk; its event loop's timer scores the queue.
        mw.engine.bind(client, clock())
        return client.irec is not None and client.irec.count == 1

    wait_for(scored, what="the streamed request to be scored")
    assert client.irec is not None
    assert client.irec.volume == len(b"first;second")  # every streamed chunk counted
