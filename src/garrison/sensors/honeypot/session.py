"""One visitor's session with a decoy: bounded reads, bounded capture, nothing interpreted.

A decoy handler talks to the visitor only through :class:`Session`. Every read is bounded in
size (per read, per line and in total) and in time (``idle_timeout`` seconds of silence); every
byte read lands in a bounded sample. When a bound is hit the session ends with
:class:`SessionEnd`, which the listener treats as a normal close.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Final

from garrison.sensors.honeypot.text import escape, field

#: Caps on the structured capture of one session (entries, not bytes).
MAX_COMMANDS: Final = 32
MAX_CREDENTIALS: Final = 8
MAX_NOTES: Final = 32
_CHUNK: Final = 2048


class SessionEnd(Exception):
    """The session is over: the visitor left, went quiet, or hit a bound. ``reason`` says
    which (``"eof"``, ``"idle"``, ``"input-limit"``, ``"line-limit"``, ``"done"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Session:
    """The visitor's side of one TCP connection to a decoy, plus what we captured from it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        service: str,
        max_capture: int,
        max_input: int,
        idle_timeout: float,
        peer_ip: str = "",
        local_ip: str = "",
        local_port: int = 0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.service = service
        self.peer_ip = peer_ip
        self.local_ip = local_ip
        self.local_port = local_port
        self._max_capture = max_capture
        self._max_input = max_input
        self.idle_timeout = idle_timeout
        self._buf = bytearray()
        self.sample = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        self.banner = ""
        self.commands: list[str] = []
        self.credentials: list[dict[str, str]] = []
        self.notes: dict[str, Any] = {}
        self.dropped_captures = 0

    # -- writing ----------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait (at most ``idle_timeout`` s) for the kernel to take it."""
        self._writer.write(data)
        self.bytes_out += len(data)
        try:
            await asyncio.wait_for(self._writer.drain(), self.idle_timeout)
        except TimeoutError:
            raise SessionEnd("idle") from None
        except ConnectionError:
            raise SessionEnd("eof") from None

    # -- reading ----------------------------------------------------------------------------
    async def _fill(self) -> None:
        if self.bytes_in >= self._max_input:
            raise SessionEnd("input-limit")
        try:
            chunk = await asyncio.wait_for(
                self._reader.read(min(_CHUNK, self._max_input - self.bytes_in)), self.idle_timeout
            )
        except TimeoutError:
            raise SessionEnd("idle") from None
        except ConnectionError:
            raise SessionEnd("eof") from None
        if not chunk:
            raise SessionEnd("eof")
        self.bytes_in += len(chunk)
        room = self._max_capture - len(self.sample)
        if room > 0:
            self.sample += chunk[:room]
        self._buf += chunk

    async def recv_until(self, delimiters: bytes = b"\n", limit: int = 1024) -> bytes:
        """Bytes up to and including the first of ``delimiters`` (any one byte of it).
        A line longer than ``limit`` bytes ends the session."""
        start = 0
        while True:
            for i in range(start, len(self._buf)):
                if self._buf[i] in delimiters:
                    line = bytes(self._buf[: i + 1])
                    del self._buf[: i + 1]
                    return line
            if len(self._buf) > limit:
                raise SessionEnd("line-limit")
            start = len(self._buf)
            await self._fill()

    async def recv_line(self, limit: int = 1024) -> bytes:
        """One line without its ``\\r\\n`` / ``\\n`` ending (see :meth:`recv_until`)."""
        return (await self.recv_until(b"\n", limit)).rstrip(b"\r\n")

    async def recv_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes (``n`` must be within the input budget)."""
        if n > self._max_input:
            raise SessionEnd("input-limit")
        while len(self._buf) < n:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def recv_some(self, n: int = _CHUNK) -> bytes:
        """Whatever is buffered or arrives next, at most ``n`` bytes."""
        if not self._buf:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def wait_data(self) -> None:
        """Wait until some input is buffered, consuming none of it."""
        if not self._buf:
            await self._fill()

    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return len(self._buf)

    def peek(self, n: int) -> bytes:
        """Up to ``n`` already-received bytes, left unconsumed (never waits)."""
        return bytes(self._buf[:n])

    def take_socket(self) -> socket.socket:
        """The connection's socket, for a protocol library that must own the connection (SSH).
        Our own stream stops reading; the caller works on a duplicate of the descriptor."""
        sock = self._writer.get_extra_info("socket")
        if sock is None:
            raise SessionEnd("eof")
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]
        return sock  # type: ignore[no-any-return]

    # -- capture ----------------------------------------------------------------------------
    def command(self, text: bytes | str) -> None:
        """Record one command the visitor sent (escaped, cut; at most ``MAX_COMMANDS``)."""
        if len(self.commands) < MAX_COMMANDS:
            self.commands.append(field(text, 200))
        else:
            self.dropped_captures += 1

    def credential(self, username: bytes | str, password: bytes | str | None) -> None:
        """Record one login attempt (at most ``MAX_CREDENTIALS``)."""
        if len(self.credentials) < MAX_CREDENTIALS:
            entry = {"username": field(username, 64)}
            if password is not None:
                entry["password"] = field(password, 64)
            self.credentials.append(entry)
        else:
            self.dropped_captures += 1

    def note(self, key: str, value: Any) -> None:
        """Record one protocol fact (client version, request line, ...): strings and bytes
        are escaped and cut to 256 bytes."""
        if isinstance(value, (bytes, str)):
            value = field(value, 256)
        if key in self.notes or len(self.notes) < MAX_NOTES:
            self.notes[key] = value
        else:
            self.dropped_captures += 1

    def sample_text(self) -> str:
        """The captured input as escaped text (at most ``max_capture`` input bytes; ``...``
        marks that more arrived)."""
        cut = "..." if self.bytes_in > len(self.sample) else ""
        return escape(bytes(self.sample), self._max_capture) + cut
