"""SMTP decoy: Postfix on Debian; accepts the envelope's first steps, relays nothing.

Records every command. ``RCPT TO`` is always refused (relay access denied), so ``DATA`` never
starts and no message body is ever taken.
"""

from __future__ import annotations

from typing import Final

from garrison.sensors.honeypot.session import Session

HOSTNAME: Final = b"mail.internal"
BANNER: Final = "Postfix smtpd (Debian/GNU)"
MAX_COMMANDS: Final = 40

_EHLO: Final = (
    b"250-" + HOSTNAME + b"\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)


async def serve(s: Session) -> None:
    """Greeting, then HELO/EHLO/MAIL/RCPT/RSET/NOOP/VRFY/QUIT as Postfix answers them."""
    await s.send(b"220 " + HOSTNAME + b" ESMTP Postfix (Debian/GNU)\r\n")
    helo = False
    mail = False
    for _ in range(MAX_COMMANDS):
        line = await s.recv_line(1024)
        s.command(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            helo = True
            await s.send(_EHLO)
        elif verb == b"HELO":
            helo = True
            await s.send(b"250 " + HOSTNAME + b"\r\n")
        elif verb == b"MAIL":
            if not helo:
                await s.send(b"503 5.5.1 Error: send HELO/EHLO first\r\n")
            else:
                mail = True
                await s.send(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            if not mail:
                await s.send(b"503 5.5.1 Error: need MAIL command\r\n")
            else:
                await s.send(b"554 5.7.1 <unknown>: Relay access denied\r\n")
        elif verb == b"DATA":
            await s.send(b"554 5.5.1 Error: no valid recipients\r\n")
        elif verb == b"RSET":
            mail = False
            await s.send(b"250 2.0.0 Ok\r\n")
        elif verb == b"NOOP":
            await s.send(b"250 2.0.0 Ok\r\n")
        elif verb == b"VRFY":
            await s.send(b"252 2.0.0 Send some mail, I'll try my best\r\n")
        elif verb == b"QUIT":
            await s.send(b"221 2.0.0 Bye\r\n")
            return
        elif verb in (b"AUTH", b"STARTTLS"):
            await s.send(b"502 5.5.1 Error: command not implemented\r\n")
        else:
            await s.send(b"502 5.5.2 Error: command not recognized\r\n")
