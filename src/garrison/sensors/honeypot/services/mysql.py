"""MySQL decoy: a real protocol-10 handshake (MySQL 8.0), then "Access denied" for everyone.

The greeting is the packet a MySQL 8.0 server configured for ``mysql_native_password`` sends
(no TLS, no compression, no LOCAL INFILE offered). We parse the client's handshake response
for the user name, schema and client attributes, and answer with error 1045 as MySQL does.
The password hash the client sends is never kept: it is useless without the random scramble.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

VERSION: Final = b"8.0.36"
BANNER: Final = "MySQL 8.0.36"
#: Capabilities offered: 4.1 protocol, secure connection, plugin auth, connect attrs, ...;
#: deliberately without CLIENT_SSL (0x800), CLIENT_COMPRESS (0x20), CLIENT_LOCAL_FILES (0x80).
CAPABILITIES: Final = 0x01FF_F75F
_CONNECT_WITH_DB: Final = 0x8
_PLUGIN_AUTH_LENENC: Final = 1 << 21
_SECURE_CONNECTION: Final = 0x8000
#: Largest client packet we read (bytes); a handshake response is a few hundred.
MAX_PACKET: Final = 8192


def greeting(connection_id: int, scramble: bytes) -> bytes:
    """Protocol::HandshakeV10 as one MySQL packet (sequence 0); ``scramble`` is 20 bytes."""
    body = (
        b"\x0a" + VERSION + b"\x00"
        + struct.pack("<I", connection_id)
        + scramble[:8] + b"\x00"
        + struct.pack("<H", CAPABILITIES & 0xFFFF)
        + b"\xff"  # utf8mb4_0900_ai_ci
        + struct.pack("<H", 0x0002)  # SERVER_STATUS_AUTOCOMMIT
        + struct.pack("<H", CAPABILITIES >> 16)
        + bytes([21]) + bytes(10)
        + scramble[8:20] + b"\x00"
        + b"mysql_native_password\x00"
    )
    return _packet(body, 0)


def _packet(body: bytes, seq: int) -> bytes:
    return struct.pack("<I", len(body))[:3] + bytes([seq & 0xFF]) + body


def access_denied(user: bytes, host: str, with_password: bool, seq: int) -> bytes:
    """ERR packet 1045 (SQLSTATE 28000) exactly as MySQL words it."""
    using = b"YES" if with_password else b"NO"
    safe_user = bytes(b for b in user[:32] if 0x20 <= b < 0x7F and b != 0x27)
    msg = (
        b"Access denied for user '" + safe_user + b"'@'" + host.encode() + b"' (using password: "
        + using + b")"
    )
    return _packet(b"\xff" + struct.pack("<H", 1045) + b"#28000" + msg, seq)


def parse_response(body: bytes) -> tuple[bytes, bool, bytes]:
    """(user, sent a password, schema) from a HandshakeResponse41; raises ValueError."""
    if len(body) < 32:
        raise ValueError("short handshake response")
    (caps,) = struct.unpack_from("<I", body, 0)
    pos = 32
    end = body.index(b"\x00", pos)
    user = body[pos:end]
    pos = end + 1
    if caps & _PLUGIN_AUTH_LENENC:
        n = body[pos]
        pos += 1
        if n >= 0xFB:
            raise ValueError("unexpected auth length encoding")
    elif caps & _SECURE_CONNECTION:
        n = body[pos]
        pos += 1
    else:
        n = body.index(b"\x00", pos) - pos
    auth = body[pos : pos + n]
    pos += n
    schema = b""
    if caps & _CONNECT_WITH_DB and pos < len(body):
        end = body.find(b"\x00", pos)
        schema = body[pos : end if end >= 0 else len(body)]
    return user, bool(auth), schema


async def serve(s: Session) -> None:
    """Greeting, read the handshake response, deny access."""
    await s.send(greeting(int.from_bytes(os.urandom(2), "big") + 8, os.urandom(20)))
    header = await s.recv_exact(4)
    length = int.from_bytes(header[:3], "little")
    if not 4 <= length <= MAX_PACKET:
        raise SessionEnd("done")
    body = await s.recv_exact(length)
    if length == 32:  # an SSLRequest although we offered no TLS
        s.note("tls_requested", True)
        raise SessionEnd("done")
    try:
        user, with_password, schema = parse_response(body)
    except (ValueError, IndexError):
        s.note("malformed", True)
        raise SessionEnd("done") from None
    s.credential(user, None)
    s.note("password_sent", with_password)
    if schema:
        s.note("schema", schema)
    await s.send(access_denied(user, s.peer_ip, with_password, header[3] + 1))
