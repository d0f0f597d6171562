"""Web middleware: behavioural bot scoring, session-hijack detection and adaptive rate limiting.

``from garrison.web import GarrisonMiddleware`` (ASGI), ``GarrisonWSGIMiddleware`` (WSGI) and
``garrison.web.django.GarrisonMiddleware`` (Django, from ``settings.GARRISON``): one engine
(:mod:`garrison.web.engine`), the same keyword options (:class:`WebOptions`) in all three.
"""

from __future__ import annotations

from garrison.web.asgi import GarrisonMiddleware
from garrison.web.engine import Client, Decision, WebEngine
from garrison.web.options import WebOptions
from garrison.web.reputation import CorrelateReputation
from garrison.web.verdict import ReputationSource, Verdict
from garrison.web.wsgi import GarrisonWSGIMiddleware

__all__ = [
    "Client",
    "CorrelateReputation",
    "Decision",
    "GarrisonMiddleware",
    "GarrisonWSGIMiddleware",
    "ReputationSource",
    "Verdict",
    "WebEngine",
    "WebOptions",
]
