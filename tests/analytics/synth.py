"""Builders of synthetic observations for the network-analytics tests."""

from __future__ import annotations

import struct
from pathlib import Path

from garrison.observations import ACK, FIN, SYN, TCP, UDP, Packet

DATA = Path(__file__).resolve().parent.parent / "data" / "analytics"
HOME = "198.51.100.1"
HOME_NET = ["198.51.100.1/32", "2001:db8:1::/64"]
OUTSIDE = "203.0.113.50"


def dns_name(name: str | bytes) -> bytes:
    raw = name.encode("latin-1") if isinstance(name, str) else name
    out = b""
    for label in raw.split(b".") if raw else []:
        out += bytes([len(label)]) + label
    return out + b"\0"


def dns_query(name: str | bytes, qtype: int = 1, ident: int = 0x1234) -> bytes:
    """A standard query with one question (class IN)."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack(
        "!HH", qtype, 1
    )


def dns_response(name: str, qtype: int = 1, rdata: bytes = b"\xc0\x00\x02\x0a") -> bytes:
    """A response with the question and one compressed answer pointing at it."""
    head = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    question = dns_name(name) + struct.pack("!HH", qtype, 1)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    return head + question + answer


def udp(ts: float, src: str, dst: str, sport: int, dport: int, payload: bytes = b"",
        payload_len: int | None = None) -> Packet:
    n = len(payload) if payload_len is None else payload_len
    version = 6 if ":" in src else 4
    return Packet(ts, src, dst, UDP, sport, dport, 0, n + 28, n, 0, payload, version)


def tcp(ts: float, src: str, dst: str, sport: int, dport: int, flags: int = ACK,
        payload_len: int = 0) -> Packet:
    version = 6 if ":" in src else 4
    return Packet(ts, src, dst, TCP, sport, dport, flags, payload_len + 52, payload_len, 64240,
                  b"", version)


def tcp_session(ts: float, src: str, dst: str, sport: int, dport: int, up: int = 200,
                down: int = 600, answered: bool = True) -> list[Packet]:
    """A short complete TCP connection opened by ``src``: handshake, one request of ``up``
    bytes, one answer of ``down`` bytes, FIN both ways."""
    if not answered:
        return [tcp(ts, src, dst, sport, dport, SYN)]
    return [
        tcp(ts, src, dst, sport, dport, SYN),
        tcp(ts + 0.001, dst, src, dport, sport, SYN | ACK),
        tcp(ts + 0.002, src, dst, sport, dport, ACK),
        tcp(ts + 0.003, src, dst, sport, dport, ACK, up),
        tcp(ts + 0.004, dst, src, dport, sport, ACK, down),
        tcp(ts + 0.005, src, dst, sport, dport, FIN | ACK),
        tcp(ts + 0.006, dst, src, dport, sport, FIN | ACK),
    ]
