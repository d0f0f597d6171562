"""The decoy services: one module per protocol, each with ``BANNER`` and ``serve(session)``.

:data:`DECOYS` maps every ``HoneypotService`` name of :mod:`garrison.config` to its decoy;
:func:`decoys` is the same with the SSH decoy backed by asyncssh when that is installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from garrison.sensors.honeypot.services import (
    elasticsearch,
    ftp,
    http,
    mysql,
    postgresql,
    rdp,
    redis,
    smtp,
    ssh,
    telnet,
    vnc,
)
from garrison.sensors.honeypot.session import Session

Serve = Callable[[Session], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Decoy:
    """A service we pretend to run: its name, what it claims to be, and its dialogue."""

    name: str
    banner: str
    serve: Serve


async def _silent(s: Session) -> None:
    """A port nobody guessed: say nothing, keep (bounded) what arrives."""
    while True:
        await s.recv_some()


DECOYS: Final[Mapping[str, Decoy]] = {
    d.name: d
    for d in (
        Decoy("ssh", ssh.BANNER, ssh.serve),
        Decoy("http", http.BANNER, http.serve),
        Decoy("ftp", ftp.BANNER, ftp.serve),
        Decoy("smtp", smtp.BANNER, smtp.serve),
        Decoy("telnet", telnet.BANNER, telnet.serve),
        Decoy("mysql", mysql.BANNER, mysql.serve),
        Decoy("postgresql", postgresql.BANNER, postgresql.serve),
        Decoy("redis", redis.BANNER, redis.serve),
        Decoy("elasticsearch", elasticsearch.BANNER, elasticsearch.serve),
        Decoy("vnc", vnc.BANNER, vnc.serve),
        Decoy("rdp", rdp.BANNER, rdp.serve),
        Decoy("tcp", "", _silent),
    )
}


def ssh_auth_available() -> bool:
    """True when asyncssh (the ``honeypot`` extra) is installed."""
    return importlib.util.find_spec("asyncssh") is not None


def decoys(ssh_auth: bool = True) -> Mapping[str, Decoy]:
    """The decoys to serve: with ``ssh_auth`` and asyncssh installed, the SSH decoy completes
    the key exchange and records login attempts; otherwise it stops after the algorithm offer."""
    if not (ssh_auth and ssh_auth_available()):
        return DECOYS
    from garrison.sensors.honeypot.services import ssh_auth as auth

    return {**DECOYS, "ssh": Decoy("ssh", ssh.BANNER, auth.serve)}
