"""WSGI middleware (Flask and friends): ``app.wsgi_app = GarrisonWSGIMiddleware(app.wsgi_app)``.

Same engine and keyword options as the ASGI middleware. Scoring runs when the server closes
the response iterable, i.e. after the body has been written to the client. The verdict is put
at ``environ["garrison.verdict"]``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from garrison.store.base import CheckRequest
from garrison.web.engine import Client, Decision, WebEngine
from garrison.web.options import WebOptions
from garrison.web.sqlfw import load_inspector, scan, wants_body

log = logging.getLogger("garrison.web")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {200: "OK", 403: "Forbidden", 429: "Too Many Requests"}


def environ_headers(environ: dict[str, Any], wanted: frozenset[str]) -> dict[str, str]:
    """The wanted (lower-case) headers of a WSGI environ."""
    out = {}
    for name in wanted:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value is not None:
            out[name] = str(value)
    return out


class _Scored:
    """The app's response iterable, counting bytes and scoring when the server closes it."""

    def __init__(self, inner: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._inner = inner
        self._done = done
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self.size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            try:
                self._done(self.size)
            except Exception:  # scoring must never break a response that already went out
                log.exception("scoring failed")


class GarrisonWSGIMiddleware:
    """Bot scoring, session-hijack detection and adaptive rate limiting for a WSGI app."""

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.options = WebOptions(**options)
        self.engine = WebEngine(self.options)
        self.engine.threaded = True  # WSGI servers answer requests on several threads
        self._inspect = load_inspector() if self.options.sql_firewall else None

    @property
    def metrics(self) -> Any:
        return self.engine.metrics

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        eng = self.engine
        path = environ.get("PATH_INFO") or "/"
        if self.options.metrics_path is not None and path == self.options.metrics_path:
            body = eng.metrics.render().encode()
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if eng.is_exempt(path):
            return self.app(environ, start_response)
        try:
            headers = environ_headers(environ, eng.header_names)
            client = eng.identify(environ.get("REMOTE_ADDR"), headers)
            now = eng.clock()
            pre = eng.precheck(client, now)
            decision = eng.decide(client, eng.store.check(pre), now) \
                if isinstance(pre, CheckRequest) else pre
            refused = None
            if decision.allowed and self._inspect is not None and eng.sql_applies(path):
                refused = self._sql(environ, headers, client, now)
        except Exception as exc:  # a protection layer's own bug must not take the app down
            eng.internal_error(exc)
            return self.app(environ, start_response)
        if not decision.allowed:
            return self._refuse(decision, start_response)
        if refused is not None and not refused.allowed:
            return self._refuse(refused, start_response)
        environ["garrison.verdict"] = decision.verdict
        status = [500]

        def capture(status_line: str, response_headers: list[tuple[str, str]],
                    exc_info: Any = None) -> Any:
            try:
                status[0] = int(status_line.split(" ", 1)[0])
            except ValueError:
                status[0] = 500
            return start_response(status_line, response_headers, exc_info)

        def done(size: int) -> None:
            eng.after(client, path, status[0], size, now)

        try:
            result = self.app(environ, capture)
        except Exception:
            done(0)
            raise
        return _Scored(result, done)

    def _refuse(self, decision: Decision, start_response: StartResponse) -> list[bytes]:
        body = decision.body()
        headers = [*decision.headers(), ("content-length", str(len(body)))]
        start_response(f"{decision.status} {_REASONS.get(decision.status, '')}", headers)
        return [body]

    def _sql(self, environ: dict[str, Any], headers: dict[str, str], client: Client,
             now: float) -> Decision | None:
        assert self._inspect is not None
        body = None
        content_type = environ.get("CONTENT_TYPE")
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if (wants_body(content_type) and environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH")
                and 0 <= length <= self.options.max_body):
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        found = scan(self._inspect, self.options.sql_paranoia, environ.get("PATH_INFO") or "/",
                     environ.get("QUERY_STRING") or "", headers.get("cookie"), body,
                     content_type)
        if found is None:
            return None
        return self.engine.refuse_sql(client, found[1], found[0], now)
