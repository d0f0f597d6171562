"""Reading pcap and pcapng files into the same packet stream as live capture.

:func:`read_packets` yields :class:`~garrison.observations.Packet` records; :func:`read_frames`
yields the raw ``(linktype, ts, frame)`` triples (used by the benchmark's bare loop). Both
formats, both byte orders, micro- and nanosecond pcap, per-interface link types and timestamp
resolutions in pcapng. A truncated last record ends the stream quietly (it is what a capture
killed mid-write looks like) and is counted.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

from garrison.observations import Packet
from garrison.sensors.decode import Decoder, DecodeStats, decoder_for

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class CaptureFormatError(ValueError):
    """The file is not a pcap or pcapng capture, or its header is damaged."""


def read_frames(
    path: str | Path, stats: DecodeStats | None = None
) -> Iterator[tuple[int, float, bytes]]:
    """Yield ``(linktype, timestamp_seconds, frame_bytes)`` for every record in the file."""
    with open(path, "rb") as fh:
        try:
            buf: bytes | mmap.mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            buf = b""
        try:
            head = bytes(buf[:4])
            if head in PCAP_MAGICS:
                yield from _pcap_frames(buf, head, stats)
            elif head == PCAPNG_SHB:
                yield from _pcapng_frames(buf, stats)
            else:
                raise CaptureFormatError(
                    f"{path}: not a pcap or pcapng file (magic {head.hex() or 'empty'})"
                )
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()


def _pcap_frames(
    buf: bytes | mmap.mmap, magic: bytes, stats: DecodeStats | None
) -> Iterator[tuple[int, float, bytes]]:
    endian, tps = PCAP_MAGICS[magic]  # timestamp ticks per second
    if len(buf) < 24:
        raise CaptureFormatError("pcap file header truncated")
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII").unpack_from
    off, end = 24, len(buf)
    while off + 16 <= end:
        sec, frac, incl, _orig = rec(buf, off)
        off += 16
        if off + incl > end:
            if stats is not None:
                stats.drop("truncated-record")
            return
        # Integer ticks then one division: the same float as pcapng gives for the same time.
        yield linktype, (sec * tps + frac) / tps, buf[off:off + incl]
        off += incl


def _pcapng_frames(
    buf: bytes | mmap.mmap, stats: DecodeStats | None
) -> Iterator[tuple[int, float, bytes]]:
    off, end = 0, len(buf)
    endian = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, ticks per second, snaplen)
    while off + 12 <= end:
        btype_raw = bytes(buf[off:off + 4])
        if btype_raw == PCAPNG_SHB:
            bom = bytes(buf[off + 8:off + 12])
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        btype, blen = struct.unpack_from(endian + "II", buf, off)
        if blen < 12 or blen % 4 or off + blen > end:
            if stats is not None:
                stats.drop("truncated-block")
            return
        body = off + 8
        if btype == 1:  # Interface Description Block
            linktype, snaplen = struct.unpack_from(endian + "HxxI", buf, body)
            tick = _if_tsresol(buf, body + 8, off + blen - 4, endian)
            interfaces.append((linktype, tick, snaplen))
        elif btype == 6:  # Enhanced Packet Block
            ifid, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", buf, body)
            if ifid < len(interfaces) and body + 20 + cap <= off + blen:
                lt, tick, _ = interfaces[ifid]
                yield lt, ((hi << 32) | lo) / tick, buf[body + 20:body + 20 + cap]
            elif stats is not None:
                stats.drop("bad-epb")
        elif btype == 3 and interfaces:  # Simple Packet Block
            orig = struct.unpack_from(endian + "I", buf, body)[0]
            lt, _, snap = interfaces[0]
            cap = min(orig, snap or orig, blen - 16)
            yield lt, 0.0, buf[body + 4:body + 4 + cap]
        off += blen


def _pcap_packets(path: str | Path, magic: bytes, st: DecodeStats) -> Iterator[Packet]:
    """Classic pcap: records read and decoded in one loop (the replay hot path; the same
    records and decoder as :func:`read_frames`, minus a generator layer per packet)."""
    endian, tps = PCAP_MAGICS[magic]
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise CaptureFormatError(f"{path}: pcap file header truncated") from None
        try:
            if len(buf) < 24:
                raise CaptureFormatError(f"{path}: pcap file header truncated")
            linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0x0FFFFFFF
            try:
                dec = decoder_for(linktype, st)
            except ValueError:
                raise CaptureFormatError(f"{path}: unsupported link type {linktype}") from None
            rec = struct.Struct(endian + "IIII").unpack_from
            off, end = 24, len(buf)
            while off + 16 <= end:
                sec, frac, incl, _orig = rec(buf, off)
                off += 16
                if off + incl > end:
                    st.drop("truncated-record")
                    return
                pkt = dec((sec * tps + frac) / tps, buf[off:off + incl])
                off += incl
                if pkt is not None:
                    yield pkt
        finally:
            buf.close()


def _if_tsresol(buf: bytes | mmap.mmap, opt: int, end: int, endian: str) -> int:
    """Timestamp ticks per second from an IDB's if_tsresol option (default microseconds)."""
    while opt + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, opt)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = buf[opt + 4]
            return int(2 ** (v & 0x7F) if v & 0x80 else 10**v)
        opt += 4 + ((length + 3) & ~3)
    return 1_000_000


def read_packets(path: str | Path, stats: DecodeStats | None = None) -> Iterator[Packet]:
    """Yield every IP packet in a pcap/pcapng file as a :class:`Packet`."""
    st = stats if stats is not None else DecodeStats()
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in PCAP_MAGICS:
        yield from _pcap_packets(path, head, st)
        return
    decoders: dict[int, Decoder] = {}
    for linktype, ts, frame in read_frames(path, st):
        dec = decoders.get(linktype)
        if dec is None:
            try:
                dec = decoders[linktype] = decoder_for(linktype, st)
            except ValueError:
                st.drop(f"linktype-{linktype}")
                continue
        pkt = dec(ts, frame)
        if pkt is not None:
            yield pkt
