"""Strict address parsing and the ranges that are never judged or blocked.

Everything an outside party names (an event's actor, a CLI argument, a webhook field) goes
through :func:`parse_ip` before it is used: one canonical :mod:`ipaddress` object or a
:class:`ValueError` naming the value. No scope ids (``fe80::1%eth0``), no whitespace, no
prefixes; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_TEXT: Final = 45  # characters: the longest textual IPv6 address (with an IPv4 tail)

# Ranges that are never an outside actor worth blocking: loopback, RFC 1918, CGNAT (100.64/10,
# neither private nor global, see the field notes), link-local, ULA, multicast, unspecified,
# reserved, broadcast, and the IPv6 forms that embed them. The documentation ranges
# (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32) are deliberately absent: they never
# appear on the internet, and they are what labs and Garrison's own tests use as "outside".
SPECIAL_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b:1::/48",
    )
)


def parse_ip(value: object) -> IPAddress:
    """The address ``value`` names, strictly; :class:`ValueError` otherwise."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr: IPAddress = value
    else:
        if not isinstance(value, str):
            raise ValueError(f"expected an IP address string, got {type(value).__name__}")
        if not value or len(value) > MAX_TEXT:
            raise ValueError(f"not an IP address: {value[:64]!r}")
        if "%" in value or "/" in value or value.strip() != value:
            raise ValueError(f"not a plain IP address: {value!r}")
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise ValueError(f"scoped IPv6 addresses are not accepted: {str(addr)!r}")
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
    return addr


# The same ranges as integer intervals per family: a membership test without ipaddress objects.
_SPECIAL_RANGES: Final = {
    v: tuple((int(n.network_address), int(n.broadcast_address))
             for n in SPECIAL_NETWORKS if n.version == v)
    for v in (4, 6)
}


def is_special(addr: IPAddress) -> bool:
    """True for loopback, private, CGNAT, link-local, multicast and reserved addresses."""
    value = int(addr)
    return any(lo <= value <= hi for lo, hi in _SPECIAL_RANGES[addr.version])


def in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """True if ``addr`` lies in one of ``networks`` (of its own family)."""
    return any(addr.version == n.version and addr in n for n in networks)
