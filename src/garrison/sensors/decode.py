"""Frame decoding: link-layer frames -> :class:`~garrison.observations.Packet`.

Live capture and pcap replay both go through :func:`decoder_for`, so they produce exactly the
same observation stream. Malformed or truncated frames are dropped and counted in
:class:`DecodeStats`, never raised.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from socket import AF_INET6, inet_ntop
from typing import Final

from garrison.observations import ICMP, ICMPV6, TCP, UDP, Packet

# Link types (pcap LINKTYPE_* numbers).
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

_V6_EXT: Final = frozenset({0, 43, 60, 51, 135, 139, 140})  # hop-by-hop, routing, dstopts, ...
_V6_FRAG: Final = 44

_tcp_hdr = struct.Struct("!HHIIBBH").unpack_from
# Ethernet + IPv4 without options + TCP in one call: the common case at line rate.
_eth_ip4_tcp = struct.Struct("!12xHBxHxxHxBxx4s4sHHxxxxxxxxBBH").unpack_from
_udp_hdr = struct.Struct("!HHH").unpack_from
_u16 = struct.Struct("!H").unpack_from


@dataclass
class DecodeStats:
    """Counts of frames seen and dropped, by reason."""

    frames: int = 0
    packets: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


Decoder = Callable[[float, bytes], "Packet | None"]


def _ipv4_str(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def decoder_for(linktype: int, stats: DecodeStats | None = None, ifindex: int = 0) -> Decoder:
    """A function decoding frames of ``linktype`` into packets (None for non-IP or malformed)."""
    st = stats if stats is not None else DecodeStats()
    drop = st.drop
    # Address strings are built often for the same few addresses; a small cache saves time.
    cache4: dict[bytes, str] = {}
    cache6: dict[bytes, str] = {}

    def addr4(b: bytes) -> str:
        s = cache4.get(b)
        if s is None:
            if len(cache4) > 65536:
                cache4.clear()
            s = cache4[b] = _ipv4_str(b)
        return s

    def addr6(b: bytes) -> str:
        s = cache6.get(b)
        if s is None:
            if len(cache6) > 65536:
                cache6.clear()
            s = cache6[b] = inet_ntop(AF_INET6, b)
        return s

    def transport(
        ts: float, frame: bytes, off: int, proto: int, src: str, dst: str,
        length: int, l4len: int, version: int,
    ) -> Packet | None:
        # l4len: transport bytes as sent (from the IP header), frame may be shorter (snaplen).
        if proto == TCP:
            if len(frame) < off + 20:
                drop("truncated-tcp")
                return None
            sport, dport, _seq, _ack, doff, flags, window = _tcp_hdr(frame, off)
            hl = (doff >> 4) * 4
            if hl < 20:
                drop("bad-tcp-offset")
                return None
            start = off + hl
            return Packet(ts, src, dst, TCP, sport, dport, flags, length,
                          max(l4len - hl, 0), window, frame[start:off + l4len], version, ifindex)
        if proto == UDP:
            if len(frame) < off + 8:
                drop("truncated-udp")
                return None
            sport, dport, ulen = _udp_hdr(frame, off)
            if ulen < 8:
                drop("bad-udp-length")
                return None
            end = off + min(ulen, l4len)
            return Packet(ts, src, dst, UDP, sport, dport, 0, length, ulen - 8, 0,
                          frame[off + 8:end], version, ifindex)
        if proto in (ICMP, ICMPV6):
            if len(frame) < off + 4:
                drop("truncated-icmp")
                return None
            return Packet(ts, src, dst, proto, frame[off], frame[off + 1], 0, length,
                          max(l4len - 8, 0), 0, frame[off + 8:off + l4len], version, ifindex)
        drop("other-protocol")
        return None

    def ipv4(ts: float, frame: bytes, off: int) -> Packet | None:
        if len(frame) < off + 20:
            drop("truncated-ipv4")
            return None
        vihl = frame[off]
        ihl = (vihl & 15) * 4
        if vihl >> 4 != 4 or ihl < 20:
            drop("bad-ipv4-header")
            return None
        total = _u16(frame, off + 2)[0]
        if total < ihl:
            drop("bad-ipv4-length")
            return None
        if _u16(frame, off + 6)[0] & 0x1FFF:
            # Non-first fragment: no transport header to read.
            drop("ipv4-fragment")
            return None
        return transport(ts, frame, off + ihl, frame[off + 9], addr4(frame[off + 12:off + 16]),
                         addr4(frame[off + 16:off + 20]), total, total - ihl, 4)

    def ipv6(ts: float, frame: bytes, off: int) -> Packet | None:
        if len(frame) < off + 40:
            drop("truncated-ipv6")
            return None
        if frame[off] >> 4 != 6:
            drop("bad-ipv6-header")
            return None
        plen = _u16(frame, off + 4)[0]
        nxt = frame[off + 6]
        src = addr6(frame[off + 8:off + 24])
        dst = addr6(frame[off + 24:off + 40])
        p = off + 40
        remaining = plen
        for _ in range(8):  # bounded walk over extension headers
            if nxt in _V6_EXT:
                if len(frame) < p + 2:
                    drop("truncated-ipv6-ext")
                    return None
                hl = (frame[p + 1] + 1) * (4 if nxt == 51 else 8)
                nxt = frame[p]
                p += hl
                remaining -= hl
            elif nxt == _V6_FRAG:
                if len(frame) < p + 8:
                    drop("truncated-ipv6-ext")
                    return None
                if _u16(frame, p + 2)[0] & 0xFFF8:
                    drop("ipv6-fragment")
                    return None
                nxt = frame[p]
                p += 8
                remaining -= 8
            else:
                break
        if remaining < 0:
            drop("bad-ipv6-length")
            return None
        return transport(ts, frame, p, nxt, src, dst, plen + 40, remaining, 6)

    def by_ethertype(ts: float, frame: bytes, etype: int, off: int) -> Packet | None:
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:  # VLAN tags
            etype = _u16(frame, off + 2)[0]
            off += 4
        if etype == 0x0800:
            return ipv4(ts, frame, off)
        if etype == 0x86DD:
            return ipv6(ts, frame, off)
        drop("not-ip")
        return None

    def by_version(ts: float, frame: bytes, off: int) -> Packet | None:
        if len(frame) <= off:
            drop("empty")
            return None
        v = frame[off] >> 4
        if v == 4:
            return ipv4(ts, frame, off)
        if v == 6:
            return ipv6(ts, frame, off)
        drop("not-ip")
        return None

    def ethernet(ts: float, frame: bytes) -> Packet | None:
        st.frames += 1
        if len(frame) >= 54:
            etype, vihl, total, frag, proto, s, d, sport, dport, doff, flags, window = (
                _eth_ip4_tcp(frame)
            )
            if etype == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x1FFF:
                hl = (doff >> 4) * 4
                if 20 <= hl <= total - 20:
                    src = cache4.get(s) or addr4(s)
                    dst = cache4.get(d) or addr4(d)
                    st.packets += 1
                    return Packet(ts, src, dst, TCP, sport, dport, flags, total, total - 20 - hl,
                                  window, frame[34 + hl:14 + total], 4, ifindex)
        if len(frame) < 14:
            drop("truncated-ethernet")
            return None
        pkt = by_ethertype(ts, frame, _u16(frame, 12)[0], 14)
        if pkt is not None:
            st.packets += 1
        return pkt

    def counted(header: int, ethertype_at: int | None, name: str) -> Decoder:
        """A decoder for a link layer of ``header`` bytes whose ethertype sits at offset
        ``ethertype_at`` (None: the IP version nibble tells IPv4 from IPv6)."""

        def decode(ts: float, frame: bytes) -> Packet | None:
            st.frames += 1
            if len(frame) < header:
                drop(f"truncated-{name}")
                return None
            if ethertype_at is None:
                pkt = by_version(ts, frame, header)
            else:
                pkt = by_ethertype(ts, frame, _u16(frame, ethertype_at)[0], header)
            if pkt is not None:
                st.packets += 1
            return pkt

        return decode

    sll, sll2 = counted(16, 14, "sll"), counted(20, 0, "sll2")
    raw, null = counted(0, None, "raw"), counted(4, None, "null")

    table: dict[int, Decoder] = {
        LINKTYPE_ETHERNET: ethernet,
        LINKTYPE_LINUX_SLL: sll,
        LINKTYPE_LINUX_SLL2: sll2,
        LINKTYPE_RAW: raw,
        14: raw,  # LINKTYPE_RAW on some BSDs
        LINKTYPE_IPV4: raw,
        LINKTYPE_IPV6: raw,
        LINKTYPE_NULL: null,
        LINKTYPE_LOOP: null,
    }
    try:
        return table[linktype]
    except KeyError:
        raise ValueError(f"unsupported link type {linktype}") from None
