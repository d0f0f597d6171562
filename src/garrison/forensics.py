"""Forensics: everything known about one address, as a report, an evidence bundle, or STIX 2.1.

Reads the response tables in SQLite (so ``garrison investigate`` in another process sees what
the daemon recorded) through a :class:`~garrison.respond.service.ResponseService`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from garrison import __version__
from garrison.correlate.addresses import parse_ip
from garrison.correlate.attack import STAGES, kind_of, technique
from garrison.correlate.reputation import NEUTRAL, classify
from garrison.events import (
    HONEYPOT,
    NEW_CONNECTION,
    RATE_LIMITED,
    SCAN,
    SUSPICIOUS_CONNECTION,
    iso_timestamp,
)

if TYPE_CHECKING:
    from garrison.respond.service import ResponseService

# STIX 2.1 namespace for deterministic SCO ids (STIX 2.1 section 2.9).
_STIX_SCO_NS: Final = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
_GARRISON_NS: Final = uuid.uuid5(uuid.NAMESPACE_URL, "garrison:forensics")


def _reputation(svc: ResponseService, ip: str, now: float) -> dict[str, Any]:
    addr = parse_ip(ip)
    rep = svc.reputation
    if rep.is_trusted(addr):
        return {"ip": ip, "score": 1.0, "classification": "trusted", "trusted": True,
                "blocklisted": False, "blocklists": [], "events": 0}
    row = svc.store.reputation(ip)
    listed = rep.blocklists.match(addr)
    base = rep.blocklisted_score if listed else NEUTRAL
    if row is None:
        score, events = base, 0
    else:
        dt = max(0.0, now - float(row["at"]))
        score = base + (float(row["score"]) - base) * math.pow(0.5, dt / rep.half_life)
        events = int(row["events"])
    return {"ip": ip, "score": round(score, 4), "classification": classify(score),
            "trusted": False, "blocklisted": bool(listed), "blocklists": listed,
            "events": events}


def _summary_of(row: dict[str, Any]) -> dict[str, Any]:
    g = dict(row["doc"].get("garrison", {}))
    g.pop("severity", None)
    return {"ts": row["ts"], "name": row["name"], "severity": row["severity"],
            "verified": bool(row["verified"]), **g}


def _kill_chain(svc: ResponseService, ip: str, rows: list[dict[str, Any]],
                now: float) -> dict[str, Any]:
    # Forensics shows every stage ever recorded; ``in_window`` says which still count now.
    window = svc.config.reputation.campaign_window
    stages = svc.store.stages(ip)
    live = [s for s in STAGES if s in stages]
    techniques: dict[str, dict[str, str]] = {}
    for row in rows:
        threat = row["doc"].get("threat", {}).get("technique", {})
        ids = list(threat.get("id", [])) or list(kind_of(row["name"]).techniques)
        for tid in ids:
            if tid not in techniques:
                try:
                    t = technique(tid)
                except KeyError:
                    continue
                techniques[tid] = {"id": t.id, "name": t.name, "tactic_id": t.tactic_id,
                                   "tactic": t.tactic}
    return {
        "stages": live,
        "stage_count": len(live),
        "furthest_stage": live[-1] if live else None,
        "reached_at": {s: stages[s][0] for s in live},
        "evidence": {s: stages[s][1] for s in live},
        "in_window": [s for s in live if now - stages[s][0] <= window],
        "techniques": list(techniques.values()),
    }


def investigate(svc: ResponseService, ip: str, now: float | None = None) -> dict[str, Any]:
    """``{reputation, connections, scan_activity, honeypot_hits, alerts, rate_limit,
    kill_chain, blocks}`` for ``ip`` (ValueError if it is not an IP address)."""
    ip = str(parse_ip(ip))
    at = svc.clock() if now is None else now
    rows = svc.store.events(ip)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(_summary_of(row))
    block = svc.store.block_of(ip)
    return {
        "ip": ip,
        "reputation": _reputation(svc, ip, at),
        "connections": by_name.get(NEW_CONNECTION, []) + by_name.get(SUSPICIOUS_CONNECTION, []),
        "scan_activity": by_name.get(SCAN, []),
        "honeypot_hits": by_name.get(HONEYPOT, []),
        "alerts": [
            {"ts": a["ts"], "kind": a["name"], "severity": a["severity"],
             "suppressed": a["suppressed"], "id": a["doc"]["alert"]["id"]}
            for a in svc.store.alerts(ip)
        ],
        "rate_limit": by_name.get(RATE_LIMITED, []),
        "kill_chain": _kill_chain(svc, ip, rows, at),
        "blocks": {
            "active": bool(block and block["active"] and block["until"] > at),
            "current": block,
            "history": svc.store.actions(ip),
        },
        "other_events": {k: len(v) for k, v in by_name.items()
                         if k not in (SCAN, HONEYPOT, RATE_LIMITED, NEW_CONNECTION,
                                      SUSPICIOUS_CONNECTION)},
    }


def collect_evidence(svc: ResponseService, ip: str, now: float | None = None) -> dict[str, Any]:
    """An evidence bundle: ``metadata``, ``summary`` and the raw ``evidence``.

    ``summary.threat_score`` is 0..100: ``100 * (1 - reputation score)``."""
    at = svc.clock() if now is None else now
    report = investigate(svc, ip, at)
    ip = report["ip"]
    rep = report["reputation"]
    return {
        "metadata": {
            "generated_at": iso_timestamp(at),
            "garrison_version": __version__,
            "target_ip": ip,
        },
        "summary": {
            "threat_score": round(100 * (1 - rep["score"]), 1),
            "classification": rep["classification"],
            "kill_chain_stage": report["kill_chain"]["furthest_stage"],
            "total_alerts": len(report["alerts"]),
        },
        "evidence": {
            **report,
            "events": [
                {"ts": r["ts"], "name": r["name"], "severity": r["severity"],
                 "verified": bool(r["verified"]), "ecs": r["doc"]}
                for r in svc.store.events(ip)
            ],
        },
    }


def to_stix(bundle: dict[str, Any]) -> dict[str, Any]:
    """The evidence bundle as a STIX 2.1 bundle: identity, the address (SCO), an indicator,
    the ATT&CK techniques seen (attack-pattern) with ``indicates`` relationships, and a note
    carrying the summary."""
    meta, summary = bundle["metadata"], bundle["summary"]
    ip = meta["target_ip"]
    ts = meta["generated_at"]
    version = parse_ip(ip).version
    sco_type = "ipv4-addr" if version == 4 else "ipv6-addr"

    def sid(kind: str, *parts: str) -> str:
        return f"{kind}--{uuid.uuid5(_GARRISON_NS, '|'.join((kind, ip, ts, *parts)))}"

    identity = {"type": "identity", "spec_version": "2.1", "id": sid("identity"),
                "created": ts, "modified": ts, "name": "Garrison", "identity_class": "system"}
    canonical = json.dumps({"value": ip}, separators=(",", ":"))
    addr = {"type": sco_type, "spec_version": "2.1",
            "id": f"{sco_type}--{uuid.uuid5(_STIX_SCO_NS, canonical)}", "value": ip}
    indicator = {
        "type": "indicator", "spec_version": "2.1", "id": sid("indicator"),
        "created": ts, "modified": ts, "created_by_ref": identity["id"],
        "name": f"Garrison: {summary['classification']} address {ip}",
        "indicator_types": ["malicious-activity"
                            if summary["classification"] in ("malicious", "suspicious")
                            else "anomalous-activity"],
        "pattern": f"[{sco_type}:value = '{ip}']", "pattern_type": "stix",
        "valid_from": ts, "confidence": int(min(100, summary["threat_score"])),
        "labels": [summary["classification"]],
    }
    objects: list[dict[str, Any]] = [identity, addr, indicator]
    for t in bundle["evidence"]["kill_chain"]["techniques"]:
        ap = {
            "type": "attack-pattern", "spec_version": "2.1", "id": sid("attack-pattern", t["id"]),
            "created": ts, "modified": ts, "name": t["name"],
            "external_references": [{
                "source_name": "mitre-attack", "external_id": t["id"],
                "url": f"https://attack.mitre.org/techniques/{t['id'].replace('.', '/')}/",
            }],
            "kill_chain_phases": [{"kill_chain_name": "mitre-attack",
                                   "phase_name": t["tactic"].lower().replace(" ", "-")}],
        }
        rel = {"type": "relationship", "spec_version": "2.1",
               "id": sid("relationship", t["id"]), "created": ts, "modified": ts,
               "relationship_type": "indicates", "source_ref": indicator["id"],
               "target_ref": ap["id"]}
        objects += [ap, rel]
    note = {"type": "note", "spec_version": "2.1", "id": sid("note"), "created": ts,
            "modified": ts, "created_by_ref": identity["id"],
            "abstract": f"Garrison evidence summary for {ip}",
            "content": (f"threat_score={summary['threat_score']} "
                        f"classification={summary['classification']} "
                        f"kill_chain_stage={summary['kill_chain_stage']} "
                        f"total_alerts={summary['total_alerts']}"),
            "object_refs": [indicator["id"], addr["id"]]}
    objects.append(note)
    return {"type": "bundle", "id": sid("bundle"), "objects": objects}


def now() -> float:
    """Wall-clock seconds (forensics reports are about the present, not event time)."""
    return time.time()
