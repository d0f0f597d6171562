"""Packet path and scan detection: replay throughput and live behaviour under a SYN flood.

Run as root (it records a capture and runs the daemon in network namespaces):

    .venv/bin/python benchmarks/bench_scan.py

1. Records a SYN flood (``hping3 --flood -S``) between two namespaces with tcpdump
   (320,000 packets: the flood and the defended host's answers) into benchmarks/out/.
2. Replays it, three runs each, median reported: a bare read loop over the records (the
   baseline), read + decode, the scan detector end to end, and every packet detector end to end
   (what ``garrison replay`` runs). Figures are packets per second and the ratio to the bare loop.
3. Live: ``garrison run`` in the defended namespace while hping3 floods it for 5 s; packets seen
   by the sensor, kernel drops, then the time from the first probe of an nmap SYN scan to its
   event in the NDJSON log.

Results go to docs/benchmarks/scan.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.support.netns import DEFENDED_V4, topology  # noqa: E402

import garrison.daemon as daemon  # noqa: E402
from garrison.sensors.pcap import read_frames, read_packets  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
CAPTURE = OUT / "synflood.pcap"
PACKETS = 320_000
HOME = [ipaddress.ip_network(f"{DEFENDED_V4}/32")]


def machine() -> str:
    cpu = cpu_model()
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def record() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with topology("gbench") as topo:
        cap = topo.popen(topo.defended, ["tcpdump", "-i", topo.defended_if, "-s", "256", "-w",
                                         str(CAPTURE), "-c", str(PACKETS), "tcp"],
                         stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        flood = topo.popen(topo.outside, ["hping3", "--flood", "-S", "-p", "80", DEFENDED_V4],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cap.wait(60)
        except subprocess.TimeoutExpired:
            cap.kill()
        flood.kill()


def median_rate(fn: Callable[[], int], runs: int = 3) -> float:
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def replay_with(plugins: bool) -> Callable[[], int]:
    def run() -> int:
        saved = daemon.PLUGINS
        if not plugins:
            daemon.PLUGINS = ()
        try:
            return daemon.replay(CAPTURE, home_net=HOME).packets
        finally:
            daemon.PLUGINS = saved

    return run


def replay_figures() -> list[tuple[str, float]]:
    return [
        ("bare read loop over the records (baseline)",
         median_rate(lambda: sum(1 for _ in read_frames(CAPTURE)))),
        ("read + decode into Packet records",
         median_rate(lambda: sum(1 for _ in read_packets(CAPTURE)))),
        ("scan detection end to end (read, decode, detect)", median_rate(replay_with(False))),
        ("all packet detectors end to end (`garrison replay`)", median_rate(replay_with(True))),
    ]


SCAN_ONLY = "[dns]\nenabled = false\n[exfil]\nenabled = false\n[beacon]\nenabled = false\n"


def live_figures(extra_config: str = "") -> dict[str, float]:
    tmp = OUT / "live"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log, err = tmp / "events.ndjson", tmp / "garrison.err"
    cfg = tmp / "garrison.toml"
    cfg.write_text(f'home_net = ["{DEFENDED_V4}/32"]\ndb = "{tmp / "g.db"}"\n'
                   '[firewall]\nbackend = "none"\n' + extra_config)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with topology("gbl", extra_outside_v4=["203.0.113.60"]) as topo:
        proc = topo.popen(topo.defended, [sys.executable, "-m", "garrison.cli", "run", "--config",
                                          str(cfg), "--log", str(log)],
                          stderr=err.open("w"), env=env)
        deadline = time.monotonic() + 30
        while "capturing on" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        flood = topo.popen(topo.outside, ["hping3", "--flood", "-S", "-p", "80", DEFENDED_V4],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5.0)
        flood.send_signal(signal.SIGINT)
        flood.wait(10)
        time.sleep(1.0)
        scanner = topo.popen(topo.outside, ["nmap", "-sS", "-T4", "-Pn", "-n", "-S",
                                            "203.0.113.60", "-e", topo.outside_if, "-p", "1-200",
                                            DEFENDED_V4], stdout=subprocess.DEVNULL)
        seen_at = None
        first_seen = None
        deadline = time.monotonic() + 30
        while seen_at is None and time.monotonic() < deadline:
            if log.exists():
                for line in log.read_text().splitlines():
                    doc = json.loads(line)
                    if doc["event"]["action"] == "scan" and \
                            doc.get("source", {}).get("ip") == "203.0.113.60":
                        seen_at = time.time()
                        first_seen = doc["garrison"]["first_seen"]
                        break
            time.sleep(0.005)
        scanner.wait(60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    status = {}
    for line in err.read_text().splitlines():
        if "stopped: " in line:
            status = json.loads(line.split("stopped: ", 1)[1])
    return {
        "filter": status.get("filter", "?"),
        "received": status.get("received", -1),
        "kernel_packets": status.get("kernel_packets", -1),
        "kernel_drops": status.get("kernel_drops", -1),
        "latency_ms": (seen_at - first_seen) * 1000 if seen_at and first_seen else -1,
    }


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_scan.py needs root (namespaces, tcpdump, hping3)")
    if not CAPTURE.exists():
        record()
    figures = replay_figures()
    base = figures[0][1]
    runs = [("every detector (the default)", live_figures()),
            ("scan detection only (dns, exfil, beacon disabled)", live_figures(SCAN_ONLY))]
    lines = [
        "# Packet path and scan detection",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/bench_scan.py` (as root).",
        "",
        f"## Replay of a {PACKETS:,}-packet SYN flood capture (hping3 between namespaces)",
        "",
        "Median of three runs, packets per second, and the ratio to the bare read loop over the",
        "same file in the same run.",
        "",
        "| stage | packets/s | ratio to bare loop |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {rate:,.0f} | {rate / base:.2f} |" for name, rate in figures]
    lines += [
        "",
        "## Live: `garrison run` under `hping3 --flood -S` for 5 s, then an nmap SYN scan",
        "",
        "Frames are what passed the in-kernel BPF filter (its kind in brackets): the flood's",
        "SYNs and the host's SYN-ACK/RST answers. The sensor reads a TPACKET_V3 ring.",
        "",
        "| detectors | frames passed by the filter | processed | dropped by the kernel "
        "| first probe of an nmap scan to its event |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} [{r['filter']}] | {r['kernel_packets']:,} | {r['received']:,} | "
        f"{r['kernel_drops']:,} ({r['kernel_drops'] / max(r['kernel_packets'], 1):.0%}) | "
        f"{r['latency_ms']:.0f} ms |"
        for name, r in runs
    ]
    lines.append("")
    out = ROOT / "docs" / "benchmarks" / "scan.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
