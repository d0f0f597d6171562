"""HTTP/1.x request reading and response writing shared by the web decoys (bounded)."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd
from garrison.sensors.honeypot.text import field

MAX_HEADERS: Final = 64
MAX_LINE: Final = 4096
#: Request body bytes read at most (a login form); the rest is never read.
MAX_BODY: Final = 2048


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request: ``target`` is the raw request target, ``version`` e.g.
    ``b"HTTP/1.1"``; header names lower-cased."""

    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]


class BadRequest(Exception):
    """The request line or headers are not HTTP."""


async def read_request(s: Session) -> Request:
    """Read one request (line, headers, a bounded body) and record it in the session."""
    line = await s.recv_line(MAX_LINE)
    while not line:  # tolerate blank lines before the request (RFC 9112 2.2)
        line = await s.recv_line(MAX_LINE)
    s.note("request", line)
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise BadRequest(line)
    method, target, version = parts
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(MAX_HEADERS + 1):
        h = await s.recv_line(MAX_LINE)
        if not h:
            break
        name, sep, value = h.partition(b":")
        if not sep:
            raise BadRequest(h)
        if len(headers) < MAX_HEADERS:
            headers.append((name.strip().lower(), value.strip()))
    else:
        raise SessionEnd("line-limit")
    s.note("headers", {field(k, 64): _short(v) for k, v in headers})
    body = b""
    length = dict(headers).get(b"content-length")
    if length is not None and length.isdigit():
        body = await s.recv_exact(min(int(length), MAX_BODY))
        if body:
            s.note("body", body)
    return Request(method.upper(), target, version, tuple(headers), body)


def _short(value: bytes) -> str:
    return field(value, 200)


def response(
    status: bytes, headers: list[tuple[bytes, bytes]], body: bytes, *, head: bool = False,
    version: bytes = b"HTTP/1.1", date: bool = True, length_name: bytes = b"Content-Length",
) -> bytes:
    """A complete response with Content-Length (and Date unless ``date`` is false)."""
    lines = [version + b" " + status]
    if date:
        lines.append(b"Date: " + formatdate(usegmt=True).encode())
    lines += [k + b": " + v for k, v in headers]
    lines.append(length_name + b": " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)
