"""Live packet capture with AF_PACKET and an in-kernel BPF filter.

One ``SOCK_RAW`` packet socket per configured interface (or one for all interfaces), with the
filter from :mod:`garrison.sensors.bpf` attached so that only the frames the detectors need are
copied to Python. Frames go through the same decoder as pcap replay. Kernel drop counts are
read with ``PACKET_STATISTICS`` and reported in :attr:`PacketSensor.stats` and in periodic
``sensor-status`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from garrison.events import SENSOR_STATUS, Event, Severity
from garrison.sensors import bpf
from garrison.sensors.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    Decoder,
    DecodeStats,
    decoder_for,
)
from garrison.sensors.ring import Ring

if TYPE_CHECKING:
    from garrison.engine import Garrison

log = logging.getLogger("garrison.sensors.live")

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_STATISTICS: Final = 6
PACKET_OUTGOING: Final = 4
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33
ARPHRD_LOOPBACK: Final = 772
BATCH: Final = 2048  # frames read per wake-up before yielding to the loop


class CaptureUnavailable(RuntimeError):
    """Live capture cannot run here (no root / CAP_NET_RAW, or no such interface)."""


@dataclass
class CaptureStats:
    """What the sensor saw: frames received, packets decoded, kernel drops."""

    received: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    decode: DecodeStats = field(default_factory=DecodeStats)


def open_socket(interface: str | None, filter_kind: str, snaplen: int) -> socket.socket:
    """An AF_PACKET socket on ``interface`` (None: all) with the BPF filter attached."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise CaptureUnavailable(
            "packet capture needs root or CAP_NET_RAW: not watching packets (no port-scan "
            "detection from live traffic); everything else keeps running"
        ) from None
    try:
        fprog, keep = bpf.sock_fprog(bpf.program(filter_kind, snaplen))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        del keep
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 * 1024 * 1024)
        if interface:
            try:
                sock.bind((interface, ETH_P_ALL))
            except OSError as exc:
                raise CaptureUnavailable(
                    f"cannot capture on interface {interface!r}: {exc}"
                ) from None
        # Frames queued before the filter was attached bypassed it: drain them.
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(65535)
    except BaseException:
        sock.close()
        raise
    return sock


def read_kernel_stats(sock: socket.socket) -> tuple[int, int]:
    """(packets, drops) since the last call, from PACKET_STATISTICS (which resets on read)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)  # tpacket_stats(_v3)
    packets, drops = struct.unpack_from("II", raw)
    return packets, drops


class PacketSensor:
    """The live packet sensor component (see module docstring)."""

    name = "packets"

    def __init__(
        self, interfaces: list[str] | None = None, filter_kind: str = "scan",
        snaplen: int = 256, stats_interval: float = 30.0, ring_blocks: int = 64,
    ) -> None:
        self.interfaces = list(interfaces or [])
        self.ring_blocks = ring_blocks
        self._rings: dict[int, Ring] = {}
        self.filter_kind = filter_kind
        self.snaplen = snaplen
        self.stats_interval = stats_interval
        self.stats = CaptureStats()
        self._socks: list[socket.socket] = []
        self._decoders: dict[int, Decoder] = {}
        self._engine: Garrison | None = None
        self._task: asyncio.Task[None] | None = None

    def _decoder(self, hatype: int) -> Decoder:
        dec = self._decoders.get(hatype)
        if dec is None:
            linktype = LINKTYPE_ETHERNET if hatype in (1, ARPHRD_LOOPBACK) else LINKTYPE_RAW
            dec = self._decoders[hatype] = decoder_for(linktype, self.stats.decode)
        return dec

    async def start(self, engine: Garrison) -> None:
        self._engine = engine
        ifaces: list[str | None] = list(self.interfaces) or [None]
        for iface in ifaces:
            self._socks.append(open_socket(iface, self.filter_kind, self.snaplen))
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            if self.ring_blocks:
                try:
                    self._rings[sock.fileno()] = Ring(sock, blocks=self.ring_blocks)
                except OSError as exc:
                    log.warning("no TPACKET_V3 ring (%s): reading frame by frame", exc)
            reader = self._ring_readable if sock.fileno() in self._rings else self._readable
            loop.add_reader(sock.fileno(), reader, sock)
        self._task = asyncio.create_task(self._report())
        where = ", ".join(self.interfaces) or "all interfaces"
        log.info("capturing on %s with the %r filter", where, self.filter_kind)

    def _readable(self, sock: socket.socket) -> None:
        engine = self._engine
        assert engine is not None
        feed = engine.feed
        stats = self.stats
        now = time.time()
        for _ in range(BATCH):
            try:
                frame, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("capture read failed: %s", exc)
                return
            stats.received += 1
            hatype = addr[3]
            if addr[2] == PACKET_OUTGOING and hatype == ARPHRD_LOOPBACK:
                continue  # loopback shows each packet twice; keep the incoming copy
            pkt = self._decoder(hatype)(now, frame)
            if pkt is not None:
                feed(pkt)

    def _ring_readable(self, sock: socket.socket) -> None:
        engine = self._engine
        assert engine is not None
        feed = engine.feed
        stats = self.stats
        decoders = self._decoders
        for ts, hatype, pkttype, frame in self._rings[sock.fileno()].frames():
            stats.received += 1
            if pkttype == PACKET_OUTGOING and hatype == ARPHRD_LOOPBACK:
                continue
            dec = decoders.get(hatype) or self._decoder(hatype)
            pkt = dec(ts, frame)
            if pkt is not None:
                feed(pkt)

    def poll_kernel_stats(self) -> None:
        """Add the kernel's packet and drop counts since the last poll to :attr:`stats`."""
        for sock in self._socks:
            try:
                packets, drops = read_kernel_stats(sock)
            except OSError:
                continue
            self.stats.kernel_packets += packets
            self.stats.kernel_drops += drops

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "sensor": self.name, "filter": self.filter_kind,
            "interfaces": self.interfaces or ["all"], "received": s.received,
            "decoded": s.decode.packets, "kernel_packets": s.kernel_packets,
            "kernel_drops": s.kernel_drops, "malformed": dict(s.decode.dropped),
        }

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            self.poll_kernel_stats()
            if self._engine is not None:
                self._engine.emit(Event(
                    SENSOR_STATUS, time.time(), Severity.INFO, detail=self.status(),
                    message=f"packet sensor: {self.stats.received} frames, "
                            f"{self.stats.kernel_drops} dropped by the kernel",
                ))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.poll_kernel_stats()
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.remove_reader(sock.fileno())
            ring = self._rings.pop(sock.fileno(), None)
            if ring is not None:
                ring.close()
            sock.close()
        self._socks.clear()
