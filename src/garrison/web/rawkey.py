"""The cache key of an ASGI request's client: one ``bytes`` made from the socket peer's host and
the raw values of the headers the engine reads (:attr:`WebEngine.raw_names`).

A returning client is found by this key in :attr:`WebEngine.raw_clients`. It was a tuple of
the host and the header values; with 120,000 clients the cache is far bigger than the CPU's
caches, and finding a tuple key compared its items one by one, each a separate object in a
different cold cache line (and the header pick compared every header name with a generic call).
One bytes key is one object to compare (a length and a ``memcmp``), and the small C helper
``garrison._rawkey`` builds it in the same pass that picks the headers. Without the helper (no
C compiler at build time) :func:`key` builds the same bytes in Python.

Encoding: each part (the host, then each value in the order of ``names``) is ``0x00`` when it
is absent, else ``0x01``, its length in 4 bytes (little endian) and its bytes (the host as
UTF-8). The encoding is injective, so two requests share a key only when the engine would read
the same host and values from them: a host that is not a ``str`` counts as none, and so does a
header value that is not ``bytes``, as :meth:`WebEngine.identify_raw` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

Parts = tuple[bytes | str | None, ...]


def _declined(headers: Any, host: Any, names: tuple[bytes, ...]) -> Any:
    """The helper's signature without the helper: None, so callers take the Python path."""
    return None


Helper = Callable[[Any, Any, tuple[bytes, ...]], Any]
fast_key: Helper
"""The C helper's key (None for input not of the plain shape servers build), or without it a
function that is always None."""
_fast_pick: Helper

try:
    from garrison._rawkey import key as fast_key
    from garrison._rawkey import pick as _fast_pick

    AVAILABLE = True
except ImportError:  # built without a C compiler
    fast_key = _fast_pick = _declined
    AVAILABLE = False


def pick(headers: Iterable[Any] | None, host: Any, names: tuple[bytes, ...]) -> Parts:
    """``(host, *values)``: the host if it is a ``str`` and the value of each header in
    ``names`` (the last of repeated ones, None when absent or not ``bytes``), from any header
    list the ASGI spec allows (an iterable of two-item sequences)."""
    found: Parts | None = _fast_pick(headers, host, names)
    return found if found is not None else python_pick(headers, host, names)


def python_pick(headers: Iterable[Any] | None, host: Any, names: tuple[bytes, ...]) -> Parts:
    """:func:`pick` in Python, for any input."""
    wanted = {name: i for i, name in enumerate(names)}
    values: list[bytes | None] = [None] * len(names)
    for pair in list(headers) if headers else ():
        name, value = pair
        if not isinstance(name, bytes):
            continue  # not a header name (ASGI's are bytes): as a dict would miss it
        i = wanted.get(name)
        if i is not None:
            values[i] = bytes(value) if isinstance(value, bytes) else None
    return (host if isinstance(host, str) else None, *values)


def encode(parts: Sequence[bytes | str | None]) -> bytes:
    """The key of ``(host, *values)`` as :func:`pick` returns them (see the module's text)."""
    out = bytearray()
    for part in parts:
        if part is None:
            out.append(0)
            continue
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        out.append(1)
        out += len(data).to_bytes(4, "little")
        out += data
    return bytes(out)


def key(headers: Iterable[Any] | None, host: Any, names: tuple[bytes, ...]) -> bytes:
    """The cache key of a request's client: the C helper's when it takes the input, else the
    same bytes from :func:`pick` and :func:`encode`."""
    found = fast_key(headers, host, names)
    return found if found is not None else encode(python_pick(headers, host, names))


__all__ = ["AVAILABLE", "Parts", "encode", "fast_key", "key", "pick", "python_pick"]
