"""IP blocklists from files: plain addresses and CIDRs, FireHOL ``.netset``, Spamhaus DROP.

Each list becomes, per address family, one sorted array of merged ``[start, end]`` integer
intervals; a lookup is one :func:`bisect.bisect_right` (O(log n)), so a million entries cost a few
microseconds per lookup and two integers per merged range.

Accepted line forms (anything after ``#`` or ``;`` is a comment; blank lines are skipped):
``203.0.113.7``, ``203.0.113.0/24``, ``2001:db8::/32`` (plain and FireHOL), ``1.10.16.0/20 ;
SBL256894`` (Spamhaus DROP text), ``{"cidr": "1.10.16.0/20", "sblid": ...}`` (Spamhaus DROP
JSON lines). A line that parses as none of these is counted in :attr:`Blocklist.rejected`.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_MAX_LINE = 512  # bytes; longer lines are not addresses


def _parse_entry(text: str) -> tuple[int, int, int] | None:
    """``(family 4|6, start, end)`` of an address or CIDR (host bits ignored), or None."""
    addr, _, plen = text.partition("/")
    try:
        if ":" in addr:
            packed = socket.inet_pton(socket.AF_INET6, addr)
            bits, family = 128, 6
        else:
            packed = socket.inet_pton(socket.AF_INET, addr)
            bits, family = 32, 4
    except (OSError, ValueError):
        return None
    prefix = bits
    if plen:
        if not plen.isdigit() or len(plen) > 3:
            return None
        prefix = int(plen)
        if prefix > bits:
            return None
    value = int.from_bytes(packed, "big")
    host = (1 << (bits - prefix)) - 1
    start = value & ~host
    return family, start, start | host


def _entry_of_line(line: str) -> str | None:
    line = line.strip()
    if not line or line[0] in "#;":
        return None
    if line[0] == "{":
        try:
            obj = json.loads(line)
        except ValueError:
            return ""
        cidr = obj.get("cidr") if isinstance(obj, dict) else None
        return cidr if isinstance(cidr, str) else None
    for sep in ("#", ";"):
        line = line.split(sep, 1)[0]
    return line.strip().split()[0] if line.strip() else ""


def _merge(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ranges.sort()
    starts: list[int] = []
    ends: list[int] = []
    for s, e in ranges:
        if ends and s <= ends[-1] + 1:
            if e > ends[-1]:
                ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
    return starts, ends


@dataclass
class Blocklist:
    """One named list. Build with :meth:`from_lines` or :meth:`from_file`."""

    name: str
    entries: int = 0
    rejected: int = 0
    _v4: tuple[array[int], array[int]] = field(default_factory=lambda: (array("Q"), array("Q")))
    _v6: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))

    @classmethod
    def from_lines(cls, name: str, lines: Iterable[str]) -> Blocklist:
        """Parse ``lines`` (see the module docstring for the forms accepted)."""
        bl = cls(name)
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for raw in lines:
            if len(raw) > _MAX_LINE:
                bl.rejected += 1
                continue
            text = _entry_of_line(raw)
            if text is None:
                continue
            parsed = _parse_entry(text) if text else None
            if parsed is None:
                bl.rejected += 1
                continue
            family, start, end = parsed
            (v4 if family == 4 else v6).append((start, end))
            bl.entries += 1
        s4, e4 = _merge(v4)
        bl._v4 = (array("Q", s4), array("Q", e4))
        bl._v6 = _merge(v6)
        return bl

    @classmethod
    def from_file(cls, path: str | Path) -> Blocklist:
        """Load a list file; its name is the file name without directory."""
        p = Path(path)
        with p.open(encoding="utf-8", errors="replace") as fh:
            return cls.from_lines(p.name, fh)

    @property
    def ranges(self) -> int:
        """Merged ranges held (IPv4 + IPv6)."""
        return len(self._v4[0]) + len(self._v6[0])

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, str):
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
        elif isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            addr = ip
        else:
            return False
        return self.contains(addr)

    def contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True if ``addr`` lies in any listed range."""
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        value = int(addr)
        starts, ends = self._v4 if addr.version == 4 else self._v6
        i = bisect_right(starts, value) - 1
        return i >= 0 and ends[i] >= value


class Blocklists:
    """Several lists; :meth:`match` names the lists an address is on."""

    def __init__(self, lists: Iterable[Blocklist] = ()) -> None:
        self.lists = list(lists)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Blocklists:
        return cls(Blocklist.from_file(p) for p in paths)

    def match(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
        """Names of the lists that hold ``addr`` (empty: not listed)."""
        return [bl.name for bl in self.lists if bl.contains(addr)]

    def __len__(self) -> int:
        return sum(bl.entries for bl in self.lists)
