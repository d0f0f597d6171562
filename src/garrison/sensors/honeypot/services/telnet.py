"""Telnet decoy: Debian's telnetd option negotiation and login prompt; logins always fail.

The first bytes are exactly the options Linux telnetd asks for. Once the client answers we
print the login prompt, record each login/password pair (telnet option bytes stripped) and
answer "Login incorrect", hanging up after three attempts as ``login`` does.
"""

from __future__ import annotations

from typing import Final

from garrison.sensors.honeypot.session import Session

BANNER: Final = "Linux telnetd (Debian GNU/Linux 12)"
MAX_LOGINS: Final = 3
IAC: Final = 0xFF
_SB, _SE = 0xFA, 0xF0

#: DO TERMINAL-TYPE, DO TSPEED, DO XDISPLOC, DO NEW-ENVIRON: what netkit telnetd opens with.
NEGOTIATION: Final = b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27"


def strip_telnet(data: bytes) -> bytes:
    """``data`` without telnet commands (IAC sequences, sub-negotiations) and NULs."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == IAC and i + 1 < n:
            cmd = data[i + 1]
            if cmd == IAC:
                out.append(IAC)
                i += 2
            elif cmd == _SB:
                end = data.find(bytes([IAC, _SE]), i + 2)
                i = n if end < 0 else end + 2
            elif 0xFB <= cmd <= 0xFE:
                i += 3
            else:
                i += 2
        elif b == IAC:
            i += 1
        else:
            if b != 0:
                out.append(b)
            i += 1
    return bytes(out)


async def _line(s: Session) -> bytes:
    # Telnet clients end lines with CR LF, CR NUL or a bare LF.
    raw = await s.recv_until(b"\r\n", 512)
    if raw.endswith(b"\r"):
        for _ in range(2):  # CR NUL, CR LF, or what a client makes of "\n": CR NUL LF
            if s.peek(1) not in (b"\n", b"\0"):
                break
            await s.recv_exact(1)
    return strip_telnet(raw).strip(b"\r\n")


async def serve(s: Session) -> None:
    """Negotiate, wait for the client to answer, then run the ``login:`` dialogue."""
    await s.send(NEGOTIATION)
    # The client's option replies (stripped later) or already its first keystrokes (kept).
    await s.wait_data()
    # WILL SUPPRESS-GO-AHEAD; no WILL ECHO, so the client echoes the visitor's typing itself.
    await s.send(b"\xff\xfb\x03Debian GNU/Linux 12\r\n")
    for _ in range(MAX_LOGINS):
        user = b""
        for _ in range(4):  # skip the empty "lines" left by option replies
            await s.send(b"\r\nlogin: " if not user else b"")
            user = await _line(s)
            if user:
                break
        if not user:
            return
        await s.send(b"Password: ")
        password = await _line(s)
        s.credential(user, password)
        await s.send(b"\r\nLogin incorrect\r\n")
