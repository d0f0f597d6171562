"""Pure ASGI middleware: ``app.add_middleware(GarrisonMiddleware, store="memory://", ...)``.

A plain ASGI callable (not Starlette's BaseHTTPMiddleware, which breaks contextvars, background
tasks and streaming). Before the app: one check (local memory, else one store call). After the
last body chunk has gone to the server: scoring. The verdict is put at
``scope["state"]["garrison"]`` (``request.state.garrison`` in Starlette).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from garrison.store.base import CheckRequest
from garrison.web.engine import Decision, WebEngine
from garrison.web.options import WebOptions
from garrison.web.sqlfw import load_inspector, scan, wants_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("garrison.web")


async def _answer(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GarrisonMiddleware:
    """Bot scoring, session-hijack detection and adaptive rate limiting for an ASGI app.

    Keyword options: see :class:`garrison.web.options.WebOptions`.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.options = WebOptions(**options)
        self.engine = WebEngine(self.options)
        self._inspect = load_inspector() if self.options.sql_firewall else None
        # Position of each header identify_raw() reads, after the peer at 0.
        self._slot = {n.encode("latin-1"): i + 1 for i, n in enumerate(self.engine.raw_names)}
        self._none: tuple[None, ...] = (None,) * len(self.engine.raw_names)
        # Per-request settings read once here, not per request.
        self._metrics_path = self.options.metrics_path
        self._exempt = self.engine.exempt

    @property
    def metrics(self) -> Any:
        return self.engine.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        eng = self.engine
        path: str = scope.get("path") or "/"
        if path == self._metrics_path:
            body = eng.metrics.render().encode()
            await _answer(send, 200, [("content-type", "text/plain; version=0.0.4")], body)
            return
        if self._exempt and path.startswith(self._exempt):
            await self.app(scope, receive, send)
            return
        slot = self._slot  # ASGI header names are lower-case bytes already
        content_type = None
        content_length = -1
        try:
            peer = scope.get("client")
            raw: list[bytes | str | None] = [peer[0] if peer else None, *self._none]
            for k, v in scope.get("headers") or ():
                i = slot.get(k)
                if i is not None:
                    raw[i] = v
                elif k == b"content-type":
                    content_type = v.decode("latin-1")
                elif k == b"content-length":
                    try:
                        content_length = int(v)
                    except ValueError:
                        content_length = -1
            client = eng.identify_raw(tuple(raw))
            now = eng.clock()
            pre = eng.precheck(client, now)
            if isinstance(pre, CheckRequest):
                decision = eng.decide(client, await eng.store.acheck(pre), now)
            else:
                decision = pre
        except Exception as exc:  # a protection layer's own bug must not take the app down
            eng.internal_error(exc)
            await self.app(scope, receive, send)
            return
        if not decision.allowed:
            await _answer(send, decision.status, decision.headers(), decision.body())
            return
        if self._inspect is not None and eng.sql_applies(path):
            ck = raw[self._slot[b"cookie"]]
            cookie = ck.decode("latin-1") if isinstance(ck, bytes) else None
            refused, receive = await self._sql(scope, receive, cookie, content_type,
                                               content_length, client, now)
            if refused is not None and not refused.allowed:
                await _answer(send, refused.status, refused.headers(), refused.body())
                return
        state = scope.setdefault("state", {})
        state["garrison"] = decision.verdict
        status = 500
        size = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            try:
                eng.after(client, path, status, size, now)
            except Exception:  # scoring must never break a response that already went out
                log.exception("scoring failed")

    async def _sql(self, scope: Scope, receive: Receive, cookie: str | None,
                   content_type: str | None, content_length: int, client: Any,
                   now: float) -> tuple[Decision | None, Receive]:
        """Inspect the request for SQL injection; buffer a small body and replay it."""
        assert self._inspect is not None
        eng = self.engine
        body: bytes | None = None
        replay: list[Message] = []
        if (wants_body(content_type) and scope.get("method") in ("POST", "PUT", "PATCH")
                and 0 <= content_length <= self.options.max_body):
            chunks: list[bytes] = []
            total = 0
            while True:
                message = await receive()
                replay.append(message)
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                total += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False) or total > self.options.max_body:
                    break
            if total <= self.options.max_body:
                body = b"".join(chunks)
        try:
            found = scan(self._inspect, self.options.sql_paranoia, scope.get("path") or "/",
                         (scope.get("query_string") or b"").decode("latin-1"),
                         cookie, body, content_type)
        except Exception as exc:  # the detector failing is no reason to refuse the request
            eng.internal_error(exc)
            found = None
        if replay:
            original = receive

            async def replaying() -> Message:
                if replay:
                    return replay.pop(0)
                return await original()

            receive = replaying
        if found is None:
            return None, receive
        return eng.refuse_sql(client, found[1], found[0], now), receive
