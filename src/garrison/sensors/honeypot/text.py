"""Turning what a visitor sent into bounded, printable text for the event.

Nothing a visitor sends is interpreted: bytes become text with every non-printable byte
escaped (``\\xNN``), then truncated. The result is safe to log, print or put in JSON.
"""

from __future__ import annotations

from typing import Final

_PRINTABLE: Final = frozenset(range(0x20, 0x7F))
_ESCAPES: Final = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x5C: "\\\\"}


def escape(data: bytes, limit: int = 256) -> str:
    """Printable ASCII for ``data``: other bytes as ``\\xNN``, backslash doubled. At most
    ``limit`` input bytes are rendered (an ellipsis marks a cut)."""
    out: list[str] = []
    for b in data[:limit]:
        if b in _ESCAPES:
            out.append(_ESCAPES[b])
        elif b in _PRINTABLE:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    text = "".join(out)
    return text + "..." if len(data) > limit else text


def field(data: bytes | str, limit: int = 128) -> str:
    """A short captured field (a user name, a command): escaped and cut to ``limit`` bytes."""
    raw = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else data
    return escape(raw, limit)
