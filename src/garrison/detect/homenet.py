"""Membership test for the defended addresses (``home_net``), cached for line-rate use."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HomeNet(dict[str, bool]):
    """The defended addresses. Empty means "every address is home" (replay without a
    ``--home-net``): every destination is then a possible scan target.

    ``ip in home`` answers membership; ``home[ip]`` answers the same from a C-level dict lookup
    once an address has been seen (the hot path of per-packet detectors). The cache is bounded:
    an outside party chooses the keys.
    """

    def __init__(self, networks: Iterable[Network | str] = (), cache_size: int = 65536) -> None:
        super().__init__()
        self.networks: list[Network] = [
            n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
            for n in networks
        ]
        self._cache_size = cache_size
        self.any = not self.networks

    def __missing__(self, ip: str) -> bool:
        if self.any:
            hit = True
        else:
            try:
                addr = ipaddress.ip_address(ip)
            except (ValueError, TypeError):
                return False
            hit = any(addr in n for n in self.networks)
        if len(self) >= self._cache_size:
            self.clear()
        self[ip] = hit
        return hit

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, str) and self[ip]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HomeNet) and self.networks == other.networks

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    @property
    def address_count(self) -> int:
        """How many addresses home holds (capped; 2**32 for 'any')."""
        if self.any:
            return 2**32
        return min(sum(n.num_addresses for n in self.networks), 2**32)

    def __repr__(self) -> str:
        return f"HomeNet({[str(n) for n in self.networks] or 'any'})"
