"""`garrison run` live in a network namespace, scanned with real nmap from another namespace.

Needs root (namespaces, AF_PACKET) and nmap; CI runs as root, elsewhere these skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import DEFENDED_V4, DEFENDED_V6, Topology, require_root_tools, topology

GARRISON = [sys.executable, "-m", "garrison.cli"]
# One outside address per scan, so each scan is its own actor and episode.
SCANS = [
    ("syn", ["-sS"], "203.0.113.51"),
    ("connect", ["-sT"], "203.0.113.50"),  # connect() ignores -S: uses the primary address
    ("fin", ["-sF"], "203.0.113.53"),
    ("null", ["-sN"], "203.0.113.54"),
    ("xmas", ["-sX"], "203.0.113.55"),
    ("ack", ["-sA"], "203.0.113.56"),
    ("maimon", ["-sM"], "203.0.113.58"),
    ("udp", ["-sU", "--max-retries", "1"], "203.0.113.57"),
    ("syn", ["-6", "-sS"], "2001:db8:2::57"),
]
SLOW_SOURCE = "203.0.113.59"
LISTENER = """
import socket, sys, time
socks = []
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (22, 80):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.listen(64); socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""


class LiveDaemon:
    """`garrison run` inside the defended namespace, writing NDJSON to a file."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.log = tmp / "events.ndjson"
        self.err = tmp / "garrison.err"
        cfg = tmp / "garrison.toml"
        cfg.write_text(
            f'home_net = ["{DEFENDED_V4}/32", "{DEFENDED_V6}/128"]\n'
            f'db = "{tmp / "garrison.db"}"\n'
            "[firewall]\nbackend = \"none\"\n"
        )
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
        self.proc = topo.popen(
            topo.defended, [*GARRISON, "run", "--config", str(cfg), "--log", str(self.log)],
            stderr=self.err.open("w"), env=env,
        )
        self.wait_for(lambda: "capturing on" in self.err.read_text(), 30, "capture start")

    def wait_for(self, cond: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():  # type: ignore[operator]
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"garrison run exited: {self.err.read_text()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.err.read_text()[-2000:]}")

    def events(self, action: str = "scan") -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        docs = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [d for d in docs if d["event"]["action"] == action]  # type: ignore[index]

    def scans_from(self, ip: str) -> list[dict[str, object]]:
        return [d for d in self.events() if d.get("source", {}).get("ip") == ip]  # type: ignore[attr-defined]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.err.read_text()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, LiveDaemon]]:
    require_root_tools("nmap")
    tmp = tmp_path_factory.mktemp("live")
    extra4 = [ip for _, _, ip in SCANS if ":" not in ip and ip != "203.0.113.50"]
    extra4.append(SLOW_SOURCE)
    extra6 = [ip for _, _, ip in SCANS if ":" in ip]
    with topology("gl", extra4, extra6) as topo:
        listener = topo.popen(topo.defended, [sys.executable, "-c", LISTENER],
                              stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline().strip() == b"ready"
        daemon = LiveDaemon(topo, tmp)
        try:
            yield topo, daemon
        finally:
            if daemon.proc.poll() is None:
                daemon.stop()
            listener.kill()


@pytest.mark.root
@pytest.mark.parametrize(("scan_type", "args", "source"), SCANS,
                         ids=[" ".join(a) for _, a, _ in SCANS])
def test_nmap_scan_is_detected_live(
    live: tuple[Topology, LiveDaemon], scan_type: str, args: list[str], source: str
) -> None:
    topo, daemon = live
    target = DEFENDED_V6 if "-6" in args else DEFENDED_V4
    spoof = [] if scan_type == "connect" else ["-S", source, "-e", topo.outside_if]
    ports = "1-30" if scan_type == "udp" else "1-100"
    r = topo.run(topo.outside, ["nmap", *args, *spoof, "-T4", "-Pn", "-n", "-p", ports, target],
                 check=False, timeout=180)
    assert r.returncode == 0, r.stderr
    daemon.wait_for(lambda: daemon.scans_from(source), 15, f"{scan_type} scan event")

    def settled() -> bool:
        # An episode is reported as it grows: a connect scan's first event can come before the
        # handshakes to the open ports that prove it (nmap probes ports in random order), so
        # its last event is the one to judge, once the daemon has seen the whole scan.
        last = daemon.scans_from(source)[-1]["garrison"]
        return last["type"] == scan_type  # type: ignore[index,no-any-return]

    daemon.wait_for(settled, 15, f"the {scan_type} scan's last event to say {scan_type}")
    docs = daemon.scans_from(source)
    episodes = {d["garrison"]["episode"] for d in docs}  # type: ignore[index]
    assert len(episodes) == 1
    g = docs[-1]["garrison"]
    assert g["type"] == scan_type  # type: ignore[index]
    assert g["ip"] == source  # type: ignore[index]
    assert g["verified"] is (scan_type == "connect")  # type: ignore[index]


@pytest.mark.root
def test_slow_scan_is_caught_by_the_random_walk(live: tuple[Topology, LiveDaemon]) -> None:
    # Five probes six seconds apart: far below "15 ports in 10 s" or "25 in 5 min", yet the
    # failed first contacts add up (nmap -T1 waits 15 s, -T0 five minutes; same mechanism).
    topo, daemon = live
    r = topo.run(topo.outside, ["nmap", "-sS", "-S", SLOW_SOURCE, "-e", topo.outside_if, "-Pn",
                                "-n", "--scan-delay", "6s", "--max-retries", "0", "-p",
                                "1000-1004", DEFENDED_V4], check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    daemon.wait_for(lambda: daemon.scans_from(SLOW_SOURCE), 15, "slow scan event")
    g = daemon.scans_from(SLOW_SOURCE)[-1]["garrison"]
    assert g["slow"] is True  # type: ignore[index]
    assert g["rule"] == "trw"  # type: ignore[index]
    assert g["type"] == "syn"  # type: ignore[index]


@pytest.mark.root
def test_shutdown_is_clean_and_reports_kernel_stats(live: tuple[Topology, LiveDaemon]) -> None:
    _, daemon = live
    # Runs after the scans (file order): SIGTERM stops it cleanly with a status line.
    err = daemon.stop()
    assert daemon.proc.returncode == 0, err
    assert '"kernel_drops"' in err
    assert "Traceback" not in err
    # The final state of every episode was written on the way out, and persisted.
    import sqlite3

    db = sqlite3.connect(daemon.log.parent / "garrison.db")
    stored = db.execute("SELECT COUNT(*) FROM events WHERE name = 'scan'").fetchone()[0]
    assert stored == len(daemon.events())


@pytest.mark.root
def test_bpf_filter_passes_probes_and_drops_bulk_data(tmp_path: Path) -> None:
    require_root_tools("ncat", "nmap")
    counter = Path(__file__).parent / "support" / "capture_counter.py"
    with topology("gb") as topo:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
        sink = topo.popen(topo.defended, ["ncat", "-l", "-p", "9000", "--recv-only"],
                          stdout=subprocess.DEVNULL)
        proc = topo.popen(topo.defended, [sys.executable, str(counter), topo.defended_if, "6"],
                          stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(2_000_000))
        topo.run(topo.outside, ["sh", "-c", f"ncat --send-only {DEFENDED_V4} 9000 < {blob}"],
                 timeout=30)
        topo.run(topo.outside, ["nmap", "-sN", "-Pn", "-n", "-p", "1000-1009", DEFENDED_V4],
                 timeout=60)
        out, _ = proc.communicate(timeout=30)
        sink.kill()
    seen = json.loads(out.decode().splitlines()[-1])
    assert seen["data_unfiltered"] > 50, seen  # the transfer really happened
    assert seen["data"] == 0, "data segments must be filtered in the kernel"
    assert seen["syn"] >= 1  # the ncat connection's SYN
    assert seen["null"] >= 10  # nmap's NULL probes
    # Neither the data nor the receiver's own ACKs left the kernel: only the handshake,
    # the teardown and the probes did.
    assert seen["frames"] < 40, seen


def test_run_without_root_says_what_it_cannot_watch() -> None:
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  "--inh-caps=-all"]
    else:
        prefix = []
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="garrison-nonroot-"))
    tmp_path.chmod(0o777)  # the unprivileged user must read the config and write the log
    cfg = tmp_path / "garrison.toml"
    cfg.write_text('home_net = ["198.51.100.1/32"]\ndb = ""\n[firewall]\nbackend = "none"\n')
    cfg.chmod(0o644)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    proc = subprocess.Popen(
        [*prefix, *GARRISON, "run", "--config", str(cfg), "--log", str(tmp_path / "e.ndjson")],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "started ticker" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=20)
    shutil.rmtree(tmp_path, ignore_errors=True)
    text = "".join(lines) + rest
    assert "needs root or CAP_NET_RAW" in text
    assert "everything else keeps running" in text
    assert "started ticker" in text  # it kept running
    assert proc.returncode == 0
    assert "Traceback" not in text
