"""Observations: the small immutable records sensors hand to detectors.

Each carries its own timestamp (seconds since the epoch, from the packet or request), so
detectors never read the wall clock and a replay gives the same detections every time.
"""

from __future__ import annotations

from typing import NamedTuple

# IP protocol numbers.
TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

# TCP flag bits.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80


class Packet(NamedTuple):
    """One decoded IPv4/IPv6 packet (a NamedTuple: cheap to build at line rate).

    For TCP and UDP, ``sport``/``dport`` are the ports. For ICMP/ICMPv6, ``sport`` is the ICMP
    type, ``dport`` the code, and ``payload`` the quoted original datagram (for unreachables).
    ``length`` is the IP packet length in bytes as sent (not truncated by the snap length);
    ``payload_len`` the transport payload length as sent; ``payload`` the captured bytes of it.
    """

    ts: float
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    flags: int
    length: int
    payload_len: int
    window: int
    payload: bytes
    version: int
    ifindex: int = 0


def transport_name(proto: int) -> str:
    """ECS ``network.transport`` name of an IP protocol number."""
    return {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "ipv6-icmp"}.get(proto, str(proto))
