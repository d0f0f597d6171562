"""The ``honeypot`` event for one finished session.

Every decoy session is a completed TCP handshake with a port no legitimate client has a reason
to touch, so the event is HIGH severity and ``verified`` (the source address could not have
been spoofed). ``detail`` (the ``garrison.*`` object of the ECS log line) carries
``{ip, port, service, banner, ts, sample}`` plus what the dialogue revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from garrison.events import HONEYPOT, Event, Severity, Technique
from garrison.sensors.honeypot.session import Session

NETWORK_SERVICE_DISCOVERY: Final = Technique(
    "T1046", "Network Service Discovery", "TA0007", "Discovery"
)
ACTIVE_SCANNING: Final = Technique("T1595", "Active Scanning", "TA0043", "Reconnaissance")
BRUTE_FORCE: Final = Technique("T1110", "Brute Force", "TA0006", "Credential Access")


@dataclass(frozen=True, slots=True)
class Visit:
    """Where a session came from and went to; ``ts`` = connection time (s since the epoch),
    ``duration`` in seconds, ``closed`` = why it ended (eof, idle, timeout, done, ...)."""

    ip: str
    port: int
    local_ip: str
    local_port: int
    ts: float
    duration: float
    closed: str
    session_id: str
    suppressed: int = 0


def honeypot_event(visit: Visit, session: Session) -> Event:
    """The event for one visit, with the session's bounded capture."""
    detail: dict[str, Any] = {
        "ip": visit.ip,
        "port": visit.local_port,
        "service": session.service,
        "banner": session.banner,
        "ts": visit.ts,
        "sample": session.sample_text(),
        "verified": True,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "duration": round(visit.duration, 3),
        "closed": visit.closed,
    }
    if session.commands:
        detail["commands"] = list(session.commands)
    if session.credentials:
        detail["credentials"] = [dict(c) for c in session.credentials]
    if session.notes:
        detail["session"] = dict(session.notes)
    if session.dropped_captures:
        detail["dropped_captures"] = session.dropped_captures
    if visit.suppressed:
        detail["suppressed"] = visit.suppressed
    techniques: tuple[Technique, ...] = (NETWORK_SERVICE_DISCOVERY, ACTIVE_SCANNING)
    if session.credentials:
        techniques += (BRUTE_FORCE,)
    tried = f", {len(session.credentials)} login(s) tried" if session.credentials else ""
    return Event(
        name=HONEYPOT,
        ts=visit.ts,
        severity=Severity.HIGH,
        source_ip=visit.ip,
        source_port=visit.port,
        destination_ip=visit.local_ip,
        destination_port=visit.local_port,
        transport="tcp",
        detail=detail,
        techniques=techniques,
        episode=visit.session_id,
        message=f"honeypot {session.service} decoy on port {visit.local_port} "
        f"touched by {visit.ip}{tried}",
    )
