"""Pure ASGI middleware: ``app.add_middleware(GarrisonMiddleware, store="memory://", ...)``.

A plain ASGI callable (not Starlette's BaseHTTPMiddleware, which breaks contextvars, background
tasks and streaming). Before the app: one check (local memory, else one store call). After the
last body chunk has gone to the server: scoring. The verdict is put at
``scope["state"]["garrison"]`` (``request.state.garrison`` in Starlette).

The request path is short on purpose: a server spends a few hundred microseconds on a request,
evicting the middleware's code and data from the CPU caches in between, so every line here
costs several times what it costs in a loop. A returning client is one pass over the header
list, one cache lookup and :meth:`WebEngine.fast`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from garrison.store.base import CheckRequest
from garrison.web import rawkey
from garrison.web.engine import Client, Decision, WebEngine
from garrison.web.options import WebOptions
from garrison.web.sqlfw import load_inspector, scan, wants_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("garrison.web")
_get_ident: Final = threading.get_ident  # Final: compiled, no module lookup per request


async def _answer(send: Send, status: int, headers: list[tuple[str, str]], body: bytes,
                  kind: str = "http.response") -> None:
    """Send a whole response: ``kind`` is ``http.response`` or, refusing a WebSocket
    handshake, ``websocket.http.response``."""
    raw = [(k.encode(), v.encode()) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": kind + ".start", "status": status, "headers": raw})
    await send({"type": kind + ".body", "body": body})


def _path(scope: Scope) -> str:
    """The request's path, "/" when it is missing, empty or not text."""
    path = scope.get("path")
    return path if isinstance(path, str) and path else "/"


def _status(value: Any) -> int:
    """A response status the app gave as something other than an int: its number, else 500
    (the server will refuse the response; scoring counts it as the server's error)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 500


def _sent(message: Message) -> Awaitable[None]:
    """A queued request's ``send``: the response is over, nothing more may go out."""
    raise RuntimeError("send after the app returned")


class _Watch:
    """The server's ``send``, watched for the response's status and body size; with the
    request's client, path and time, queued for scoring by :meth:`done`, which lets go of the
    server's ``send`` first.

    A plain callable that returns the server's own awaitable: no coroutine of its own per
    message, which a wrapper written as ``async def`` would cost on every ``send``.
    """

    __slots__ = ("client", "engine", "now", "path", "send", "size", "status")

    def __init__(self, send: Send, engine: WebEngine, client: Client, path: str,
                 now: float) -> None:
        self.send = send
        self.status = 500  # the app never started a response: the server's error
        self.size = 0
        self.client = client
        self.path = path
        self.now = now
        self.engine = engine

    def __call__(self, message: Message) -> Awaitable[None]:
        # A dict, as apps send them, is read with direct calls when compiled; anything else
        # the spec allows is copied first. Watching never raises: a message the server would
        # refuse (no type, a body that is not bytes, a status that is not a number) goes to the
        # server as it is, which answers it as it would without the middleware.
        out = self.send(message)  # first: a send after the request was queued raises here
        m: dict[str, Any] = message if isinstance(message, dict) else dict(message)
        kind = m.get("type")
        if isinstance(kind, str):  # compiled: a str comparison, not a generic one
            if kind == "http.response.body":
                body = m.get("body", b"")
                if isinstance(body, (bytes, bytearray)):
                    self.size += len(body)
            elif kind == "http.response.start":
                status = m.get("status")
                self.status = status if isinstance(status, int) else _status(status)
        return out

    def done(self) -> None:
        """The app has returned: queue the request for scoring (it never breaks a response
        that already went out)."""
        self.send = _sent  # nothing more may go out, and the server's objects are let go
        try:
            self.engine.after(self.client, self.path, self.status, self.size, self.now)
        except Exception:
            log.exception("scoring failed")


