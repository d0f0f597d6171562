"""A flood of 2,000 connections, many held open, from nine sources: the honeypot's memory and
file descriptors stay bounded, the log is not flooded, and the decoys keep answering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.honeypot.conftest import Decoys, start_decoys, stop_decoys, wait_for
from tests.support.netns import DEFENDED_V4, OUTSIDE_V4, require_root_tools, topology

pytestmark = pytest.mark.root

FLOOD = Path(__file__).with_name("flood.py")
FLOOD_SOURCES = [f"203.0.113.{60 + i}" for i in range(8)]
MAX_SESSIONS = 128
PER_SOURCE = 32
EVENTS_PER_SOURCE = 20
CONNECTIONS = 2000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decoys]:
    require_root_tools()
    workdir = tmp_path_factory.mktemp("honeypot-flood")
    config = {
        "ports": [22, 80, 6379], "max_sessions": MAX_SESSIONS,
        "max_sessions_per_source": PER_SOURCE, "idle_timeout": 30, "session_timeout": 40,
        "events_per_source": EVENTS_PER_SOURCE, "event_window": 600,
    }
    with topology(prefix="gh", extra_outside_v4=FLOOD_SOURCES) as topo:
        d = start_decoys(topo, config, workdir)
        try:
            yield d
        finally:
            stop_decoys(d)


def test_flood_leaves_memory_and_fds_bounded_and_decoys_answering(
    flooded: Decoys, tmp_path: Path
) -> None:
    if shutil.which("redis-cli") is None or shutil.which("curl") is None:
        pytest.skip("needs redis-cli and curl (installed by scripts/setup)")
    pid = flooded.pid
    base_rss, base_fds = rss_kib(pid), fd_count(pid)
    status = tmp_path / "flood.json"
    flood = flooded.topo.popen(
        flooded.topo.outside,
        [sys.executable, str(FLOOD), DEFENDED_V4, "22,80,6379", str(CONNECTIONS),
         ",".join(FLOOD_SOURCES), "60", str(status)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(status.exists, 100.0, "the flood to finish connecting")
        report = json.loads(status.read_text())
        assert report["attempted"] == CONNECTIONS
        assert report["connected"] > MAX_SESSIONS  # the flood really exceeded the caps

        # While the flood holds every connection the decoys let it keep:
        fds, rss = fd_count(pid), rss_kib(pid)
        print(f"flood {report}: fds {base_fds} -> {fds}, RSS {base_rss} -> {rss} KiB")
        # An SSH session owned by asyncssh holds a second descriptor (a dup of the socket).
        assert fds <= base_fds + 2 * MAX_SESSIONS, (fds, base_fds)
        assert rss - base_rss < 48 * 1024, (rss, base_rss)  # KiB

        # A newcomer still gets answers from every decoy.
        r = flooded.outside(["redis-cli", "-h", DEFENDED_V4, "ping"], timeout=20)
        assert r.stdout.strip() == "PONG", r
        r = flooded.outside(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://{DEFENDED_V4}/"], timeout=20)
        assert r.stdout == "200"
        r = flooded.outside(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o",
                             "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                             f"x@{DEFENDED_V4}", "true"], timeout=20)
        # asyncssh decoy: "Permission denied"; banner-only decoy: "Connection closed by".
        assert "Permission denied" in r.stderr or "Connection closed by" in r.stderr, r.stderr
    finally:
        flood.kill()
        flood.wait(timeout=10)

    # The log got a bounded number of events per flooding source, and the newcomer's visits.
    events = flooded.events()
    for src in FLOOD_SOURCES:
        n = sum(1 for e in events if e["source"]["ip"] == src)
        assert 1 <= n <= EVENTS_PER_SOURCE
    assert any(e["source"]["ip"] == OUTSIDE_V4 and e["garrison"]["service"] == "redis"
               for e in events)
    assert flooded.proc.poll() is None  # still serving
    wait_for(lambda: fd_count(pid) <= base_fds + 2, 30.0, "sessions to be released")
