"""PostgreSQL decoy: the startup dialogue of PostgreSQL 15, password auth that always fails.

Answers SSL and GSS encryption requests with "N" (not supported), as a server without TLS does;
answers unknown protocol versions with PostgreSQL 15's own error (``postmaster.c`` line 2194,
which is how ``nmap -sV`` recognises it). A startup message gets a cleartext-password request;
the password is recorded and refused with SQLSTATE 28P01.
"""

from __future__ import annotations

import struct
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

BANNER: Final = "PostgreSQL 15"
SSL_REQUEST: Final = 80877103
GSS_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
PROTOCOL_3: Final = 196608
#: Largest startup or password packet we read (bytes); PostgreSQL's own limit is 10000.
MAX_PACKET: Final = 10000


def error(fields: list[tuple[bytes, bytes]]) -> bytes:
    """An ErrorResponse message from (field code, value) pairs."""
    body = b"".join(code + value + b"\x00" for code, value in fields) + b"\x00"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def unsupported_protocol(code: int) -> bytes:
    msg = b"unsupported frontend protocol %d.%d: server supports 3.0 to 3.0" % (
        code >> 16, code & 0xFFFF,
    )
    return error([
        (b"S", b"FATAL"), (b"V", b"FATAL"), (b"C", b"0A000"), (b"M", msg),
        (b"F", b"postmaster.c"), (b"L", b"2194"), (b"R", b"ProcessStartupPacket"),
    ])


def auth_failed(user: bytes) -> bytes:
    safe = bytes(b for b in user[:63] if 0x20 <= b < 0x7F and b != 0x22)
    return error([
        (b"S", b"FATAL"), (b"V", b"FATAL"), (b"C", b"28P01"),
        (b"M", b'password authentication failed for user "' + safe + b'"'),
        (b"F", b"auth.c"), (b"L", b"323"), (b"R", b"auth_failed"),
    ])


def startup_params(body: bytes) -> dict[bytes, bytes]:
    """Key/value pairs of a protocol-3 startup message body (after the version)."""
    parts = body.split(b"\x00")
    return {parts[i]: parts[i + 1] for i in range(0, len(parts) - 1, 2) if parts[i]}


async def serve(s: Session) -> None:
    """Startup packets (at most two encryption requests), then password auth."""
    for _ in range(3):
        length = struct.unpack("!I", await s.recv_exact(4))[0]
        if not 8 <= length <= MAX_PACKET:
            raise SessionEnd("done")  # PostgreSQL hangs up silently on a bad length
        body = await s.recv_exact(length - 4)
        code = struct.unpack_from("!I", body)[0]
        if code in (SSL_REQUEST, GSS_REQUEST):
            s.note("encryption_requested", True)
            await s.send(b"N")
            continue
        if code == CANCEL_REQUEST:
            raise SessionEnd("done")
        if code != PROTOCOL_3:
            s.note("protocol", f"{code >> 16}.{code & 0xFFFF}")
            await s.send(unsupported_protocol(code))
            raise SessionEnd("done")
        params = startup_params(body[4:])
        user = params.get(b"user", b"")
        for key in (b"database", b"application_name"):
            if key in params:
                s.note(key.decode(), params[key])
        await s.send(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        tag = await s.recv_exact(1)
        length = struct.unpack("!I", await s.recv_exact(4))[0]
        if tag != b"p" or not 4 < length <= 1024:
            s.credential(user, None)
            raise SessionEnd("done")
        password = (await s.recv_exact(length - 4)).rstrip(b"\x00")
        s.credential(user, password)
        await s.send(auth_failed(user))
        return
