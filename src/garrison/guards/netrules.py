"""Which addresses an outbound request may reach, and how hosts are spelled.

The table below is Garrison's own copy of the IANA IPv4 and IPv6 Special-Purpose Address
Registries (plus carrier-grade NAT and cloud metadata addresses), so the decision does not rest
on :attr:`ipaddress.IPv4Address.is_global` alone (which was wrong for several ranges before
CVE-2024-4032 and says nothing about metadata services). IPv6 forms that embed an IPv4 address
(IPv4-mapped, IPv4-compatible, NAT64 well-known and local-use prefixes, 6to4, Teredo) are
refused outright: they are how a forbidden IPv4 address is smuggled past an IPv4-only check.

:func:`parse_ip_host` reads every spelling of an IPv4 address that ``inet_aton`` (and therefore
the system resolver) accepts -- decimal ``2130706433``, octal ``0177.0.0.1``, hex ``0x7f.1``,
short forms ``127.1`` -- so a host that *looks* like a name but is a number is caught.
"""

from __future__ import annotations

import ipaddress
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HostError(ValueError):
    """A host name or address that cannot be read unambiguously."""


@dataclass(frozen=True, slots=True)
class Range:
    """One special-purpose range: its network, its name and its registry/RFC reference."""

    network: IPNetwork
    name: str
    ref: str


def _r(cidr: str, name: str, ref: str) -> Range:
    return Range(ipaddress.ip_network(cidr), name, ref)


# Cloud metadata endpoints: checked first so the reason names them.
METADATA: Final = (
    _r("169.254.169.254/32", "cloud metadata (AWS/GCP/Azure/OpenStack)", "vendor docs"),
    _r("169.254.170.2/32", "cloud metadata (AWS ECS task)", "vendor docs"),
    _r("169.254.169.123/32", "cloud time service (AWS)", "vendor docs"),
    _r("169.254.169.253/32", "cloud DNS resolver (AWS)", "vendor docs"),
    _r("100.100.100.200/32", "cloud metadata (Alibaba)", "vendor docs"),
    _r("192.0.0.192/32", "cloud metadata (Oracle)", "vendor docs"),
    _r("fd00:ec2::254/128", "cloud metadata (AWS IPv6)", "vendor docs"),
    _r("fd00:ec2::23/128", "cloud DNS resolver (AWS IPv6)", "vendor docs"),
    _r("fd20:ce::254/128", "cloud metadata (GCP IPv6)", "vendor docs"),
)

# IPv6 prefixes that carry an IPv4 address inside them.
EMBEDDING: Final = (
    _r("::ffff:0:0/96", "IPv4-mapped IPv6", "RFC 4291"),
    _r("::/96", "IPv4-compatible IPv6 (deprecated)", "RFC 4291"),
    _r("64:ff9b::/96", "NAT64 well-known prefix", "RFC 6052"),
    _r("64:ff9b:1::/48", "NAT64 local-use prefix", "RFC 8215"),
    _r("2002::/16", "6to4", "RFC 3056"),
    _r("2001::/32", "Teredo", "RFC 4380"),
    _r("::ffff:0:0:0/96", "IPv4-translated IPv6 (SIIT)", "RFC 2765"),
)

