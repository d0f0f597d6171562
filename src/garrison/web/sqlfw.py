"""The SQL firewall layer: every user-supplied value of a request through ``guards.sqli``.

Inspected: query-string values, path segments, cookie values, and for form or JSON bodies of at
most ``max_body`` bytes, their values (JSON: every string leaf, up to :data:`MAX_VALUES`).
The detector is imported lazily, so the middleware works without it unless the layer is on.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final

MAX_VALUES: Final = 512
"""Values inspected per request (the rest are ignored, bounding the cost)."""

FORM: Final = "application/x-www-form-urlencoded"


def load_inspector() -> Callable[..., Any]:
    """``garrison.guards.sqli.inspect``; ImportError with a clear message when missing."""
    try:
        from garrison.guards.sqli import inspect
    except ImportError as exc:
        raise ImportError(
            "sql_firewall=True needs garrison.guards.sqli, which is not installed"
        ) from exc
    return inspect


def wants_body(content_type: str | None) -> bool:
    """True for bodies the layer inspects (form-encoded or JSON)."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    return ct == FORM or ct == "application/json" or ct.endswith("+json")


def _json_strings(doc: Any) -> Iterator[str]:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def values(path: str, query: str, cookie: str | None, body: bytes | None,
           content_type: str | None) -> Iterator[tuple[str, str]]:
    """``(where, value)`` pairs to inspect, at most :data:`MAX_VALUES`."""
    n = 0

    def take(where: str, items: Iterator[str]) -> Iterator[tuple[str, str]]:
        nonlocal n
        for v in items:
            if n >= MAX_VALUES:
                return
            if v:
                n += 1
                yield where, v

    yield from take("path", (urllib.parse.unquote(s) for s in path.split("/")))
    yield from take("query", (v for _, v in urllib.parse.parse_qsl(query, keep_blank_values=False)))
    if cookie:
        yield from take("cookie", (p.partition("=")[2].strip() for p in cookie.split(";")))
    if body:
        ct = (content_type or "").split(";", 1)[0].strip().lower()
        text = body.decode("utf-8", "replace")
        if ct == FORM:
            yield from take("body", (v for _, v in urllib.parse.parse_qsl(text)))
        else:
            try:
                doc = json.loads(text)
            except ValueError:
                return
            yield from take("body", _json_strings(doc))


def scan(inspect: Callable[..., Any], paranoia: int, path: str, query: str,
         cookie: str | None, body: bytes | None,
         content_type: str | None) -> tuple[str, Any] | None:
    """The first ``(where, finding)`` in the request, or None."""
    for where, value in values(path, query, cookie, body, content_type):
        finding = inspect(value, paranoia)
        if finding is not None:
            return where, finding
    return None
