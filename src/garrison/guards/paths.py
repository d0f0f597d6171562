"""Input sanitizer for values that become file paths or parts of database connection strings.

Path traversal: :func:`find_traversal` looks at a value in every form a server might end up
reading it -- as given, percent-decoded once, twice and three times (``%252e%252e%252f``), with
IIS ``%u002e`` escapes, Unicode-folded (fullwidth dots and slashes) -- and reports ``..`` segments,
absolute paths (``/etc``, ``C:\\``, ``\\\\server\\share``, ``~user``), NUL bytes, backslashes
(Windows separators) and overlong UTF-8 sequences (``%c0%ae``, ``%e0%80%af``), which no correct
encoder produces. :func:`safe_join` joins only parts that pass, then resolves symlinks and
refuses a result outside the base directory.

Connection strings: :func:`check_dsn_value` refuses a value that would add or change a key when
spliced into a libpq ``key=value`` string, an ODBC/ADO.NET ``key=value;`` string or a URL DSN
(``postgresql://user:pass@host/db?opt=``).
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DSNInjection",
    "PathFinding",
    "PathTraversal",
    "check_dsn_value",
    "find_traversal",
    "safe_join",
]

MAX_DECODE_ROUNDS: Final = 3
_IIS_U: Final = re.compile(r"%u([0-9a-fA-F]{4})")
_DRIVE: Final = re.compile(r"^[A-Za-z]:")
# Overlong UTF-8: C0/C1 leads, E0 followed by 80-9F, F0 followed by 80-8F.
_OVERLONG: Final = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f]|\xf0[\x80-\x8f]")


class PathTraversal(ValueError):
    """A path part would leave its base directory (or cannot be read unambiguously)."""


class DSNInjection(ValueError):
    """A value would change the structure of the connection string it is spliced into."""


@dataclass(frozen=True, slots=True)
class PathFinding:
    """Why a value is unsafe as a path part: ``reason`` and the ``form`` it was seen in
    (``raw``, ``decoded x1``..., ``unicode-folded``)."""

    reason: str
    form: str


def find_traversal(value: str | bytes, *, allow_subdirs: bool = True) -> PathFinding | None:
    """Why ``value`` is unsafe as a relative path part, or None. With ``allow_subdirs=False``
    any separator is refused too (a single file name)."""
    if isinstance(value, bytes):
        if _OVERLONG.search(value):
            return PathFinding("overlong UTF-8 sequence", "raw")
        value = value.decode("utf-8", "surrogateescape")
    forms = [("raw", value)]
    current = value
    for round_ in range(1, MAX_DECODE_ROUNDS + 1):
        if "%" not in current:
            break
        unescaped = _IIS_U.sub(lambda m: chr(int(m.group(1), 16)), current)
        raw = urllib.parse.unquote_to_bytes(unescaped)
        if _OVERLONG.search(raw):
            return PathFinding("overlong UTF-8 sequence", f"decoded x{round_}")
        decoded = raw.decode("utf-8", "surrogateescape")
        if decoded == current:
            break
        forms.append((f"decoded x{round_}", decoded))
        current = decoded
    for form, text in list(forms):
        folded = unicodedata.normalize("NFKC", text) if not text.isascii() else text
        if folded != text:
            forms.append((f"{form}, unicode-folded", folded))
    for form, text in forms:
        reason = _unsafe(text, allow_subdirs)
        if reason is not None:
            return PathFinding(reason, form)
    return None


def _unsafe(text: str, allow_subdirs: bool) -> str | None:
    if "\x00" in text:
        return "NUL byte"
    if "\\" in text:
        return "backslash (Windows separator)"
    if text.startswith("/"):
        return "absolute path"
    if text.startswith("~"):
        return "home-directory path"
    if _DRIVE.match(text):
        return "Windows drive path"
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        return "control character"
    segments = text.split("/")
    if any(len(s) >= 2 and s.strip(".") == "" for s in segments):
        return "'..' segment"
    if not allow_subdirs and len(segments) > 1:
        return "path separator in a file name"
    return None


def safe_join(base: str | os.PathLike[str], *parts: str) -> Path:
    """``base`` joined with ``parts``, resolved; raises :class:`PathTraversal` when a part is
    unsafe (see :func:`find_traversal`) or when the resolved path (symlinks followed) is not
    inside the resolved ``base``."""
    root = Path(os.path.realpath(base))
    for part in parts:
        if not isinstance(part, str):
            raise PathTraversal(f"path part must be a string, got {type(part).__name__}")
        finding = find_traversal(part)
        if finding is not None:
            raise PathTraversal(f"unsafe path part {part!r}: {finding.reason} ({finding.form})")
    joined = Path(os.path.realpath(os.path.join(root, *parts)))
    if joined != root and root not in joined.parents:
        raise PathTraversal(f"path {joined} escapes {root}")
    return joined


DSNStyle = Literal["libpq", "odbc", "url"]


def check_dsn_value(value: str, style: DSNStyle = "libpq", *, key: str = "value") -> str:
    """``value`` unchanged if it is safe to splice into a connection string of ``style``;
    raises :class:`DSNInjection` naming the character that would change the string's structure.

    - ``libpq``: ``host=... dbname=...``: whitespace, quotes, backslashes and ``=`` let a value
      start another ``key=value`` pair (``x password=... sslmode=disable``).
    - ``odbc``: ``Server=...;Database=...``: ``;``, ``{``/``}``, ``=`` and quotes do.
    - ``url``: ``scheme://user:pass@host:port/db?k=v``: ``@ : / ? # & = %`` and whitespace do.
    NUL and control characters are refused in every style.
    """
    if not isinstance(value, str):
        raise DSNInjection(f"{key} must be a string, got {type(value).__name__}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise DSNInjection(f"{key} {value!r} contains a control character")
    forbidden = {
        "libpq": " \t'\"\\=",
        "odbc": ";{}='\"",
        "url": "@:/?#&=% \t[]\\",
    }[style]
    for ch in value:
        if ch in forbidden or (style == "libpq" and ch.isspace()):
            raise DSNInjection(f"{key} {value!r} contains {ch!r}, which is structure in a "
                               f"{style} connection string")
    return value
