"""Frame decoding for every supported link type, IPv6 extension headers, and bad input."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from garrison.observations import SYN, TCP, UDP
from garrison.sensors.decode import DecodeStats, decoder_for

SRC4, DST4 = "203.0.113.50", "198.51.100.1"
SRC6, DST6 = "2001:db8:2::50", "2001:db8:1::1"


def ipv4_udp(payload: bytes = b"hello") -> bytes:
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, UDP, 0,
                     ipaddress.IPv4Address(SRC4).packed, ipaddress.IPv4Address(DST4).packed)
    return ip + udp


def ipv6_tcp_with_ext() -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, SYN, 1024, 0, 0)
    hop_by_hop = bytes([TCP, 0]) + b"\x01\x04\x00\x00\x00\x00"  # 8 bytes, PadN
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(hop_by_hop) + len(tcp), 0, 64,
                     ipaddress.IPv6Address(SRC6).packed, ipaddress.IPv6Address(DST6).packed)
    return ip + hop_by_hop + tcp


@pytest.mark.parametrize(
    ("linktype", "header"),
    [
        (1, b"\x00" * 12 + b"\x08\x00"),  # Ethernet
        (1, b"\x00" * 12 + b"\x81\x00\x00\x05\x08\x00"),  # Ethernet + VLAN tag
        (113, b"\x00" * 14 + b"\x08\x00"),  # Linux cooked
        (276, b"\x08\x00" + b"\x00" * 18),  # Linux cooked v2
        (101, b""),  # raw IP
        (0, b"\x02\x00\x00\x00"),  # BSD loopback
    ],
)
def test_link_types(linktype: int, header: bytes) -> None:
    pkt = decoder_for(linktype)(12.5, header + ipv4_udp())
    assert pkt is not None
    assert (pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport) == (SRC4, DST4, UDP, 40000, 53)
    assert pkt.payload == b"hello" and pkt.payload_len == 5 and pkt.ts == 12.5


def test_ipv6_extension_headers_are_walked() -> None:
    pkt = decoder_for(101)(0.0, ipv6_tcp_with_ext())
    assert pkt is not None
    assert (pkt.src, pkt.dst, pkt.proto, pkt.dport, pkt.flags) == (SRC6, DST6, TCP, 443, SYN)
    assert pkt.version == 6


def test_ethernet_padding_is_not_payload() -> None:
    frame = b"\x00" * 12 + b"\x08\x00" + ipv4_udp(b"") + b"\x00" * 18  # padded to 60 bytes
    pkt = decoder_for(1)(0.0, frame)
    assert pkt is not None and pkt.payload == b"" and pkt.payload_len == 0


def test_unsupported_link_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unsupported link type 147"):
        decoder_for(147)


def test_fuzzed_frames_never_raise_and_are_all_accounted_for() -> None:
    rnd = random.Random(1)
    stats = DecodeStats()
    decoders = [decoder_for(lt, stats) for lt in (1, 113, 276, 101, 0)]
    good = [b"\x00" * 12 + b"\x08\x00" + ipv4_udp(), ipv6_tcp_with_ext()]
    decoded = 0
    for i in range(20000):
        base = bytearray(rnd.choice(good))
        for _ in range(rnd.randint(1, 6)):  # flip bytes, cut, or extend
            op = rnd.random()
            if op < 0.6 and base:
                base[rnd.randrange(len(base))] = rnd.getrandbits(8)
            elif op < 0.8:
                del base[rnd.randrange(len(base) + 1):]
            else:
                base += bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 40)))
        if decoders[i % 5](0.0, bytes(base)) is not None:
            decoded += 1
    assert stats.frames == 20000
    assert stats.packets == decoded
    assert decoded + sum(stats.dropped.values()) == 20000
