"""Membership test for the defended addresses (``home_net``), cached for line-rate use."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HomeNet:
    """The defended addresses. Empty means "every address is home" (replay without a
    ``--home-net``): every destination is then a possible scan target."""

    def __init__(self, networks: Iterable[Network | str] = (), cache_size: int = 65536) -> None:
        self.networks: list[Network] = [
            n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
            for n in networks
        ]
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size
        self.any = not self.networks

    def __contains__(self, ip: object) -> bool:
        if self.any:
            return True
        if not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            hit = any(addr in n for n in self.networks)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # bounded: an outside party picks the keys
            self._cache[ip] = hit
        return hit

    @property
    def address_count(self) -> int:
        """How many addresses home holds (capped; 2**32 for 'any')."""
        if self.any:
            return 2**32
        return min(sum(n.num_addresses for n in self.networks), 2**32)

    def __repr__(self) -> str:
        return f"HomeNet({[str(n) for n in self.networks] or 'any'})"
