"""The honeypot component on loopback, in-process: events through the engine, caps, timeouts,
bounded input, ``auto`` port choice and giving ports back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from garrison.bus import EventBus
from garrison.config import GarrisonConfig, HoneypotConfig
from garrison.engine import Garrison
from garrison.events import HONEYPOT, Event
from garrison.sensors.honeypot import HoneypotComponent, install


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture
async def running() -> AsyncIterator[tuple[HoneypotComponent, list[Event], list[int]]]:
    ssh_port, redis_port = free_ports(2)
    events: list[Event] = []
    cfg = HoneypotConfig(
        services={ssh_port: "ssh", redis_port: "redis"}, bind=["127.0.0.1"],
        max_sessions=6, max_sessions_per_source=3, idle_timeout=0.5, session_timeout=5.0,
        max_input_bytes=1024, max_capture_bytes=64, events_per_source=1000, ssh_auth=False,
    )
    comp = HoneypotComponent(cfg, emit=events.append)
    await comp.open()
    try:
        yield comp, events, [ssh_port, redis_port]
    finally:
        await comp.stop()


async def test_install_wires_events_to_the_engine_bus() -> None:
    (port,) = free_ports(1)
    bus = EventBus()
    engine = Garrison(GarrisonConfig(honeypot=HoneypotConfig(services={port: "ftp"},
                                                            bind=["127.0.0.1"])), bus=bus)
    install(engine)
    got: list[Event] = []
    engine.on(HONEYPOT, got.append)
    (component,) = engine.components
    await component.start(engine)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"220 (vsFTPd 3.0.3)\r\n"
        writer.write(b"USER root\r\nPASS 123456\r\nQUIT\r\n")
        assert (await reader.read()).endswith(b"221 Goodbye.\r\n")
        writer.close()
        await until(lambda: bool(got))
    finally:
        await component.stop()
    (event,) = got
    assert event.source_ip == "127.0.0.1" and event.destination_port == port
    assert event.detail["credentials"] == [{"username": "root", "password": "123456"}]
    assert engine.counters["events.honeypot"] == 1


async def test_sessions_over_the_per_source_cap_are_reset(
    running: tuple[HoneypotComponent, list[Event], list[int]],
) -> None:
    comp, events, (ssh_port, _) = running
    conns = [await asyncio.open_connection("127.0.0.1", ssh_port) for _ in range(5)]
    await until(lambda: comp.active_sessions == 3 and comp.stats["rejected"] == 2)
    # The admitted ones got the banner; the rejected ones were closed without a word.
    banners = [await asyncio.wait_for(r.read(100), 2) for r, _ in conns]
    assert sum(b.startswith(b"SSH-2.0-OpenSSH") for b in banners) == 3
    assert banners.count(b"") == 2
    for _, w in conns:
        w.close()
    await until(lambda: comp.active_sessions == 0)
    assert sorted(e.detail["closed"] for e in events).count("limit") == 2


async def test_idle_visitor_is_dropped(
    running: tuple[HoneypotComponent, list[Event], list[int]],
) -> None:
    _comp, events, (ssh_port, _) = running
    reader, writer = await asyncio.open_connection("127.0.0.1", ssh_port)
    await reader.readline()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the decoy, idle 0.5 s
    writer.close()
    await until(lambda: bool(events))
    assert events[0].detail["closed"] == "idle"


async def test_input_is_bounded_and_the_sample_cut(
    running: tuple[HoneypotComponent, list[Event], list[int]],
) -> None:
    _comp, events, (_, redis_port) = running
    _reader, writer = await asyncio.open_connection("127.0.0.1", redis_port)
    try:
        for _ in range(40):  # 40 x 100 bytes of inline commands > max_input_bytes (1024)
            writer.write(b"X" * 98 + b"\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    await until(lambda: bool(events))
    writer.close()
    g = events[0].detail
    assert g["closed"] == "input-limit" and g["bytes_in"] <= 1024
    assert g["sample"] == "X" * 64 + "..."  # max_capture_bytes = 64


async def test_auto_takes_free_unwanted_ports_and_gives_them_back() -> None:
    busy, excluded, wanted, free = free_ports(4)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", busy))
    holder.listen()
    want = {wanted}
    comp = HoneypotComponent(
        HoneypotConfig(auto=True, exclude=[excluded], bind=["127.0.0.1"], recheck_interval=0),
        emit=lambda e: None, candidates=[busy, excluded, wanted, free],
        wanted=lambda p: p in want,
    )
    await comp.open()
    try:
        assert dict(comp.services) == {free: "tcp"}
        assert await comp.recheck() == []
        want.add(free)  # e.g. its daemon was just installed
        assert await comp.recheck() == [free]
        assert dict(comp.services) == {}
        probe = socket.socket()
        probe.bind(("127.0.0.1", free))  # the real service can have it now
        probe.close()
    finally:
        await comp.stop()
        holder.close()


async def test_a_newcomer_gets_in_when_one_source_holds_every_slot() -> None:
    (port,) = free_ports(1)
    comp = HoneypotComponent(
        HoneypotConfig(services={port: "ssh"}, bind=["127.0.0.1"], max_sessions=4,
                       max_sessions_per_source=4, idle_timeout=5.0, ssh_auth=False),
        emit=lambda e: None,
    )
    await comp.open()
    try:
        hog = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for r, _ in hog:
            await r.readline()
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.2", 0))
        assert (await reader.readline()).startswith(b"SSH-2.0-OpenSSH")
        await until(lambda: comp.stats["evicted"] == 1 and comp.active_sessions == 4)
        assert await asyncio.wait_for(hog[0][0].read(), 2) == b""  # the oldest was ended
        for _, w in [*hog, (reader, writer)]:
            w.close()
    finally:
        await comp.stop()


async def test_ssh_logins_are_recorded_and_refused() -> None:
    asyncssh = pytest.importorskip("asyncssh", reason="SSH login capture needs asyncssh")
    (port,) = free_ports(1)
    events: list[Event] = []
    comp = HoneypotComponent(HoneypotConfig(services={port: "ssh"}, bind=["127.0.0.1"]),
                             emit=events.append)
    await comp.open()
    try:
        for password in ("123456", "root"):
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect("127.0.0.1", port, username="root", password=password,
                                       known_hosts=None)
        await until(lambda: len(events) == 2)
    finally:
        await comp.stop()
    assert [e.detail["credentials"] for e in events] == [
        [{"username": "root", "password": "123456"}], [{"username": "root", "password": "root"}],
    ]
    assert events[0].detail["session"]["client_version"].startswith("SSH-2.0-AsyncSSH")
    assert [t.id for t in events[0].techniques][-1] == "T1110"
    assert comp.active_sessions == 0
