"""Which decoy runs on which port: guesses from the port number and the ``auto`` candidates.

Pure data and pure functions; no sockets. The service names are the ``HoneypotService`` values
of :mod:`garrison.config`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

#: Port number -> the service a scanner expects there (the guess used by ``ports = [...]``).
PORT_GUESSES: Final[Mapping[int, str]] = {
    21: "ftp", 2121: "ftp",
    22: "ssh", 2222: "ssh", 2200: "ssh", 22222: "ssh",
    23: "telnet", 2323: "telnet",
    25: "smtp", 587: "smtp", 2525: "smtp",
    80: "http", 81: "http", 8000: "http", 8008: "http", 8080: "http", 8081: "http",
    8888: "http",
    3306: "mysql",
    5432: "postgresql",
    6379: "redis",
    9200: "elasticsearch", 9201: "elasticsearch",
    5900: "vnc", 5901: "vnc",
    3389: "rdp",
}

#: Service of a port nobody guessed: accept, capture what arrives, say nothing.
FALLBACK_SERVICE: Final = "tcp"

#: Ports ``auto = true`` may take: commonly probed by scanners and bots, and rarely served on
#: the kind of host Garrison defends. 22, 80 and 443 are deliberately absent: a real service
#: may want them at any moment.
AUTO_CANDIDATES: Final[tuple[int, ...]] = (
    21, 23, 2222, 2323, 3306, 3389, 5432, 5900, 6379, 8080, 8888, 9200,
)


def guess_service(port: int) -> str:
    """The service name a scanner expects on ``port`` (``"tcp"`` when there is no guess)."""
    return PORT_GUESSES.get(port, FALLBACK_SERVICE)


def plan_ports(
    ports: Iterable[int], services: Mapping[int, str], exclude: Iterable[int] = ()
) -> dict[int, str]:
    """Port -> service for the explicit configuration: ``services`` wins over a guess from
    ``ports``; ports in ``exclude`` are dropped."""
    skip = set(exclude)
    plan = {p: guess_service(p) for p in ports if p not in skip}
    plan.update({p: s for p, s in services.items() if p not in skip})
    return dict(sorted(plan.items()))
