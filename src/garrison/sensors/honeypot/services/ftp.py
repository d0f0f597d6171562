"""FTP decoy: vsftpd 3.0.3 as Debian ships it; every login fails.

Records each USER/PASS pair tried and every command, answers the way vsftpd does before login
and hangs up after three failed logins, as vsftpd does.
"""

from __future__ import annotations

from typing import Final

from garrison.sensors.honeypot.session import Session

BANNER: Final = "vsftpd 3.0.3"
MAX_LOGINS: Final = 3
MAX_COMMANDS: Final = 40

_FEAT: Final = (
    b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n"
    b" TVFS\r\n211 End\r\n"
)
_HELP: Final = (
    b"214-The following commands are recognized.\r\n"
    b" ABOR ACCT ALLO APPE CDUP CWD  DELE EPRT EPSV FEAT HELP LIST MDTM MKD\r\n"
    b" MODE NLST NOOP OPTS PASS PASV PORT PWD  QUIT REIN REST RETR RMD  RNFR\r\n"
    b" RNTO SITE SIZE SMNT STAT STOR STOU STRU SYST TYPE USER XCUP XCWD XMKD\r\n"
    b" XPWD XRMD\r\n214 Help OK.\r\n"
)


async def serve(s: Session) -> None:
    """Banner, then the pre-login command set; passwords are always wrong."""
    await s.send(b"220 (vsFTPd 3.0.3)\r\n")
    user: bytes | None = None
    failures = 0
    for _ in range(MAX_COMMANDS):
        line = await s.recv_line(512)
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        s.command(b"PASS ****" if verb == b"PASS" else line)
        if verb == b"USER":
            user = arg
            await s.send(b"331 Please specify the password.\r\n")
        elif verb == b"PASS":
            if user is None:
                await s.send(b"503 Login with USER first.\r\n")
                continue
            s.credential(user, arg)
            user = None
            failures += 1
            await s.send(b"530 Login incorrect.\r\n")
            if failures >= MAX_LOGINS:
                return
        elif verb == b"QUIT":
            await s.send(b"221 Goodbye.\r\n")
            return
        elif verb == b"SYST":
            await s.send(b"215 UNIX Type: L8\r\n")
        elif verb == b"FEAT":
            await s.send(_FEAT)
        elif verb in (b"AUTH",):
            await s.send(b"530 Please login with USER and PASS.\r\n")
        elif verb == b"HELP":
            await s.send(_HELP)
        elif verb == b"NOOP":
            await s.send(b"200 NOOP ok.\r\n")
        elif verb == b"OPTS":
            await s.send(b"200 Always in UTF8 mode.\r\n")
        else:
            await s.send(b"530 Please login with USER and PASS.\r\n")
