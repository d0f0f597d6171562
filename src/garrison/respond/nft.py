"""nftables backend: one ``inet`` table of Garrison's own, driven with ``nft -j`` JSON.

The table holds two sets with ``flags timeout`` (``blocked4`` of ``ipv4_addr``, ``blocked6`` of
``ipv6_addr``): every element carries its own timeout, so the kernel lifts a block on time even
if Garrison is dead. Unless ``set_only``, two base chains (``input`` and ``forward``, hook
priority ``priority``, default -10: before the user's filter chains at 0) drop packets from
those sets. Only this table is ever changed: no other table, chain or rule is read or touched.
Every change is one JSON batch on stdin (atomic in the kernel), never a shell string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from garrison.correlate.addresses import IPAddress, parse_ip
from garrison.respond.backend import FirewallError, Runner

SET4 = "blocked4"
SET6 = "blocked6"


class NftBackend:
    """Blocks with nftables sets. ``table`` must be a plain identifier (config checks it)."""

    name = "nftables"
    kernel_expiry = True

    def __init__(self, runner: Runner | None = None, *, table: str = "garrison",
                 priority: int = -10, set_only: bool = False) -> None:
        if not table.replace("_", "").isalnum() or not table[:1].isalpha():
            raise ValueError(f"nftables table name must be an identifier, got {table!r}")
        self.run = runner or Runner()
        self.table = table
        self.priority = priority
        self.set_only = set_only

    def _obj(self, **kw: Any) -> dict[str, Any]:
        return {"family": "inet", "table": self.table, **kw}

    def _batch(self, commands: list[dict[str, Any]]) -> None:
        if commands:
            self.run(["nft", "-j", "-f", "-"], stdin=json.dumps({"nftables": commands}))

    def setup_commands(self) -> list[dict[str, Any]]:
        """The JSON commands that create (idempotently) the table, sets and chains."""
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": self.table}}}]
        for name, typ in ((SET4, "ipv4_addr"), (SET6, "ipv6_addr")):
            cmds.append({"add": {"set": self._obj(name=name, type=typ, flags=["timeout"])}})
        if self.set_only:
            return cmds
        for hook in ("input", "forward"):
            chain = self._obj(name=hook, type="filter", hook=hook, prio=self.priority,
                              policy="accept")
            cmds.append({"add": {"chain": chain}})
            # Our own chain only: flushing it makes setup idempotent (no duplicate rules).
            cmds.append({"flush": {"chain": self._obj(name=hook)}})
            for proto, setname in (("ip", SET4), ("ip6", SET6)):
                match = {"match": {"op": "==", "right": f"@{setname}",
                                   "left": {"payload": {"protocol": proto, "field": "saddr"}}}}
                rule = self._obj(chain=hook, expr=[match, {"counter": None}, {"drop": None}])
                cmds.append({"add": {"rule": rule}})
        return cmds

    def setup(self) -> None:
        self._batch(self.setup_commands())

    def add_commands(self, entries: Sequence[tuple[IPAddress, int]],
                     present: set[IPAddress]) -> list[dict[str, Any]]:
        """Commands that (re)block ``entries`` (address, seconds); elements already in the
        kernel (``present``) are deleted first so their timeout is replaced, not kept."""
        cmds: list[dict[str, Any]] = []
        for setname, version in ((SET4, 4), (SET6, 6)):
            mine = [(a, max(1, int(t))) for a, t in entries if a.version == version]
            old = [str(a) for a, _ in mine if a in present]
            if old:
                cmds.append({"delete": {"element": self._obj(name=setname, elem=old)}})
            if mine:
                elems = [{"elem": {"val": str(a), "timeout": t}} for a, t in mine]
                cmds.append({"add": {"element": self._obj(name=setname, elem=elems)}})
        return cmds

    def add(self, entries: Sequence[tuple[IPAddress, int]]) -> None:
        try:
            self._batch(self.add_commands(entries, set(self.list())))
        except FirewallError:
            # An element may have expired between listing and deleting: list again, once.
            self._batch(self.add_commands(entries, set(self.list())))

    def remove(self, addrs: Sequence[IPAddress]) -> None:
        present = set(self.list())
        cmds = []
        for setname, version in ((SET4, 4), (SET6, 6)):
            gone = [str(a) for a in addrs if a.version == version and a in present]
            if gone:
                cmds.append({"delete": {"element": self._obj(name=setname, elem=gone)}})
        self._batch(cmds)

    def list(self) -> dict[IPAddress, int]:
        """Addresses in the sets with seconds until the kernel expires each."""
        out: dict[IPAddress, int] = {}
        for setname in (SET4, SET6):
            res = self.run(["nft", "-j", "list", "set", "inet", self.table, setname],
                           check=False)
            if res.returncode != 0:
                continue
            for item in json.loads(res.stdout).get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    val = elem.get("elem", elem) if isinstance(elem, dict) else elem
                    addr = val.get("val") if isinstance(val, dict) else val
                    expires = val.get("expires", 0) if isinstance(val, dict) else 0
                    try:
                        out[parse_ip(addr)] = int(expires)
                    except ValueError:
                        continue
        return out

    def teardown(self) -> None:
        """Delete Garrison's table (and nothing else)."""
        self.run(["nft", "delete", "table", "inet", self.table], check=False)
