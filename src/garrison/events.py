"""Event records: the one schema for everything that leaves a detector.

An :class:`Event` is what a detector (or responder) publishes. Its ``name`` is one of the public
event names below; ``detail`` holds the detector's own fields, which appear under ``garrison.*``
in the Elastic Common Schema (ECS) form produced by :meth:`Event.to_ecs`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Final

ECS_VERSION: Final = "8.11.0"

# Public event names: the only spelling of each, used by detectors, handlers and the log.
SCAN: Final = "scan"
HONEYPOT: Final = "honeypot"
EXFIL: Final = "exfil"
DNS_TUNNEL: Final = "dns-tunnel"
BEACON: Final = "beacon"
NEW_CONNECTION: Final = "new-connection"
SUSPICIOUS_CONNECTION: Final = "suspicious-connection"
CAMPAIGN_DETECTED: Final = "campaign-detected"
BLOCKED: Final = "blocked"
UNBLOCKED: Final = "unblocked"
THREAT_RECEIVED: Final = "threat-received"
PEER_JOINED: Final = "peer-joined"
BOT_BLOCKED: Final = "bot-blocked"
IMPOSSIBLE_TRAVEL: Final = "impossible-travel"
RATE_LIMITED: Final = "rate-limited"
SQL_INJECTION: Final = "sql-injection"
SSRF_BLOCKED: Final = "ssrf-blocked"
SENSOR_STATUS: Final = "sensor-status"

EVENT_NAMES: Final = frozenset(
    {
        SCAN, HONEYPOT, EXFIL, DNS_TUNNEL, BEACON, NEW_CONNECTION, SUSPICIOUS_CONNECTION,
        CAMPAIGN_DETECTED, BLOCKED, UNBLOCKED, THREAT_RECEIVED, PEER_JOINED, BOT_BLOCKED,
        IMPOSSIBLE_TRAVEL, RATE_LIMITED, SQL_INJECTION, SSRF_BLOCKED, SENSOR_STATUS,
    }
)

# ECS categorisation per event name: (event.kind, event.category, event.type).
_ECS_CATEGORY: Final[dict[str, tuple[str, list[str], list[str]]]] = {
    SCAN: ("alert", ["network", "intrusion_detection"], ["connection", "info"]),
    HONEYPOT: ("alert", ["network", "intrusion_detection"], ["connection", "access"]),
    EXFIL: ("alert", ["network"], ["connection"]),
    DNS_TUNNEL: ("alert", ["network"], ["protocol"]),
    BEACON: ("alert", ["network"], ["connection"]),
    NEW_CONNECTION: ("event", ["network", "process"], ["connection", "start"]),
    SUSPICIOUS_CONNECTION: ("alert", ["network"], ["connection"]),
    CAMPAIGN_DETECTED: ("alert", ["threat", "intrusion_detection"], ["indicator"]),
    BLOCKED: ("event", ["network"], ["denied"]),
    UNBLOCKED: ("event", ["network"], ["allowed"]),
    THREAT_RECEIVED: ("enrichment", ["threat"], ["indicator"]),
    PEER_JOINED: ("event", ["network"], ["connection"]),
    BOT_BLOCKED: ("alert", ["web"], ["denied"]),
    IMPOSSIBLE_TRAVEL: ("alert", ["authentication", "web"], ["denied"]),
    RATE_LIMITED: ("event", ["web"], ["denied"]),
    SQL_INJECTION: ("alert", ["web", "database", "intrusion_detection"], ["denied"]),
    SSRF_BLOCKED: ("alert", ["web", "network"], ["denied"]),
    SENSOR_STATUS: ("metric", ["host"], ["info"]),
}


class Severity(IntEnum):
    """Severity of an event; the int value orders them."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def ecs(self) -> int:
        """Numeric ECS ``event.severity`` (the Elastic detection-rule scale 0..99)."""
        return (0, 21, 47, 73, 99)[self.value]

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(
                f"unknown severity {value!r}: expected one of "
                + ", ".join(s.label for s in cls)
            ) from None


