"""Assembling an engine for ``garrison run`` (live) and ``garrison replay`` (offline).

Both paths build the same detectors from the same configuration, so a capture replayed gives
the detections the live daemon would have made.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from garrison.bus import EventBus
from garrison.config import GarrisonConfig, Networks
from garrison.detect.homenet import HomeNet, Network
from garrison.detect.scan import ScanDetector
from garrison.engine import Garrison
from garrison.events import Event
from garrison.respond.ndjson import NDJSONLog
from garrison.sensors import bpf
from garrison.sensors.decode import DecodeStats
from garrison.sensors.live import PacketSensor
from garrison.sensors.pcap import read_packets
from garrison.store.sqlite import SQLiteStore

log = logging.getLogger("garrison.daemon")

# Areas that wire themselves into an engine with ``install(engine)``: (module, live only).
PLUGINS: tuple[tuple[str, bool], ...] = (
    ("garrison.analytics", False),
    ("garrison.sensors.honeypot", True),
    ("garrison.respond", True),
)


def local_addresses() -> list[Network]:
    """This host's own addresses (IPv4 from /proc/net/fib_trie, IPv6 from /proc/net/if_inet6),
    as host networks; what ``home_net`` defaults to."""
    found: set[Network] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for prev, line in itertools.pairwise(lines):
            if line.strip() == "/32 host LOCAL":
                addr = prev.strip().removeprefix("|-- ")
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_network(addr))
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hexaddr = line.split()[0]
            with contextlib.suppress(ValueError, IndexError):
                found.add(ipaddress.ip_network(ipaddress.IPv6Address(int(hexaddr, 16))))
    except OSError:
        pass
    return sorted(found, key=lambda n: (n.version, n))


def home_of(config: GarrisonConfig, override: Networks | None = None) -> HomeNet:
    nets = list(override) if override else list(config.home_net)
    return HomeNet(nets)


def build_detectors(engine: Garrison, home: HomeNet) -> None:
    """The packet detectors every mode runs."""
    if engine.config.scanner.enabled:
        engine.add_detector(ScanDetector(engine.config.scanner, home))


def install_plugins(engine: Garrison, live: bool) -> list[str]:
    """Let each area wire itself in. Returns the names installed; a failing one is logged."""
    installed = []
    for module_name, live_only in PLUGINS:
        if live_only and not live:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            log.debug("%s not available: %s", module_name, exc)
            continue
        install: Callable[[Garrison], None] | None = getattr(module, "install", None)
        if install is None:
            continue
        try:
            install(engine)
            installed.append(module_name)
        except Exception:
            log.exception("cannot install %s", module_name)
    return installed


# -- replay -----------------------------------------------------------------------------------
class ReplayResult:
    """Everything a replay produced."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.packets = 0
        self.stats = DecodeStats()
        self.seconds = 0.0

    def episodes(self) -> list[Event]:
        """One event per episode (its latest state), plus events without an episode, in
        order of first appearance."""
        latest: dict[str, Event] = {}
        order: list[str | Event] = []
        for ev in self.events:
            if ev.episode is None:
                order.append(ev)
            else:
                if ev.episode not in latest:
                    order.append(ev.episode)
                latest[ev.episode] = ev
        return [latest[x] if isinstance(x, str) else x for x in order]


def replay(
    path: str | Path, config: GarrisonConfig | None = None, home_net: Iterable[Network] = (),
) -> ReplayResult:
    """Run the detectors over a capture file. Deterministic: time comes from the packets."""
    cfg = config or GarrisonConfig()
    result = ReplayResult()
    bus = EventBus()
    bus.on("*", result.events.append)
    engine = Garrison(cfg, bus=bus)
    nets = list(home_net) or list(cfg.home_net)
    cfg_home = cfg.model_copy(update={"home_net": nets})
    engine.config = cfg_home
    build_detectors(engine, HomeNet(nets))
    install_plugins(engine, live=False)
    started = time.perf_counter()
    routes = engine._routes
    from garrison.observations import Packet

    observers = [d.observe for d in routes.get(Packet, [])]
    emit = engine.emit
    next_tick = 0.0
    n = 0
    for pkt in read_packets(path, result.stats):
        n += 1
        for observe in observers:
            evs = observe(pkt)
            if evs:
                for ev in evs:
                    emit(ev)
        if pkt.ts >= next_tick:
            # Let time pass for the detectors once a second of capture time.
            if next_tick:
                engine.flush(pkt.ts)
            next_tick = pkt.ts + 1.0
        engine.latest_ts = pkt.ts
    engine.finish()
    result.packets = n
    result.seconds = time.perf_counter() - started
    return result


# -- live ---------------------------------------------------------------------------------------
class Ticker:
    """Lets time pass for the detectors once a second when traffic is quiet."""

    name = "ticker"

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, engine: Garrison) -> None:
        async def tick() -> None:
            while True:
                await asyncio.sleep(self.interval)
                engine.flush(time.time())

        self._task = asyncio.create_task(tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def build_live(
    config: GarrisonConfig, log_path: str | None = None, interfaces: list[str] | None = None,
    bus: EventBus | None = None,
) -> tuple[Garrison, dict[str, Any]]:
    """A fully wired live engine and a dict of the parts (for status and shutdown)."""
    if not config.home_net:
        config = config.model_copy(update={"home_net": local_addresses()})
    engine = Garrison(config, bus=bus)
    parts: dict[str, Any] = {}
    ndjson = NDJSONLog(log_path or config.log)
    engine.on("*", ndjson)
    parts["log"] = ndjson
    if config.db:
        store = SQLiteStore(config.db)
        engine.on("*", store)
        parts["store"] = store
        engine.services["store"] = store
    build_detectors(engine, HomeNet(config.home_net))
    parts["plugins"] = install_plugins(engine, live=True)
    wanted = [getattr(d, "packet_filter", "scan") for d in engine.detectors]
    sensor = PacketSensor(
        interfaces or config.sensor.interfaces, bpf.union(wanted), config.sensor.snaplen,
        config.sensor.stats_interval, config.sensor.ring_blocks,
    )
    engine.add_component(sensor)
    engine.services["packets"] = sensor
    parts["sensor"] = sensor
    engine.add_component(Ticker())
    return engine, parts


async def run_live(engine: Garrison, parts: dict[str, Any]) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    if os.geteuid() != 0:
        log.warning(
            "not running as root: packet capture (port scans) and firewall blocking need root "
            "or CAP_NET_RAW/CAP_NET_ADMIN; the rest keeps running"
        )
    try:
        await engine.run()
    finally:
        parts["log"].close()
        store = parts.get("store")
        if store is not None:
            store.close()