class _Handshake:
    """The server's ``send`` for a WebSocket connection, watched for the handshake's answer
    (accepted: 101; closed first: 403; an HTTP response: its status), which is scored as the
    request's outcome when it passes (a connection may stay open for hours)."""

    def __init__(self, send: Send, engine: WebEngine, client: Client, path: str,
                 now: float) -> None:
        self.send = send
        self.engine = engine
        self.client = client
        self.path = path
        self.now = now
        self.scored = False

    def __call__(self, message: Message) -> Awaitable[None]:
        if not self.scored:
            kind = message.get("type")
            if kind == "websocket.accept":
                self._score(101)
            elif kind == "websocket.close":
                self._score(403)
            elif kind == "websocket.http.response.start":
                self._score(int(message.get("status", 500)))
        return self.send(message)

    def _score(self, status: int) -> None:
        self.scored = True
        try:
            self.engine.after(self.client, self.path, status, 0, self.now)
        except Exception:
            log.exception("scoring failed")

    def done(self) -> None:
        """The app has returned: a handshake it never answered is the server's error."""
        if not self.scored:
            self._score(500)


class GarrisonMiddleware:
    """Bot scoring, session-hijack detection and adaptive rate limiting for an ASGI app.

    Keyword options: see :class:`garrison.web.options.WebOptions`.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.options = WebOptions(**options)
        self.engine = WebEngine(self.options)
        self._inspect = load_inspector() if self.options.sql_firewall else None
        # The header names identify_raw() reads, as ASGI spells them (lower-case bytes).
        self._names = tuple(n.encode("latin-1") for n in self.engine.raw_names)
        self._fast_key = rawkey.fast_key
        self._clients = self.engine.raw_clients
        # Per-request settings read once here, not per request.
        # "" for none: a request's path is never empty here (it is "/" at least).
        self._metrics_path: str = self.options.metrics_path or ""
        self._exempt = self.engine.exempt
        # The thread that serves requests: the first one that sends an HTTP request, not the
        # one that built the middleware (an app is often built in one thread and served from
        # an event loop in another: test clients, servers started from a thread).
        self._owner = 0
        self._claim_lock = threading.Lock()

    @property
    def metrics(self) -> Any:
        return self.engine.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Kept small on purpose: a compiled coroutine carries every local of its function, so
        # the common case (a returning client, admitted from local memory) is decided by the
        # plain method _fast_path and this frame holds only what the await needs.
        try:
            watch = self._fast_path(scope, send) if isinstance(scope, dict) else None
        except Exception as exc:  # a protection layer's own bug must not take the app down
            self.engine.internal_error(exc)
            await self.app(scope, receive, send)
            return
        if watch is None:
            await self._full(scope, receive, send)
            return
        try:
            await self.app(scope, receive, watch)
        finally:
            watch.done()

    def _fast_path(self, scope: dict[str, Any], send: Send) -> _Watch | None:
        """The watched ``send`` for a request admitted on the fast path (the verdict already in
        ``scope["state"]``), or None: anything else (not HTTP, the metrics or an exempt path,
        a client that is not armed, threads, the SQL firewall) takes :meth:`_full`."""
        kind = scope["type"]
        if not (isinstance(kind, str) and kind == "http") or self._inspect is not None:
            return None
        eng = self.engine
        if eng.threaded:
            return None  # the fast path then needs the lock: precheck in _full takes it
        path = _path(scope)
        if path == self._metrics_path or (self._exempt and path.startswith(self._exempt)):
            return None
        client = self._client(scope)
        now = eng.clock()
        if _get_ident() != self._owner and not self._claim():
            return None
        if not eng.armed(client, now):
            return None
        verdict = client.verdict  # the armed decision's (one object fewer to read)
        state = scope.get("state")
        if isinstance(state, dict):  # as servers make it (compiled: a direct dict store)
            state["garrison"] = verdict
        elif state is None:
            scope["state"] = {"garrison": verdict}
        else:
            state["garrison"] = verdict
        return _Watch(send, eng, client, path, now)

    def _claim(self) -> bool:
        """Called from a thread that is not the owner: True if it becomes the owner (the first
        HTTP request), else the middleware is served from several threads and the fast path
        takes the lock from now on (False)."""
        with self._claim_lock:
            if self._owner == 0:
                self._owner = _get_ident()
                return True
        self.engine.threaded = True
        return False

    def _client(self, scope: dict[str, Any]) -> Client:
        """The client of a request: its key (:mod:`garrison.web.rawkey`: one pass over the
        header list, in C where it was built) and one cache lookup by it. A header list of
        another shape than servers build, or a client not seen lately, takes the generic
        steps, with the same result."""
        peer = scope.get("client")
        host = peer[0] if peer else None
        headers = scope.get("headers")
        names = self._names
        key = self._fast_key(headers, host, names)
        if key is None:  # the helper declined this shape: it would decline the pick too
            parts = rawkey.python_pick(headers, host, names)
            key = rawkey.encode(parts)
            client = self._clients.get(key)
            return client if client is not None else self.engine.identify_raw(parts, key)
        client = self._clients.get(key)
        if client is None:
            client = self.engine.identify_raw(rawkey.pick(headers, host, names), key)
        return client

    async def _full(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request :meth:`_fast_path` did not take: the full check before the app.

        A WebSocket handshake takes the same check as a request (a banned, limited or moved
        client, or one the SQL firewall finds injection in, is refused before the app sees
        it) and is scored by its outcome; the messages of an open connection are not limited.
        """
        kind = scope["type"]
        ws = kind == "websocket"
        if kind != "http" and not ws:  # lifespan, and whatever else a server may add
            await self.app(scope, receive, send)
            return
        eng = self.engine
        path = _path(scope)
        if path == self._metrics_path and not ws:
            body = eng.metrics.render().encode()
            await _answer(send, 200, [("content-type", "text/plain; version=0.0.4")], body)
            return
        if self._exempt and path.startswith(self._exempt):
            await self.app(scope, receive, send)
            return
        checked = await self._check(scope)
        if checked is None:  # the middleware failed: the request goes on unchecked
            await self.app(scope, receive, send)
            return
        client, now, decision = checked
        if decision.allowed and self._inspect is not None and eng.sql_applies(path):
            # a handshake has no body: its path, query string and cookies are inspected
            refused, receive = await self._sql(scope, receive, dict(scope.get("headers") or ()),
                                               client, now)
            if refused is not None and not refused.allowed:
                decision = refused
        if not decision.allowed:
            if ws:
                await self._refuse_handshake(scope, receive, send, decision)
            else:
                await _answer(send, decision.status, decision.headers(), decision.body())
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["garrison"] = decision.verdict
        watch: _Watch | _Handshake = (_Handshake(send, eng, client, path, now) if ws
                                      else _Watch(send, eng, client, path, now))
        try:
            await self.app(scope, receive, watch)
        finally:
            watch.done()

    async def _check(self, scope: Scope) -> tuple[Client, float, Decision] | None:
        """The full check of a request or a handshake: its client, time and decision, or None
        when the middleware itself failed (counted; the request must then pass)."""
        eng = self.engine
        try:
            client = self._client(scope if isinstance(scope, dict) else dict(scope))
            now = eng.clock()
            if _get_ident() != self._owner:
                self._claim()
            pre = eng.precheck(client, now)  # fast() again first: it declines at once
            if isinstance(pre, CheckRequest):
                return client, now, eng.decide(client, await eng.store.acheck(pre), now)
            return client, now, pre
        except Exception as exc:  # a protection layer's own bug must not take the app down
            eng.internal_error(exc)
            return None

    async def _refuse_handshake(self, scope: Scope, receive: Receive, send: Send,
                                decision: Decision) -> None:
        """Refuse a WebSocket handshake: the refusal's status, headers and JSON body with the
        ``websocket.http.response`` extension, else a close (the server answers 403)."""
        message = await receive()  # the handshake's websocket.connect
        if message.get("type") != "websocket.connect":
            return  # the client went away first
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await _answer(send, decision.status, decision.headers(), decision.body(),
                          "websocket.http.response")
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _sql(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes],
                   client: Any, now: float) -> tuple[Decision | None, Receive]:
        """Inspect the request for SQL injection; buffer a small body and replay it."""
        assert self._inspect is not None
        eng = self.engine
        ck = headers.get(b"cookie")
        cookie = ck.decode("latin-1") if ck is not None else None
        ct = headers.get(b"content-type")
        content_type = ct.decode("latin-1") if ct is not None else None
        try:
            content_length = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            content_length = -1
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
