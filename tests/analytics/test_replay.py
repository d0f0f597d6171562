"""`garrison replay` over captures of real tools (the team's corpus, copied into test data)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from typing import Any

import pytest

from garrison import analytics
from garrison.bus import EventBus
from garrison.config import GarrisonConfig
from garrison.daemon import replay
from garrison.engine import Garrison
from garrison.events import BEACON, DNS_TUNNEL, EXFIL, NEW_CONNECTION, SUSPICIOUS_CONNECTION
from garrison.sensors.connections import ConnectionSensor
from garrison.sensors.pcap import read_packets
from tests.analytics.synth import DATA

HOME = [ipaddress.ip_network("198.51.100.1/32")]
ACTOR = "198.51.100.66"
ANALYTICS = {DNS_TUNNEL, EXFIL, BEACON, NEW_CONNECTION, SUSPICIOUS_CONNECTION}


def analytics_events(capture: str) -> list[tuple[str, dict[str, Any]]]:
    result = replay(DATA / f"{capture}.pcap", GarrisonConfig(), HOME)
    return [(e.name, {**e.to_ecs(), "detail": dict(e.detail)}) for e in result.episodes()
            if e.name in ANALYTICS]


def test_iodine_tunnel_is_one_dns_tunnel_for_its_zone() -> None:
    events = analytics_events("s12_iodine")
    assert [name for name, _ in events] == [DNS_TUNNEL]
    doc = events[0][1]
    assert doc["detail"]["domain"] == "t.tun.test"
    assert doc["detail"]["client"] == ACTOR and doc["detail"]["ip"] == ACTOR
    assert doc["source"] == {"ip": ACTOR, "port": doc["source"]["port"]}
    assert doc["destination"]["ip"] == "198.51.100.1"
    assert "binary-labels" in doc["detail"]["reasons"]
    assert doc["threat"]["technique"]["id"][0] == "T1071.004"


@pytest.mark.parametrize("capture", ["s13_benign_dns", "s14_benign_web"])
def test_benign_captures_give_nothing(capture: str) -> None:
    result = replay(DATA / f"{capture}.pcap", GarrisonConfig(), HOME)
    assert [e for e in result.events if e.name in ANALYTICS] == []


def test_beacon_capture() -> None:
    events = analytics_events("s15_beacon")
    assert [name for name, _ in events] == [BEACON]
    doc = events[0][1]
    assert doc["destination"] == {"ip": ACTOR, "port": 443}
    assert doc["source"]["ip"] == "198.51.100.1"
    d = doc["detail"]
    assert d["ip"] == ACTOR and 0.9 < d["interval"] < 1.2 and d["count"] >= 20


def test_exfil_capture() -> None:
    events = analytics_events("s16_exfil")
    exfil = [doc for name, doc in events if name == EXFIL]
    assert exfil and all(d["destination"] == {"ip": ACTOR, "port": 4444} for d in exfil)
    assert exfil[-1]["detail"]["type"] == "large-upload"
    assert exfil[-1]["detail"]["ip"] == ACTOR
    assert exfil[-1]["detail"]["bytes"] >= 10_000_000
    # The odd port is also a known-bad destination.
    assert [name for name, _ in events].count(SUSPICIOUS_CONNECTION) == 1


def test_cli_replay_writes_the_events_as_ndjson() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "garrison.cli", "replay", str(DATA / "s15_beacon.pcap"), "--json",
         "--home-net", "198.51.100.1/32"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    beacons = [d for d in docs if d["event"]["action"] == BEACON]
    assert len(beacons) == 1 and beacons[0]["garrison"]["ip"] == ACTOR


def test_install_follows_the_configuration() -> None:
    cfg = GarrisonConfig.model_validate({
        "home_net": ["198.51.100.1/32"], "dns": {"enabled": False},
        "connections": {"interval": "2s", "suspicious_ports": [7777], "announce": False},
    })
    engine = Garrison(cfg, bus=EventBus())
    analytics.install(engine)
    names = {d.name for d in engine.detectors}
    assert names == {"exfil", "beacon", "known-bad"}
    assert {getattr(d, "packet_filter", None) for d in engine.detectors} == {"all"}
    sensors = [c for c in engine.components if isinstance(c, ConnectionSensor)]
    assert len(sensors) == 1 and sensors[0].interval == 2.0 and not sensors[0].announce
    full = Garrison(GarrisonConfig(), bus=EventBus())
    analytics.install(full)
    dns = next(d for d in full.detectors if d.name == "dns-tunnel")
    assert getattr(dns, "packet_filter", None) == "dns"


def test_blocklist_service_is_used() -> None:
    engine = Garrison(GarrisonConfig(home_net=["198.51.100.1/32"]), bus=EventBus())
    engine.services["blocklists"] = {ACTOR}
    analytics.install(engine)
    got = [e for p in read_packets(DATA / "s14_benign_web.pcap") for e in engine.feed(p)]
    assert got and {e.name for e in got} == {SUSPICIOUS_CONNECTION}
    assert got[0].detail["reason"] == "blocklisted-address"
