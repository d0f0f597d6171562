"""Who is asking: the client address, its rate-limit group and its travel group.

The address comes from the socket. A forwarding header is believed only when the socket peer is
a trusted proxy; then the header is read right to left, skipping trusted proxies, and the first
address that is not one is the client. Whatever a client writes into ``X-Forwarded-For`` without
a trusted proxy in front is ignored, so rotating it gains nothing and cannot frame anyone.

IPv6 clients are grouped by prefix (default /64: one subscriber gets a whole /64, so per-address
limits would be free to evade); IPv4 by /32.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from strings like ``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"2001:db8::/32"``."""
    if isinstance(items, str):
        items = [items]
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f"expected an address or CIDR, got {item!r}") from None
    return tuple(nets)


def parse_ip(text: str | None) -> IPAddress | None:
    """An address from a header item (``1.2.3.4``, ``[2001:db8::1]:443``, ``1.2.3.4:80``)."""
    if not text:
        return None
    t = text.strip().strip('"')
    if t.startswith("["):
        t = t[1:].split("]", 1)[0]
    elif t.count(":") == 1:
        t = t.split(":", 1)[0]
    t = t.split("%", 1)[0]
    # inet_pton is strict and runs in C; ipaddress' own parser is ten times slower.
    try:
        ip: IPAddress = ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, t))
    except OSError:
        try:
            ip = ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, t))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in(ip: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


_PEERS = 4096
"""Socket peers :meth:`AddressPolicy.client` remembers parsed (cleared when full): behind a
proxy every request comes from one or a few, so each new client behind it costs one address
to parse and check instead of two."""


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """How to find and group the client address. Prefix lengths in bits."""

    trusted_proxies: tuple[IPNetwork, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    travel_ipv4_prefix: int = 24
    travel_ipv6_prefix: int = 64
    _peers: dict[str, tuple[IPAddress | None, bool]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)
    """Socket peers parsed, with whether each is a trusted proxy (see :data:`_PEERS`)."""

    def __post_init__(self) -> None:
        if not (0 < self.ipv4_prefix <= 32 and 0 < self.travel_ipv4_prefix <= 32):
            raise ValueError("IPv4 prefixes must be in 1..32")
        if not (0 < self.ipv6_prefix <= 128 and 0 < self.travel_ipv6_prefix <= 128):
            raise ValueError("IPv6 prefixes must be in 1..128")

    def client(self, peer: str | None, header: str | None) -> IPAddress | None:
        """The client address given the socket peer and the forwarding header value."""
        known = self._peers.get(peer) if peer is not None else None
        if known is None:
            ip = parse_ip(peer)
            known = (ip, ip is not None and _in(ip, self.trusted_proxies))
            if peer is not None:
                if len(self._peers) >= _PEERS:
                    self._peers.clear()
                self._peers[peer] = known
        ip, trusted = known
        if ip is None or not header or not trusted:
            return ip
        for item in reversed(_header_items(header, self.forwarded_header)):
            hop = parse_ip(item)
            if hop is None:
                return ip  # a malformed hop: stop believing anything to its left
            if not _in(hop, self.trusted_proxies):
                return hop
            ip = hop
        return ip

    def group(self, ip: IPAddress) -> str:
        """The rate-limit and scoring key of ``ip`` (its /32 or /64 by default)."""
        return _prefix(ip, self.ipv4_prefix if ip.version == 4 else self.ipv6_prefix)

    def travel_group(self, ip: IPAddress, tolerance: str) -> str:
        """Where a session may move without being "impossible travel"."""
        if tolerance == "exact":
            return str(ip)
        bits = self.travel_ipv4_prefix if ip.version == 4 else self.travel_ipv6_prefix
        return _prefix(ip, bits)


def _prefix(ip: IPAddress, bits: int) -> str:
    """``ip`` masked to ``bits`` as ``"net/bits"`` (or the bare address for a full prefix)."""
    width = ip.max_prefixlen
    if bits >= width:
        return str(ip)
    mask = ((1 << bits) - 1) << (width - bits)
    net = type(ip)(int(ip) & mask)
    return f"{net}/{bits}"


def _header_items(value: str, name: str) -> list[str]:
    if name.lower() == "forwarded":  # RFC 7239: for=1.2.3.4;proto=https, for="[2001:db8::1]"
        out = []
        for element in value.split(","):
            for pair in element.split(";"):
                k, _, v = pair.strip().partition("=")
                if k.lower() == "for":
                    out.append(v)
        return out
    return [v for v in (p.strip() for p in value.split(",")) if v]
