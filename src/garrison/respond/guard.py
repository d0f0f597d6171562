"""Who may never be blocked, and why.

:class:`BlockGuard` answers one question before any firewall command is built: may this address
be blocked? Never: loopback, private and other special-purpose ranges, allowlisted networks, the
defended ``home_net``, the host's own addresses, the peer of the SSH session Garrison was started
from (``$SSH_CONNECTION``), the default gateways and the DNS servers in ``/etc/resolv.conf``
(when ``protect_system``), and anything in ``firewall.never_block``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from garrison.correlate.addresses import IPAddress, IPNetwork, in_any, is_special, parse_ip

log = logging.getLogger("garrison.respond.guard")


class BlockRefused(ValueError):
    """An address that must not be blocked (the message says why)."""


def _ip_json(prefix: Sequence[str], args: Sequence[str]) -> list[dict[str, object]]:
    try:
        out = subprocess.run([*prefix, "ip", "-j", *args], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        data = json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot read %s: %s", " ".join(args), exc)
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def own_addresses(prefix: Sequence[str] = ()) -> set[IPAddress]:
    """Addresses configured on this host's interfaces (``ip -j addr``)."""
    out: set[IPAddress] = set()
    for link in _ip_json(prefix, ["addr", "show"]):
        infos = link.get("addr_info")
        for info in infos if isinstance(infos, list) else []:
            try:
                out.add(parse_ip(info.get("local")))
            except (ValueError, AttributeError):
                continue
    return out


def gateways(prefix: Sequence[str] = ()) -> set[IPAddress]:
    """Default gateways, IPv4 and IPv6 (``ip -j route show default``)."""
    out: set[IPAddress] = set()
    for fam in ("-4", "-6"):
        for route in _ip_json(prefix, [fam, "route", "show", "default"]):
            try:
                out.add(parse_ip(route.get("gateway")))
            except ValueError:
                continue
    return out


def dns_servers(resolv_conf: str | Path = "/etc/resolv.conf") -> set[IPAddress]:
    """Name servers listed in ``resolv.conf``."""
    out: set[IPAddress] = set()
    try:
        lines = Path(resolv_conf).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.add(parse_ip(parts[1]))
            except ValueError:
                continue
    return out


def ssh_peer(environ: Mapping[str, str]) -> IPAddress | None:
    """The client address of the SSH session in ``$SSH_CONNECTION`` (or ``$SSH_CLIENT``)."""
    for var in ("SSH_CONNECTION", "SSH_CLIENT"):
        value = environ.get(var, "").split()
        if value:
            try:
                return parse_ip(value[0])
            except ValueError:
                continue
    return None


class BlockGuard:
    """Decides whether an address may be blocked."""

    def __init__(
        self,
        *,
        allowlist: Iterable[IPNetwork] = (),
        protected: Iterable[IPAddress] = (),
    ) -> None:
        self.allowlist = tuple(allowlist)
        self.protected = frozenset(protected)

    @classmethod
    def for_host(
        cls,
        allowlist: Iterable[IPNetwork],
        *,
        protect_system: bool = True,
        environ: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> BlockGuard:
        """A guard that also protects this host's addresses, SSH peer, gateways and DNS."""
        env = os.environ if environ is None else environ
        protected = own_addresses(prefix)
        peer = ssh_peer(env)
        if peer is not None:
            protected.add(peer)
        if protect_system:
            protected |= gateways(prefix) | dns_servers()
        return cls(allowlist=allowlist, protected=protected)

    def refusal(self, addr: IPAddress) -> str | None:
        """Why ``addr`` must not be blocked, or None if it may be."""
        if is_special(addr):
            return "private, loopback or special-purpose address"
        if in_any(addr, self.allowlist):
            return "allowlisted"
        if addr in self.protected:
            return "this host, its SSH peer, gateway or DNS server"
        return None

    def check(self, value: object) -> IPAddress:
        """The parsed address if it may be blocked; :class:`BlockRefused` or ValueError if not."""
        addr = parse_ip(value)
        why = self.refusal(addr)
        if why is not None:
            raise BlockRefused(f"refusing to block {addr}: {why}")
        return addr
