"""Django middleware: add ``"garrison.web.django.GarrisonMiddleware"`` to ``MIDDLEWARE``.

Configured from ``settings.GARRISON`` (a dict with the same keyword names as the ASGI and WSGI
middleware, e.g. ``GARRISON = {"store": "memory://", "threshold": 0.5}``). Scoring runs when
Django closes the response, after the body has been sent. The verdict is at
``request.garrison``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from garrison.store.base import CheckRequest
from garrison.web.engine import Decision, WebEngine
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
    """Bot scoring, session-hijack detection and adaptive rate limiting for Django."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        settings = importlib.import_module("django.conf").settings
        self.get_response = get_response
        options = getattr(settings, "GARRISON", None) or {}
        if not isinstance(options, dict):
            raise ValueError(f"settings.GARRISON must be a dict, got {type(options).__name__}")
        self.options = WebOptions(**options)
        self.engine = WebEngine(self.options)
        self.engine.threaded = True  # WSGI servers answer requests on several threads
        self._inspect = load_inspector() if self.options.sql_firewall else None

    def __call__(self, request: Any) -> Any:
        eng = self.engine
        path = request.path_info or "/"
        if self.options.metrics_path is not None and path == self.options.metrics_path:
            http = importlib.import_module("django.http")
            return http.HttpResponse(eng.metrics.render(),
                                     content_type="text/plain; version=0.0.4")
        if eng.is_exempt(path):
            return self.get_response(request)
        meta = request.META
        try:
            client = eng.identify(meta.get("REMOTE_ADDR"),
                                  environ_headers(meta, eng.header_names))
            now = eng.clock()
            pre = eng.precheck(client, now)
            decision = eng.decide(client, eng.store.check(pre), now) \
                if isinstance(pre, CheckRequest) else pre
        except Exception as exc:  # a protection layer's own bug must not take the app down
            eng.internal_error(exc)
            return self.get_response(request)
        if not decision.allowed:
            return _json_response(decision)
        if self._inspect is not None and eng.sql_applies(path):
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
                found = scan(self._inspect, self.options.sql_paranoia, path,
                             meta.get("QUERY_STRING") or "", meta.get("HTTP_COOKIE"), body,
                             content_type)
            except Exception as exc:  # the detector failing is no reason to refuse
                eng.internal_error(exc)
                found = None
            if found is not None:
                refused = eng.refuse_sql(client, found[1], found[0], now)
                if not refused.allowed:
                    return _json_response(refused)
        request.garrison = decision.verdict
        response = self.get_response(request)
        status = int(getattr(response, "status_code", 500))

        def score() -> None:
            size = 0 if getattr(response, "streaming", False) else len(response.content)
            try:
                eng.after(client, path, status, size, now)
            except Exception:  # scoring must never break a response that already went out
                log.exception("scoring failed")

        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            closers.append(score)  # Django calls these from response.close(), after sending
        else:
            score()
        return response