@dataclass(frozen=True, slots=True)
class Technique:
    """A MITRE ATT&CK technique with its tactic (ids as in ATT&CK, e.g. T1046 / TA0007)."""

    id: str
    name: str
    tactic_id: str
    tactic: str


@dataclass(frozen=True, slots=True)
class Event:
    """One thing Garrison saw or did.

    ``ts`` is the time of the evidence (seconds since the epoch, from the packet or request),
    never the time of processing. ``episode`` names the episode an update belongs to: a scan
    that grows emits several events with the same episode id and rising ``port_count``.
    """

    name: str
    ts: float
    severity: Severity
    source_ip: str | None = None
    source_port: int | None = None
    destination_ip: str | None = None
    destination_port: int | None = None
    transport: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    techniques: tuple[Technique, ...] = ()
    episode: str | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if self.name not in EVENT_NAMES:
            raise ValueError(f"unknown event name {self.name!r}")

    @property
    def actor(self) -> str | None:
        """The address the event is about (the actor), when there is one."""
        ip = self.detail.get("ip")
        return str(ip) if ip else self.source_ip

    def to_ecs(self) -> dict[str, Any]:
        """This event as one Elastic Common Schema document (a plain, JSON-ready dict)."""
        kind, category, etype = _ECS_CATEGORY.get(self.name, ("event", ["host"], ["info"]))
        doc: dict[str, Any] = {
            "@timestamp": iso_timestamp(self.ts),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": kind,
                "category": category,
                "type": etype,
                "action": self.name,
                "severity": self.severity.ecs,
                "module": "garrison",
                "dataset": f"garrison.{self.name}",
            },
            "log": {"level": self.severity.label},
        }
        if self.message:
            doc["message"] = self.message
        if self.source_ip is not None:
            doc["source"] = {"ip": self.source_ip}
            if self.source_port is not None:
                doc["source"]["port"] = self.source_port
        if self.destination_ip is not None:
            doc["destination"] = {"ip": self.destination_ip}
            if self.destination_port is not None:
                doc["destination"]["port"] = self.destination_port
        if self.transport is not None:
            network: dict[str, Any] = {"transport": self.transport}
            cid = community_id(
                self.source_ip, self.destination_ip, self.source_port,
                self.destination_port, self.transport,
            )
            if cid is not None:
                network["community_id"] = cid
            doc["network"] = network
        if self.techniques:
            t = self.techniques
            doc["threat"] = {
                "framework": "MITRE ATT&CK",
                "tactic": {
                    "id": _unique(x.tactic_id for x in t),
                    "name": _unique(x.tactic for x in t),
                },
                "technique": {"id": [x.id for x in t], "name": [x.name for x in t]},
            }
        garrison: dict[str, Any] = {"severity": self.severity.label, **self.detail}
        if self.episode is not None:
            garrison["episode"] = self.episode
        doc["garrison"] = garrison
        return doc

    def to_json(self) -> str:
        """One NDJSON line (no newline). Strings are JSON-escaped, so no log injection."""
        return json.dumps(self.to_ecs(), default=_json_default, separators=(",", ":"))


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def iso_timestamp(ts: float) -> str:
    """RFC 3339 UTC timestamp with millisecond precision."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


_PROTO_NUMBERS: Final = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}


def community_id(
    src: str | None, dst: str | None, sport: int | None, dport: int | None,
    transport: str | None, seed: int = 0,
) -> str | None:
    """Community ID v1 flow hash (as Zeek and Suricata compute it) or None if not a flow."""
    if src is None or dst is None or transport is None or sport is None or dport is None:
        return None  # not one flow (a scan spans many ports)
    proto = _PROTO_NUMBERS.get(transport)
    if proto is None:
        return None
    try:
        a = ipaddress.ip_address(src).packed
        b = ipaddress.ip_address(dst).packed
    except ValueError:
        return None
    if len(a) != len(b):
        return None
    p1, p2 = sport, dport
    if proto in (1, 58):
        # ICMP: ports are type/code; without them a flow id would not match other tools.
        return None
    if (a, p1) > (b, p2):
        a, b, p1, p2 = b, a, p2, p1
    data = struct.pack("!H", seed) + a + b + struct.pack("!BxHH", proto, p1, p2)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()
