"""Classic BPF programs for the live packet sensor, assembled here (no tcpdump needed).

The kernel runs the program on every frame and hands Python only what the detectors asked for:

* ``scan``: arriving TCP segments with SYN, FIN, RST or URG set or with no payload (NULL
  probes and unsolicited ACKs); the host's own TCP segments only when they carry SYN or RST
  (new flows and the answers to probes); all UDP, ICMP and ICMPv6 (port unreachables); IPv4
  and IPv6. Data segments and the host's own ACKs, the bulk of traffic, never leave the kernel.
* ``dns``: additionally TCP to or from port 53.
* ``all``: every IPv4 and IPv6 packet (for byte counting).

Frames of link types other than Ethernet/loopback (tun, ppp) are passed whole: the offsets
below assume an Ethernet header and the Python decoder handles the rest.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# Instruction classes and modes (linux/filter.h).
LD, LDX, ALU, JMP, RET, ST, MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x02, 0x07
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH, MEM, IMM = 0x20, 0x40, 0xA0, 0x60, 0x00
JEQ, JGT, JGE, JSET = 0x10, 0x20, 0x30, 0x40
ADD, SUB, AND, RSH = 0x00, 0x10, 0x50, 0x70
K, X = 0x00, 0x08
TAX = 0x00

SKF_AD_OFF: Final = -0x1000
SKF_AD_HATYPE: Final = 28
SKF_AD_PKTTYPE: Final = 4
PACKET_OUTGOING: Final = 4
ARPHRD_ETHER: Final = 1
ARPHRD_LOOPBACK: Final = 772

FILTERS: Final = ("scan", "dns", "all")


@dataclass(frozen=True)
class Insn:
    code: int
    k: int = 0
    jt: str | int = 0
    jf: str | int = 0


def _assemble(program: list[Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve string labels into relative jump offsets; labels are plain strings in the list."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = []
    def rel(i: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        off = labels[target] - i - 1
        if not 0 <= off <= 255:
            raise ValueError(f"jump to {target} out of range")
        return off

    for i, ins in enumerate(insns):
        k = ins.k & 0xFFFFFFFF
        if ins.code == JMP | 0x00:  # JA: offset in k
            k = labels[str(ins.jt)] - i - 1 if isinstance(ins.jt, str) else ins.k
            out.append((ins.code, 0, 0, k))
            continue
        out.append((ins.code, rel(i, ins.jt), rel(i, ins.jf), k))
    return out


def program(kind: str, snaplen: int = 256) -> list[tuple[int, int, int, int]]:
    """The filter ``kind`` (one of :data:`FILTERS`) as ``(code, jt, jf, k)`` instructions."""
    if kind not in FILTERS:
        raise ValueError(f"unknown packet filter {kind!r}: expected one of {FILTERS}")
    keep = Insn(RET | K, snaplen)
    p: list[Insn | str] = [
        Insn(LD | W | ABS, SKF_AD_OFF + SKF_AD_HATYPE),
        Insn(JMP | JEQ | K, ARPHRD_ETHER, "eth", 0),
        Insn(JMP | JEQ | K, ARPHRD_LOOPBACK, "eth", "accept"),
        "eth",
        Insn(LD | H | ABS, 12),
        Insn(JMP | JEQ | K, 0x0800, "v4", 0),
        Insn(JMP | JEQ | K, 0x86DD, "v6", "drop"),
        # ---- IPv4
        "v4",
    ]
    if kind == "all":
        p += [Insn(JMP, jt="accept")]
    else:
        p += [
            Insn(LD | H | ABS, 20),
            Insn(JMP | JSET | K, 0x1FFF, "drop", 0),  # non-first fragment
            Insn(LD | B | ABS, 23),
            Insn(JMP | JEQ | K, 17, "accept", 0),  # UDP
            Insn(JMP | JEQ | K, 1, "accept", 0),  # ICMP
            Insn(JMP | JEQ | K, 6, 0, "drop"),
            Insn(LDX | B | MSH, 14),  # X = IPv4 header length
        ]
        if kind == "dns":
            p += [
                Insn(LD | H | IND, 14),
                Insn(JMP | JEQ | K, 53, "accept", 0),
                Insn(LD | H | IND, 16),
                Insn(JMP | JEQ | K, 53, "accept", 0),
            ]
        p += [
            Insn(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
            Insn(JMP | JEQ | K, PACKET_OUTGOING, 0, "in4"),
            # The host's own segments matter only as answers (SYN+ACK, RST) or new flows (SYN).
            Insn(LD | B | IND, 14 + 13),
            Insn(JMP | JSET | K, 0x06, "accept", "drop"),
            "in4",
            Insn(LD | B | IND, 14 + 13),  # TCP flags
            Insn(JMP | JSET | K, 0x27, "accept", 0),  # FIN|SYN|RST|URG
            Insn(LD | B | IND, 14 + 12),  # data offset << 4
            Insn(ALU | AND | K, 0xF0),
            Insn(ALU | RSH | K, 2),
            Insn(ST, 0),  # M[0] = TCP header length
            Insn(LD | H | ABS, 16),  # IP total length
            Insn(ALU | SUB | X),  # A = total - IP header length
            Insn(MISC | TAX),
            Insn(LD | MEM, 0),
            Insn(JMP | JEQ | X, 0, "accept", "drop"),  # no payload iff equal
        ]
    p += ["v6"]
    if kind == "all":
        p += [Insn(JMP, jt="accept")]
    else:
        p += [
            Insn(LD | B | ABS, 20),  # next header
            Insn(JMP | JEQ | K, 17, "accept", 0),
            Insn(JMP | JEQ | K, 58, "accept", 0),
            Insn(JMP | JEQ | K, 6, "tcp6", "accept"),  # extension headers: let Python decide
            "tcp6",
        ]
        if kind == "dns":
            p += [
                Insn(LD | H | ABS, 54),
                Insn(JMP | JEQ | K, 53, "accept", 0),
                Insn(LD | H | ABS, 56),
                Insn(JMP | JEQ | K, 53, "accept", 0),
            ]
        p += [
            Insn(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
            Insn(JMP | JEQ | K, PACKET_OUTGOING, 0, "in6"),
            Insn(LD | B | ABS, 54 + 13),
            Insn(JMP | JSET | K, 0x06, "accept", "drop"),
            "in6",
            Insn(LD | B | ABS, 54 + 13),
            Insn(JMP | JSET | K, 0x27, "accept", 0),
            Insn(LD | B | ABS, 54 + 12),
            Insn(ALU | AND | K, 0xF0),
            Insn(ALU | RSH | K, 2),
            Insn(MISC | TAX),  # X = TCP header length
            Insn(LD | H | ABS, 18),  # IPv6 payload length
            Insn(JMP | JEQ | X, 0, "accept", "drop"),
        ]
    p += ["accept", keep, "drop", Insn(RET | K, 0)]
    return _assemble(p)


def union(kinds: Iterable[str]) -> str:
    """The narrowest filter that serves every requested kind."""
    ks = set(kinds) or {"scan"}
    unknown = ks - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown packet filter(s) {sorted(unknown)}: expected {FILTERS}")
    if "all" in ks:
        return "all"
    return "dns" if "dns" in ks else "scan"


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


def sock_fprog(insns: list[tuple[int, int, int, int]]) -> tuple[bytes, object]:
    """A ``struct sock_fprog`` for SO_ATTACH_FILTER, and the buffer it points to (keep it
    alive until setsockopt has returned)."""
    arr = (_SockFilter * len(insns))(*[_SockFilter(c, t, f, k) for c, t, f, k in insns])
    return struct.pack("HL", len(insns), ctypes.addressof(arr)), arr
