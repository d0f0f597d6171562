"""RDP decoy: the X.224 connection confirm of a Windows Remote Desktop server, then hang-up.

Records the ``mstshash`` cookie (the user name most RDP clients and brute-forcers send in
their first packet) and the security protocols the client asked for. We choose CredSSP (NLA)
as Windows does and close when the client starts TLS: no credentials are ever exchanged.
"""

from __future__ import annotations

import struct
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

BANNER: Final = "Microsoft Terminal Services"
#: Largest first packet we read (bytes); a connection request is tens of bytes.
MAX_PACKET: Final = 1024
PROTOCOL_SSL: Final = 1
PROTOCOL_HYBRID: Final = 2
_COOKIE: Final = b"Cookie: mstshash="


def parse_request(tpdu: bytes) -> tuple[bytes | None, int | None]:
    """(cookie user, requested protocols) from an X.224 Connection Request TPDU (after the
    4-byte TPKT header); raises ValueError when it is not one."""
    if len(tpdu) < 7 or tpdu[1] & 0xF0 != 0xE0:
        raise ValueError("not an X.224 connection request")
    rest = tpdu[7:]
    user = None
    if rest.startswith(_COOKIE):
        end = rest.find(b"\r\n")
        if end < 0:
            raise ValueError("unterminated cookie")
        user = rest[len(_COOKIE) : end]
        rest = rest[end + 2 :]
    protocols = None
    if len(rest) >= 8 and rest[0] == 0x01:  # RDP_NEG_REQ
        protocols = struct.unpack_from("<I", rest, 4)[0]
    return user, protocols


def connection_confirm(protocols: int | None) -> bytes:
    """TPKT + X.224 Connection Confirm carrying an RDP_NEG_RSP (or none for legacy clients)."""
    if protocols is None:
        tpdu = b"\x06\xd0\x00\x00\x12\x34\x00"
    else:
        chosen = (PROTOCOL_HYBRID if protocols & PROTOCOL_HYBRID
                  else PROTOCOL_SSL if protocols & PROTOCOL_SSL else 0)
        tpdu = b"\x0e\xd0\x00\x00\x12\x34\x00" + struct.pack("<BBHI", 0x02, 0x1F, 8, chosen)
    return struct.pack("!BBH", 3, 0, len(tpdu) + 4) + tpdu


async def serve(s: Session) -> None:
    """Connection request -> confirm; read what follows (the TLS hello) and close."""
    header = await s.recv_exact(4)
    length = struct.unpack_from("!H", header, 2)[0]
    if header[0] != 3 or not 11 <= length <= MAX_PACKET:
        raise SessionEnd("done")
    try:
        user, protocols = parse_request(await s.recv_exact(length - 4))
    except ValueError:
        s.note("malformed", True)
        raise SessionEnd("done") from None
    if user is not None:
        s.credential(user, None)
    if protocols is not None:
        s.note("requested_protocols", protocols)
    await s.send(connection_confirm(protocols))
    await s.recv_some(512)  # a TLS ClientHello, kept in the sample only