SPECIAL_V4: Final = (
    _r("0.0.0.0/8", "this network / unspecified", "RFC 791"),
    _r("10.0.0.0/8", "private", "RFC 1918"),
    _r("100.64.0.0/10", "carrier-grade NAT shared space", "RFC 6598"),
    _r("127.0.0.0/8", "loopback", "RFC 1122"),
    _r("169.254.0.0/16", "link-local", "RFC 3927"),
    _r("172.16.0.0/12", "private", "RFC 1918"),
    _r("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    _r("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    _r("192.88.99.0/24", "6to4 relay anycast (deprecated)", "RFC 7526"),
    _r("192.168.0.0/16", "private", "RFC 1918"),
    _r("198.18.0.0/15", "benchmarking", "RFC 2544"),
    _r("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    _r("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    _r("224.0.0.0/4", "multicast", "RFC 5771"),
    _r("240.0.0.0/4", "reserved", "RFC 1112"),
    _r("255.255.255.255/32", "limited broadcast", "RFC 919"),
)

SPECIAL_V6: Final = (
    _r("::/128", "unspecified", "RFC 4291"),
    _r("::1/128", "loopback", "RFC 4291"),
    _r("100::/64", "discard-only", "RFC 6666"),
    _r("100:0:0:1::/64", "dummy prefix", "RFC 9780"),
    _r("2001::/23", "IETF protocol assignments", "RFC 2928"),
    _r("2001:db8::/32", "documentation", "RFC 3849"),
    _r("3fff::/20", "documentation", "RFC 9637"),
    _r("5f00::/16", "SRv6 SIDs", "RFC 9602"),
    _r("fc00::/7", "unique local", "RFC 4193"),
    _r("fe80::/10", "link-local", "RFC 4291"),
    _r("fec0::/10", "site-local (deprecated)", "RFC 3879"),
    _r("ff00::/8", "multicast", "RFC 4291"),
)

_GLOBAL_UNICAST_V6: Final = ipaddress.ip_network("2000::/3")

METADATA_HOSTS: Final = frozenset(
    {
        "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
        "instance-data.ec2.internal", "metadata.azure.internal", "metadata.tencentyun.com",
        "metadata.packet.net", "169.254.169.254.nip.io",
    }
)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached, or None when it is an ordinary public address."""
    for r in METADATA:
        if address in r.network:
            return f"{address} is {r.name}"
    if isinstance(address, ipaddress.IPv6Address):
        for r in SPECIAL_V6[:2]:  # :: and ::1 sit inside ::/96 but are not embeddings
            if address in r.network:
                return f"{address} is {r.name} ({r.ref})"
        for r in EMBEDDING:
            if address in r.network:
                inner = embedded_ipv4(address)
                suffix = f" embedding {inner}" if inner is not None else ""
                return f"{address} is {r.name} ({r.ref}){suffix}"
        for r in SPECIAL_V6:
            if address in r.network:
                return f"{address} is {r.name} ({r.ref})"
        if address not in _GLOBAL_UNICAST_V6:
            return f"{address} is outside global unicast 2000::/3"
        if address.scope_id:
            return f"{address} carries a zone index"
    else:
        for r in SPECIAL_V4:
            if address in r.network:
                return f"{address} is {r.name} ({r.ref})"
    if not address.is_global:  # belt and braces: ipaddress' own view must agree
        return f"{address} is not globally reachable"
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped/compatible/NAT64/6to4/Teredo IPv6 address, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = address.packed
    if packed[:12] == bytes(12) or address in EMBEDDING[2].network:
        return ipaddress.IPv4Address(packed[12:])
    if address in EMBEDDING[3].network:
        return ipaddress.IPv4Address(packed[12:])
    return None


def normalize_host(host: str) -> str:
    """Lower-case ASCII host: percent-decoded, Unicode folded (NFKC, fullwidth digits and dots),
    IDNA-encoded, without a trailing dot. Raises :class:`HostError` for what cannot be read."""
    if not host:
        raise HostError("empty host")
    if "%" in host and not host.startswith("["):
        host = urllib.parse.unquote(host, errors="strict")
    if host.startswith("["):
        return host.lower()
    if not host.isascii():
        host = unicodedata.normalize("NFKC", host)
        for dot in ("\u3002", "\uff0e", "\uff61"):
            host = host.replace(dot, ".")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise HostError(f"host {host!r} is not a valid IDNA name: {exc}") from None
    host = host.lower().rstrip(".")
    if not host:
        raise HostError("empty host")
    bad = set(host) - set("abcdefghijklmnopqrstuvwxyz0123456789-._")
    if bad:
        raise HostError(f"host {host!r} has characters {''.join(sorted(bad))!r}")
    return host


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a normalized host names when it is an IP literal in any spelling, else None.

    ``[v6]`` literals (zone indexes refused) and every ``inet_aton`` IPv4 spelling. A host made
    only of number-like labels that is not a valid address raises :class:`HostError` rather than
    being passed to a resolver that might read it differently.
    """
    if host.startswith("["):
        if not host.endswith("]"):
            raise HostError(f"unterminated IPv6 literal {host!r}")
        inner = host[1:-1]
        if "%" in inner:
            raise HostError(f"IPv6 literal with a zone index {host!r}")
        try:
            return ipaddress.IPv6Address(inner)
        except ValueError:
            raise HostError(f"invalid IPv6 literal {host!r}") from None
    labels = host.split(".")
    if not all(_numberish(label) for label in labels):
        last = labels[-1]
        if last and (last[0].isdigit() or last.startswith("0x")) and _numberish(last):
            raise HostError(f"host {host!r} ends in a number but is not an address")
        return None
    return _inet_aton(host, labels)


def _numberish(label: str) -> bool:
    if not label:
        return False
    if label.startswith("0x"):
        return all(c in "0123456789abcdef" for c in label[2:])
    return label.isdigit()


def _inet_aton(host: str, labels: list[str]) -> ipaddress.IPv4Address:
    if len(labels) > 4:
        raise HostError(f"host {host!r} has more than four numeric parts")
    values = []
    for label in labels:
        try:
            if label.startswith("0x"):
                values.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                values.append(int(label, 8))
            else:
                values.append(int(label, 10))
        except ValueError:
            raise HostError(f"host {host!r} has an invalid numeric part {label!r}") from None
    *front, last = values
    if any(v > 255 for v in front) or last >= 256 ** (5 - len(values)):
        raise HostError(f"host {host!r} is out of range for an IPv4 address")
    number = last
    for k, v in enumerate(front):
        number |= v << (8 * (3 - k))
    return ipaddress.IPv4Address(number)
