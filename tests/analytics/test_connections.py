"""The socket-table parser and the connection sensor on this machine's real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from garrison.bus import EventBus
from garrison.config import GarrisonConfig
from garrison.engine import Garrison
from garrison.events import NEW_CONNECTION, Event
from garrison.sensors.connections import (
    Connection,
    ConnectionSensor,
    ProcTableError,
    SocketTable,
    new_connection_event,
    parse_address,
    parse_table,
)
from tests.analytics.synth import DATA

little = pytest.mark.skipif(sys.byteorder != "little", reason="samples are little-endian /proc")

# Lines in the format of a little-endian host's /proc/net/tcp6 and /proc/net/tcp (addresses in
# documentation ranges, written the way the kernel prints them).
TCP6 = (DATA / "proc_net_tcp6.txt").read_text()
TCP4_BAD = (DATA / "proc_net_tcp_bad.txt").read_text()


@little
def test_ipv6_words_are_in_host_byte_order() -> None:
    rows = parse_table(TCP6, "tcp")
    assert rows[0].local_addr == "::" and rows[0].local_port == 22 and rows[0].state == 0x0A
    assert rows[1].local_addr == "2001:db8:1::1" and rows[1].local_port == 80
    assert rows[1].remote_addr == "2001:db8:2::50" and rows[1].remote_port == 0xD431
    assert rows[1].uid == 33 and rows[1].inode == 48213
    # A v4 peer on a dual-stack socket is reported as plain IPv4.
    assert rows[2].local_addr == "127.0.0.1" and rows[2].remote_port == 0xA1B2


@little
def test_ipv4_and_bad_lines() -> None:
    assert parse_address("0100A8C0:0016") == ("192.168.0.1", 22)
    with pytest.raises(ProcTableError):
        parse_table(TCP4_BAD, "tcp")  # the remote address has 9 hex digits
    with pytest.raises(ProcTableError):
        parse_address("zz:0016")
    with pytest.raises(ProcTableError):
        parse_table("header\n 0: 0100007F:0016\n", "tcp")


@pytest.fixture
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen()
    client = socket.create_connection(("::1", listener.getsockname()[1]))
    server, _ = listener.accept()
    yield listener, client, server
    for s in (client, server, listener):
        s.close()


def test_poll_reports_new_flows_with_our_process(loopback_pair: tuple[socket.socket, ...]
                                                 ) -> None:
    listener, _client, _server = loopback_pair
    table = SocketTable()
    table.poll(time.time())  # the first poll sees everything; from now on only new flows
    v4l = socket.socket()
    v4l.bind(("127.0.0.1", 0))
    v4l.listen()
    v4c = socket.create_connection(("127.0.0.1", v4l.getsockname()[1]))
    v4s, _ = v4l.accept()
    try:
        fresh = table.poll(time.time())
        ours = [c for c in fresh if c.pid == os.getpid()]
        ports = {(c.local_port, c.remote_port, c.direction) for c in ours}
        cport = v4c.getsockname()[1]
        lport = v4l.getsockname()[1]
        assert (cport, lport, "outbound") in ports
        assert (lport, cport, "inbound") in ports
        c = next(c for c in ours if c.local_port == cport)
        assert c.local_addr == "127.0.0.1" and c.proto == "tcp" and c.state == "ESTABLISHED"
        assert c.ppid == os.getppid() and c.command_line and c.exe and c.user
        assert table.poll(time.time()) == [] or all(
            x.local_port not in (cport, lport) for x in table.poll(time.time()))
    finally:
        for s in (v4c, v4s, v4l):
            s.close()
    # The IPv6 pair from before the first poll was never announced as new.
    assert table.fd_scans >= 1 and table.polls >= 3
    assert listener.getsockname()[1] not in {x.local_port for x in fresh}


def test_new_connection_event_fields() -> None:
    c = Connection(5.0, "tcp", "198.51.100.1", 41000, "2001:db8:2::50", 443, "ESTABLISHED",
                   "outbound", "net:[1]", 7, 0, 123, 1, "curl", "curl https://x", "root",
                   "/usr/bin/curl")
    ev = new_connection_event(c)
    assert ev.name == NEW_CONNECTION and ev.source_ip == "198.51.100.1"
    doc = ev.to_ecs()
    assert doc["garrison"]["pid"] == 123 and doc["garrison"]["command_line"] == "curl https://x"
    assert doc["destination"] == {"ip": "2001:db8:2::50", "port": 443}
    inbound = new_connection_event(c._replace(direction="inbound"))
    assert inbound.source_ip == "2001:db8:2::50" and inbound.destination_port == 41000


async def test_sensor_component_emits_new_connection(
    loopback_pair: tuple[socket.socket, ...]
) -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.on(NEW_CONNECTION, seen.append)
    cfg = GarrisonConfig()
    engine = Garrison(cfg, bus=bus)
    sensor = ConnectionSensor(interval=0.05)
    await sensor.start(engine)
    try:
        listener = loopback_pair[0]
        extra = socket.create_connection(("::1", listener.getsockname()[1]))
        port = extra.getsockname()[1]
        deadline = time.monotonic() + 10
        while not any(e.detail["local_port"] == port for e in seen):
            assert time.monotonic() < deadline, "new connection not reported within 10 s"
            await asyncio.sleep(0.05)
        ev = next(e for e in seen if e.detail["local_port"] == port)
        assert ev.detail["pid"] == os.getpid() and ev.source_ip == "::1"
        extra.close()
    finally:
        await sensor.stop()
    with pytest.raises(ValueError, match="positive"):
        ConnectionSensor(interval=0)


def test_kernel_byte_counters_of_new_flows() -> None:
    table = SocketTable()
    assert table.byte_counts(time.time()) == []  # the first call is the baseline
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        payload = b"x" * 1_000_000
        received = 0
        client.setblocking(False)
        view = memoryview(payload)
        sent = 0
        deadline = time.monotonic() + 20
        while received < len(payload):  # pump both ends in this thread, no sleeps
            assert time.monotonic() < deadline
            if sent < len(payload):
                with contextlib.suppress(BlockingIOError):
                    sent += client.send(view[sent:])
            server.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                received += len(server.recv(1 << 16))
        cport = client.getsockname()[1]
        totals = {"out": 0, "in": 0}

        def count() -> bool:
            # Acknowledgements may trail the reads by a moment: sum the deltas until they land.
            for b in table.byte_counts(time.time()):
                if b.local_port == cport and b.remote_addr == "127.0.0.1":
                    totals["out"] += b.bytes_out
                elif b.remote_port == cport:
                    totals["in"] += b.bytes_in
            return totals["out"] >= len(payload) and totals["in"] >= len(payload)

        deadline = time.monotonic() + 10
        while not count():
            assert time.monotonic() < deadline, totals
        assert totals == {"out": len(payload), "in": len(payload)}
        client.setblocking(True)
        client.sendall(b"y" * 1000)
        assert server.recv(2000)
        totals["out"] = 0
        deadline = time.monotonic() + 10
        while totals["out"] < 1000:  # deltas, not totals: only the new 1,000 bytes
            assert time.monotonic() < deadline, totals
            count()
        assert totals["out"] == 1000
    finally:
        for s in (client, server, listener):
            s.close()
        table.close()
