"""`garrison replay` over captures of real tools: one scan episode per scan, none for benign."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from garrison.daemon import replay
from garrison.sensors.decode import DecodeStats
from garrison.sensors.pcap import CaptureFormatError, read_packets

DATA = Path(__file__).parent / "data" / "scan"
MANIFEST = list(csv.DictReader((DATA / "manifest.tsv").open(), delimiter="\t"))
HOME = "198.51.100.1/32"


def garrison(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "garrison.cli", *args], capture_output=True, text=True,
        timeout=120, check=False,
    )


@pytest.mark.parametrize("row", [r for r in MANIFEST if r["expected"] == "scan"],
                         ids=lambda r: r["capture"])
def test_scan_capture_gives_one_episode_of_the_right_type(row: dict[str, str]) -> None:
    r = garrison("replay", str(DATA / f"{row['capture']}.pcap"), "--json", "--home-net", HOME)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    scans = [d for d in docs if d["event"]["action"] == "scan"]
    assert len(scans) == 1, scans
    doc = scans[0]
    assert doc["source"]["ip"] == row["actor"]
    expected_type = "syn" if row["detail"] == "masscan" else row["detail"]
    assert doc["garrison"]["type"] == expected_type
    assert doc["garrison"]["ip"] == row["actor"]
    # ECS fields a SIEM relies on
    assert doc["ecs"]["version"]
    assert doc["event"]["kind"] == "alert"
    assert isinstance(doc["event"]["severity"], int)
    assert doc["threat"]["framework"] == "MITRE ATT&CK"
    assert "T1046" in doc["threat"]["technique"]["id"]
    assert doc["@timestamp"].endswith("Z")


@pytest.mark.parametrize("row", [r for r in MANIFEST if r["expected"] != "scan"],
                         ids=lambda r: r["capture"])
def test_benign_capture_gives_no_scan(row: dict[str, str]) -> None:
    result = replay(DATA / f"{row['capture']}.pcap", home_net=[])
    assert [e for e in result.events if e.name == "scan"] == []
    result = replay(DATA / f"{row['capture']}.pcap", home_net=[_net(HOME)])
    assert [e for e in result.events if e.name == "scan"] == []


def _net(cidr: str):  # type: ignore[no-untyped-def]
    import ipaddress

    return ipaddress.ip_network(cidr)


def test_stdout_holds_only_ndjson_and_updates_flag_shows_growth() -> None:
    r = garrison("replay", str(DATA / "s01_syn_top1000.pcap"), "--json", "--updates",
                 "--home-net", HOME)
    lines = r.stdout.splitlines()
    assert len(lines) > 1
    episodes = {json.loads(line)["garrison"]["episode"] for line in lines}
    assert len(episodes) == 1
    counts = [json.loads(line)["garrison"]["port_count"] for line in lines]
    assert counts == sorted(counts) and counts[-1] == 1000


def test_table_output_is_readable() -> None:
    r = garrison("replay", str(DATA / "s04_null.pcap"), "--home-net", HOME)
    assert r.returncode == 0
    assert "null scan from 203.0.113.53" in r.stdout
    assert "packets in" in r.stdout


def test_pcapng_gives_the_same_stream_as_pcap() -> None:
    a = list(read_packets(DATA / "s02_connect.pcap"))
    b = list(read_packets(DATA / "s02_connect.pcapng"))
    assert len(a) == len(b) > 500
    assert a == b


def test_truncated_capture_ends_quietly_and_counts(tmp_path: Path) -> None:
    raw = (DATA / "s04_null.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[: len(raw) - 30])
    stats, full = DecodeStats(), DecodeStats()
    list(read_packets(cut, stats))
    list(read_packets(DATA / "s04_null.pcap", full))
    assert stats.frames == full.frames - 1
    assert stats.dropped.get("truncated-record") == 1


def test_garbage_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    import random
    import struct

    rnd = random.Random(7)
    recs = b""
    for i in range(2000):
        frame = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 90)))
        if i % 2:  # half of them claim to be IPv4 over Ethernet
            frame = frame[:12].ljust(12, b"\0") + b"\x08\x00" + frame[14:]
        recs += struct.pack("<IIII", 1, i, len(frame), len(frame)) + frame
    f = tmp_path / "garbage.pcap"
    f.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + recs)
    stats = DecodeStats()
    n = sum(1 for _ in read_packets(f, stats))
    assert stats.frames == 2000
    assert n + sum(stats.dropped.values()) == 2000
    r = garrison("replay", str(f), "--json")
    assert r.returncode == 0, r.stderr


def test_not_a_capture_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "x.pcap"
    f.write_text("hello")
    with pytest.raises(CaptureFormatError):
        list(read_packets(f))
    r = garrison("replay", str(f))
    assert r.returncode == 2
    assert "not a pcap or pcapng file" in r.stderr
    r = garrison("replay", str(tmp_path / "missing.pcap"))
    assert r.returncode == 2
    assert "no such file" in r.stderr
