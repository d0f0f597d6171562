"""ATT&CK mapping and campaigns: four stages from one address make exactly one campaign."""

from __future__ import annotations

from typing import Any

from garrison.correlate.attack import KINDS, STAGES, stage_of, technique, techniques_of
from garrison.events import CAMPAIGN_DETECTED, Event, Severity, Technique

from .conftest import ev

CAMPAIGN_STEPS = [
    ("scan", {"type": "connect", "verified": True, "port_count": 40}),
    ("honeypot", {"verified": True, "service": "ssh"}),
    ("dns-tunnel", {"domain": "t.example"}),
    ("exfil", {"bytes": 50_000_000}),
]


def test_techniques_have_real_ids_and_tactics() -> None:
    expected = {
        "T1046": ("Network Service Discovery", "TA0007"),
        "T1595": ("Active Scanning", "TA0043"),
        "T1071.004": ("Application Layer Protocol: DNS", "TA0011"),
        "T1571": ("Non-Standard Port", "TA0011"),
        "T1041": ("Exfiltration Over C2 Channel", "TA0010"),
        "T1048": ("Exfiltration Over Alternative Protocol", "TA0010"),
        "T1190": ("Exploit Public-Facing Application", "TA0001"),
    }
    for tid, (name, tactic_id) in expected.items():
        t = technique(tid)
        assert (t.name, t.tactic_id) == (name, tactic_id), tid
    for kind in KINDS.values():
        for tid in kind.techniques:
            technique(tid)  # every id in the table exists in ATT&CK


def test_stages_of_known_and_unknown_kinds() -> None:
    assert [stage_of(ev(n, "203.0.113.1", 0)) for n, _ in CAMPAIGN_STEPS] == list(STAGES)
    assert stage_of(ev("rate-limited", "203.0.113.1", 0)) is None
    # A future detector: a name the table does not know, tagged with ATT&CK techniques.
    future = Event("sql-injection", 0, Severity.HIGH, detail={"ip": "203.0.113.1"},
                   techniques=(technique("T1048"),))
    assert techniques_of(future) == (technique("T1048"),)


def _feed(engine: Any, steps: list[tuple[str, str, dict[str, Any]]]) -> None:
    for i, (name, ip, detail) in enumerate(steps):
        engine.emit(ev(name, ip, 1_700_000_000.0 + 60 * i, Severity.MEDIUM, **detail))


def test_one_address_through_all_stages_is_one_campaign(engine_factory: Any) -> None:
    engine, svc, seen = engine_factory()
    ip = "203.0.113.50"
    _feed(engine, [(n, ip, d) for n, d in CAMPAIGN_STEPS])
    # More activity afterwards must not make a second campaign.
    _feed(engine, [(n, ip, d) for n, d in CAMPAIGN_STEPS])
    campaigns = [e for e in seen if e.name == CAMPAIGN_DETECTED]
    assert len(campaigns) == 1
    c = campaigns[0]
    assert c.detail["ip"] == ip and c.actor == ip
    assert c.detail["stages"] == list(STAGES) and c.detail["stage_count"] == 4
    assert c.detail["severity"] == "critical" and c.severity == Severity.CRITICAL
    assert 0 < c.detail["score"] <= 100
    ids = {t.id for t in c.techniques}
    assert {"T1595", "T1046", "T1071.004", "T1041"} <= ids
    ecs = c.to_ecs()
    assert ecs["threat"]["framework"] == "MITRE ATT&CK"
    report = svc.investigate(ip)["kill_chain"]
    assert report["stages"] == list(STAGES)


def test_same_steps_over_four_addresses_make_no_campaign(engine_factory: Any) -> None:
    engine, _, seen = engine_factory()
    ips = ["203.0.113.50", "203.0.113.51", "203.0.113.52", "2001:db8:2::50"]
    _feed(engine, [(n, ip, d) for (n, d), ip in zip(CAMPAIGN_STEPS, ips, strict=True)])
    assert not [e for e in seen if e.name == CAMPAIGN_DETECTED]


def test_stages_outside_the_window_do_not_combine(engine_factory: Any) -> None:
    engine, _, seen = engine_factory(reputation={"campaign_window": "1h"})
    ip = "203.0.113.60"
    for i, (name, detail) in enumerate(CAMPAIGN_STEPS):
        engine.emit(ev(name, ip, 1_700_000_000.0 + 3000 * i, Severity.MEDIUM, **detail))
    assert not [e for e in seen if e.name == CAMPAIGN_DETECTED]


def test_campaign_technique_record_is_frozen() -> None:
    t = technique("T1046")
    assert isinstance(t, Technique)


def test_a_restart_remembers_reputation_and_stages(tmp_path: Any) -> None:
    from garrison import EventBus, Garrison
    from garrison.respond import install

    from .conftest import config

    cfg = config(tmp_path, reputation={"half_life": "30d"})
    ip = "203.0.113.70"
    t = 1_700_000_000.0

    def run(steps: list[tuple[str, dict[str, Any]]], start: float) -> tuple[Any, list[Event]]:
        bus = EventBus()
        seen: list[Event] = []
        bus.on("*", seen.append)
        engine = Garrison(cfg, bus=bus)
        svc = install(engine)
        for i, (name, detail) in enumerate(steps):
            engine.emit(ev(name, ip, start + i, Severity.LOW, **detail))
        score = svc.reputation.score(svc.firewall.guard.check(ip), start + 10)
        svc.close()
        return score, seen

    s1, seen1 = run(CAMPAIGN_STEPS[:2], t)
    s2, seen2 = run(CAMPAIGN_STEPS[2:], t + 100)  # a new process on the same database
    assert s2 < s1 < 0.5  # the second process started from the first one's score
    campaigns = [e for e in seen1 + seen2 if e.name == CAMPAIGN_DETECTED]
    assert len(campaigns) == 1 and campaigns[0].detail["stage_count"] == 4
    _, seen3 = run(CAMPAIGN_STEPS, t + 200)  # and a third does not report it again
    assert not [e for e in seen3 if e.name == CAMPAIGN_DETECTED]
