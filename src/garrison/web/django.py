"""Django middleware: add ``"garrison.web.django.GarrisonMiddleware"`` to ``MIDDLEWARE``.

Configured from ``settings.GARRISON`` (a dict with the same keyword names as the ASGI and WSGI
middleware, e.g. ``GARRISON = {"store": "memory://", "threshold": 0.5}``). Scoring runs when
Django closes the response, after the body has been sent. The verdict is at
``request.garrison``. Sync and async capable: under an async handler chain (ASGI) it runs as
a coroutine, so Django adds no thread hop for it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from garrison.store.base import CheckRequest
from garrison.web.engine import Client, Decision, WebEngine
from garrison.web.options import WebOptions
from garrison.web.sqlfw import load_inspector, scan, wants_body
from garrison.web.wsgi import environ_headers

log = logging.getLogger("garrison.web")


def _json_response(decision: Decision) -> Any:
    http = importlib.import_module("django.http")
    response = http.HttpResponse(decision.body(), status=decision.status,
                                 content_type="application/json")
    for k, v in decision.headers():
        if k != "content-type":
            response[k] = v
    return response


class GarrisonMiddleware:
    """Bot scoring, session-hijack detection and adaptive rate limiting for Django.

    Sync and async: under ASGI with an async handler chain it is a coroutine (no thread hop
    per request, and the store is asked without blocking); under WSGI a plain call.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        settings = importlib.import_module("django.conf").settings
        self.get_response = get_response
        options = getattr(settings, "GARRISON", None) or {}
        if not isinstance(options, dict):
            raise ValueError(f"settings.GARRISON must be a dict, got {type(options).__name__}")
        self.options = WebOptions(**options)
        self.engine = WebEngine(self.options)
        self.engine.threaded = True  # WSGI servers (and Django's sync views) use threads
        self._inspect = load_inspector() if self.options.sql_firewall else None
        sync = importlib.import_module("asgiref.sync")
        self.is_async = bool(sync.iscoroutinefunction(get_response))
        if self.is_async:
            sync.markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        step = self._start(request)
        if not isinstance(step, _Pending):
            return step if step is not None else self.get_response(request)
        try:
            pre = step.pre
            decision = (self.engine.decide(step.client, self.engine.store.check(pre), step.now)
                        if isinstance(pre, CheckRequest) else pre)
        except Exception as exc:  # a protection layer's own bug must not take the app down
            self.engine.internal_error(exc)
            return self.get_response(request)
        refused = self._admit(request, step, decision)
        if refused is not None:
            return refused
        return self._finish(self.get_response(request), step)

    async def _acall(self, request: Any) -> Any:
        step = self._start(request)
        if not isinstance(step, _Pending):
            return step if step is not None else await self.get_response(request)
        try:
            pre = step.pre
            decision = (self.engine.decide(step.client, await self.engine.store.acheck(pre),
                                           step.now)
                        if isinstance(pre, CheckRequest) else pre)
        except Exception as exc:  # a protection layer's own bug must not take the app down
            self.engine.internal_error(exc)
            return await self.get_response(request)
        refused = self._admit(request, step, decision)
        if refused is not None:
            return refused
        return self._finish(await self.get_response(request), step)

    def _start(self, request: Any) -> Any:
        """The check up to the store: a response to send at once (metrics), None to pass the
        request through unguarded (an exempt path, an internal error), or a :class:`_Pending`
        whose question the caller puts to the store (sync or async)."""
        eng = self.engine
        path = request.path_info or "/"
        if self.options.metrics_path is not None and path == self.options.metrics_path:
            http = importlib.import_module("django.http")
            return http.HttpResponse(eng.metrics.render(),
                                     content_type="text/plain; version=0.0.4")
        if eng.is_exempt(path):
            return None
        meta = request.META
        try:
            client = eng.identify(meta.get("REMOTE_ADDR"),
                                  environ_headers(meta, eng.header_names))
            now = eng.clock()
            return _Pending(client, now, path, eng.precheck(client, now))
        except Exception as exc:  # a protection layer's own bug must not take the app down
            eng.internal_error(exc)
            return None

    def _admit(self, request: Any, step: _Pending, decision: Decision) -> Any:
        """The refusal to send (the limiter's or the SQL firewall's), or None: the request
        goes on to the view, with its verdict at ``request.garrison``."""
        eng = self.engine
        if not decision.allowed:
            return _json_response(decision)
        if self._inspect is not None and eng.sql_applies(step.path):
            meta = request.META
            body = None
            content_type = meta.get("CONTENT_TYPE")
            try:
                length = int(meta.get("CONTENT_LENGTH") or -1)
            except ValueError:
                length = -1
            if (wants_body(content_type) and request.method in ("POST", "PUT", "PATCH")
                    and 0 <= length <= self.options.max_body):
                body = request.body
            try:
                found = scan(self._inspect, self.options.sql_paranoia, step.path,
                             meta.get("QUERY_STRING") or "", meta.get("HTTP_COOKIE"), body,
                             content_type)
            except Exception as exc:  # the detector failing is no reason to refuse
                eng.internal_error(exc)
                found = None
            if found is not None:
                refused = eng.refuse_sql(step.client, found[1], found[0], step.now)
                if not refused.allowed:
                    return _json_response(refused)
        request.garrison = decision.verdict
        return None

    def _finish(self, response: Any, step: _Pending) -> Any:
        """Queue the answered request for scoring once Django has sent the response."""
        eng = self.engine
        status = int(getattr(response, "status_code", 500))

        def score() -> None:
            size = 0 if getattr(response, "streaming", False) else len(response.content)
            try:
                eng.after(step.client, step.path, status, size, step.now)
            except Exception:  # scoring must never break a response that already went out
                log.exception("scoring failed")

        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            closers.append(score)  # Django calls these from response.close(), after sending
        else:
            score()
        return response


class _Pending(NamedTuple):
    """A request checked up to the store's answer."""

    client: Client
    now: float
    path: str
    pre: Decision | CheckRequest
