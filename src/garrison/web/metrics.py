"""Prometheus metrics of the middleware, in the text exposition format (no dependency).

``garrison_web_requests_total``: requests seen; ``garrison_web_blocked_total{reason}``: refused
requests by reason; ``garrison_web_scoring_seconds``: time spent scoring after the response
(a summary: ``_sum`` and ``_count``, seconds); ``garrison_web_store_failures_total``: store
calls that failed open; ``garrison_web_internal_errors_total``: the middleware's own failures
(the request passed); ``garrison_web_tracked{kind}``: keys currently tracked;
``garrison_web_store_answers_total{by}``: the store's answers to full checks by where they came
from (with Redis: ``redis``, a round trip, or ``lease``, this worker's lease); against
``garrison_web_requests_total`` it says how often Redis is asked (requests answered from a
client's prepared decision ask the store nothing).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable


class WebMetrics:
    """Counters updated by the engine; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.blocked: dict[str, int] = defaultdict(int)
        self.scoring_seconds = 0.0
        self.scored = 0
        self.store_failures = 0
        self.full_checks = 0
        self.internal_errors = 0
        self.dropped = 0
        self.gauges: dict[str, Callable[[], int]] = {}
        self.answers: Callable[[], dict[str, int]] = dict  # the store's, by source

    def seen(self) -> None:
        self.requests += 1  # a lost increment under threads is acceptable for a counter

    def block(self, reason: str) -> None:
        with self._lock:
            self.blocked[reason] += 1

    def scoring(self, seconds: float, requests: int = 1) -> None:
        """``requests`` answered requests were scored in ``seconds``."""
        self.scoring_seconds += seconds  # no lock: a lost update in a summary is harmless
        self.scored += requests

    def render(self) -> str:
        """The metrics as Prometheus text exposition format 0.0.4."""
        lines = [
            "# HELP garrison_web_requests_total Requests seen by the Garrison middleware.",
            "# TYPE garrison_web_requests_total counter",
            f"garrison_web_requests_total {self.requests}",
            "# HELP garrison_web_blocked_total Requests refused, by reason.",
            "# TYPE garrison_web_blocked_total counter",
        ]
        with self._lock:
            blocked = dict(self.blocked)
        total, count = self.scoring_seconds, self.scored
        for reason in sorted(blocked):
            lines.append(f'garrison_web_blocked_total{{reason="{reason}"}} {blocked[reason]}')
        lines += [
            "# HELP garrison_web_scoring_seconds Time spent scoring after responses.",
            "# TYPE garrison_web_scoring_seconds summary",
            f"garrison_web_scoring_seconds_sum {total:.9f}",
            f"garrison_web_scoring_seconds_count {count}",
            "# HELP garrison_web_full_checks_total Requests checked in full (not answered from"
            " the client's prepared decision): first visits, refreshes, limits, bans.",
            "# TYPE garrison_web_full_checks_total counter",
            f"garrison_web_full_checks_total {self.full_checks}",
            "# HELP garrison_web_store_failures_total Store calls that failed open.",
            "# TYPE garrison_web_store_failures_total counter",
            f"garrison_web_store_failures_total {self.store_failures}",
            "# HELP garrison_web_internal_errors_total Middleware failures (request passed).",
            "# TYPE garrison_web_internal_errors_total counter",
            f"garrison_web_internal_errors_total {self.internal_errors}",
            "# HELP garrison_web_tracked Keys currently tracked, by kind.",
            "# TYPE garrison_web_tracked gauge",
        ]
        for kind in sorted(self.gauges):
            lines.append(f'garrison_web_tracked{{kind="{kind}"}} {self.gauges[kind]()}')
        answers = self.answers()
        if answers:
            lines += ["# HELP garrison_web_store_answers_total Store answers, by where they "
                      "came from.", "# TYPE garrison_web_store_answers_total counter"]
            for by in sorted(answers):
                lines.append(f'garrison_web_store_answers_total{{by="{by}"}} {answers[by]}')
        return "\n".join(lines) + "\n"
