"""Forensics and the response commands, reading what a running service stored in SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import garrison
from garrison.cli import main
from garrison.events import Severity
from garrison.forensics import to_stix
from garrison.respond.service import ResponseService

from .conftest import config, ev

IP = "203.0.113.50"


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "garrison.toml"
    path.write_text(
        f'db = "{tmp_path / "garrison.db"}"\n'
        '[firewall]\nbackend = "none"\nblock_duration = "30m"\n'
        '[reputation]\nhalf_life = "30d"\n'
    )
    return path


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A database holding a campaign from IP, as the daemon would have left it."""
    cfg_path = _write_config(tmp_path)
    cfg = garrison.load_config(cfg_path, environ={})
    engine = garrison.Garrison(cfg, bus=garrison.EventBus())
    from garrison.respond import install

    svc = install(engine)
    t = 1_800_000_000.0
    engine.emit(ev("scan", IP, t, Severity.MEDIUM, type="connect", verified=True,
                   port_count=120, ports=[22, 80, 443]))
    engine.emit(ev("honeypot", IP, t + 10, Severity.HIGH, service="ssh", user="root"))
    engine.emit(ev("beacon", IP, t + 20, Severity.MEDIUM, interval=60))
    engine.emit(ev("exfil", IP, t + 30, Severity.HIGH, bytes=10**8))
    engine.emit(ev("rate-limited", IP, t + 40, Severity.LOW, path="/login"))
    engine.emit(ev("new-connection", IP, t + 41, Severity.INFO, process="sshd"))
    svc.close()
    return cfg_path


def test_investigate_reports_every_module(recorded: Path, capsys: Any) -> None:
    assert main(["investigate", IP, "--config", str(recorded)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"reputation", "connections", "scan_activity", "honeypot_hits",
                           "alerts", "rate_limit", "kill_chain"}
    assert report["scan_activity"][0]["type"] == "connect"
    assert report["scan_activity"][0]["port_count"] == 120
    assert report["honeypot_hits"][0]["service"] == "ssh"
    assert report["rate_limit"][0]["path"] == "/login"
    assert report["connections"][0]["process"] == "sshd"
    assert report["reputation"]["classification"] == "malicious"
    assert report["kill_chain"]["stage_count"] == 4
    kinds = [a["kind"] for a in report["alerts"]]
    assert "campaign-detected" in kinds and "blocked" in kinds
    assert report["blocks"]["current"]["ip"] == IP


def test_evidence_bundle_and_stix(recorded: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "evidence.json"
    assert main(["evidence", IP, "-o", str(out), "--config", str(recorded)]) == 0
    bundle = json.loads(out.read_text())
    assert bundle["metadata"]["target_ip"] == IP
    assert bundle["metadata"]["garrison_version"] == garrison.__version__
    assert bundle["metadata"]["generated_at"].endswith("Z")
    s = bundle["summary"]
    assert s["classification"] == "malicious" and s["kill_chain_stage"] == "exfiltration"
    assert s["threat_score"] > 80 and s["total_alerts"] >= 6
    names = [e["name"] for e in bundle["evidence"]["events"]]
    assert names == ["scan", "honeypot", "beacon", "exfil", "campaign-detected",
                     "rate-limited", "new-connection"]
    assert bundle["evidence"]["events"][0]["ecs"]["event"]["action"] == "scan"
    stix_path = tmp_path / "evidence.stix.json"
    assert main(["evidence", IP, "-o", str(stix_path), "--format", "stix",
                 "--config", str(recorded)]) == 0
    stix = json.loads(stix_path.read_text())
    assert stix["type"] == "bundle" and stix["id"].startswith("bundle--")
    types = [o["type"] for o in stix["objects"]]
    assert {"identity", "ipv4-addr", "indicator", "attack-pattern", "relationship",
            "note"} <= set(types)
    ind = next(o for o in stix["objects"] if o["type"] == "indicator")
    assert ind["pattern"] == f"[ipv4-addr:value = '{IP}']" and ind["spec_version"] == "2.1"
    ids = {r["external_id"] for o in stix["objects"] if o["type"] == "attack-pattern"
           for r in o["external_references"]}
    assert {"T1595", "T1046", "T1071", "T1041"} <= ids
    assert all(o["id"].startswith(o["type"] + "--") for o in stix["objects"])


def test_stix_for_ipv6(tmp_path: Path) -> None:
    svc = ResponseService.from_config(config(tmp_path))
    try:
        svc.handle(ev("scan", "2001:db8:2::50", 1.0, type="connect", verified=True))
        stix = to_stix(svc.collect_evidence("2001:db8:2::50"))
        assert any(o["type"] == "ipv6-addr" and o["value"] == "2001:db8:2::50"
                   for o in stix["objects"])
    finally:
        svc.close()


def test_block_blocks_unblock_commands(tmp_path: Path, capsys: Any) -> None:
    cfg = str(_write_config(tmp_path))
    assert main(["block", IP, "--for", "2h", "--config", cfg]) == 0
    assert "blocked 203.0.113.50 for 7200 s" in capsys.readouterr().out
    assert main(["block", "2001:db8:2::50", "--config", cfg]) == 0
    assert "1800 s" in capsys.readouterr().out
    assert main(["blocks", "--json", "--config", cfg]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["ip"] for r in rows} == {IP, "2001:db8:2::50"}
    assert main(["unblock", IP, "--config", cfg]) == 0
    assert capsys.readouterr().out == f"unblocked {IP}\n"
    assert main(["blocks", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert IP not in out and "2001:db8:2::50" in out
    # Refusals and hostile input: exit 2, nothing blocked.
    assert main(["block", "127.0.0.1", "--config", cfg]) == 2
    assert main(["block", "$(reboot)", "--config", cfg]) == 2
    assert main(["block", IP, "--for", "soon", "--config", cfg]) == 2
    assert main(["investigate", "1.2.3.4; id", "--config", cfg]) == 2
    assert "refusing to block 127.0.0.1" in capsys.readouterr().err


def test_the_installed_command(tmp_path: Path) -> None:
    cfg = str(_write_config(tmp_path))
    exe = Path(sys.executable).parent / "garrison"
    r = subprocess.run([str(exe), "block", IP, "--for", "5m", "--config", cfg],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "blocks", "--config", cfg], capture_output=True, text=True,
                       timeout=60)
    assert IP in r.stdout


def test_module_level_verbs_use_the_installed_engine(tmp_path: Path) -> None:
    from garrison.respond import install

    engine = garrison.Garrison(config(tmp_path), bus=garrison.EventBus())
    svc = install(engine)
    try:
        assert engine.services["response"] is svc
        rec = garrison.block("203.0.113.77", "10m")
        assert rec.duration == 600
        assert garrison.investigate("203.0.113.77")["blocks"]["active"]
        assert garrison.collect_evidence("203.0.113.77")["metadata"]["target_ip"] == \
            "203.0.113.77"
        assert garrison.unblock("203.0.113.77")
    finally:
        svc.close()
