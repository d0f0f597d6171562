"""VNC decoy: RFB 3.8 with VNC authentication, which always fails.

Records the client's protocol version and that it answered the challenge; the response (a DES
encryption of our random challenge) is not kept.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

BANNER: Final = "VNC (RFB 3.8)"
_FAILED: Final = b"Authentication failed"


async def serve(s: Session) -> None:
    """ProtocolVersion, security handshake (type 2), challenge, failure."""
    await s.send(b"RFB 003.008\n")
    version = await s.recv_exact(12)
    s.note("client_version", version.rstrip(b"\n"))
    if not version.startswith(b"RFB 003."):
        raise SessionEnd("done")
    minor = version[8:11]
    if minor in (b"007", b"008"):
        await s.send(b"\x01\x02")  # one security type: VNC authentication
        choice = await s.recv_exact(1)
        if choice != b"\x02":
            raise SessionEnd("done")
    else:  # 3.3: the server decides
        await s.send(struct.pack("!I", 2))
    await s.send(os.urandom(16))
    await s.recv_exact(16)
    s.note("auth_attempted", True)
    if minor == b"008":
        await s.send(struct.pack("!II", 1, len(_FAILED)) + _FAILED)
    else:
        await s.send(struct.pack("!I", 1))
