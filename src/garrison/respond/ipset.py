"""ipset + iptables backend, for hosts without nftables.

Two ipsets of Garrison's own (``<table>4`` ``hash:ip family inet`` and ``<table>6`` ``family
inet6``) created with ``timeout 0`` so each entry carries its own timeout and the kernel expires
it. Unless ``set_only``, one DROP rule per set is inserted at the top of INPUT and FORWARD with
``iptables`` (IPv4) and ``ip6tables`` (IPv6) — each only if ``-C`` says it is missing, so no
other rule is changed. Additions are batched through ``ipset restore -exist`` on stdin (which
also refreshes the timeout of an entry already present).
"""

from __future__ import annotations

from collections.abc import Sequence

from garrison.correlate.addresses import IPAddress, parse_ip
from garrison.respond.backend import Runner


class IpsetBackend:
    """Blocks with ipset sets matched from iptables/ip6tables rules."""

    name = "iptables"
    kernel_expiry = True

    def __init__(self, runner: Runner | None = None, *, table: str = "garrison",
                 set_only: bool = False) -> None:
        if not table.replace("_", "").isalnum() or not table[:1].isalpha():
            raise ValueError(f"ipset name must be an identifier, got {table!r}")
        self.run = runner or Runner()
        self.sets = {4: f"{table}4", 6: f"{table}6"}
        self.set_only = set_only

    def setup(self) -> None:
        for version, family in ((4, "inet"), (6, "inet6")):
            self.run(["ipset", "create", self.sets[version], "hash:ip", "family", family,
                      "timeout", "0", "-exist"])
        if self.set_only:
            return
        for version, tool in ((4, "iptables"), (6, "ip6tables")):
            for chain in ("INPUT", "FORWARD"):
                rule = ["-m", "set", "--match-set", self.sets[version], "src", "-j", "DROP"]
                if self.run([tool, "-w", "-C", chain, *rule], check=False).returncode != 0:
                    self.run([tool, "-w", "-I", chain, "1", *rule])

    def restore_script(self, lines: Sequence[str]) -> str:
        return "".join(f"{line}\n" for line in lines)

    def add(self, entries: Sequence[tuple[IPAddress, int]]) -> None:
        lines = [f"add {self.sets[a.version]} {a} timeout {max(1, int(t))}" for a, t in entries]
        if lines:
            self.run(["ipset", "restore", "-exist"], stdin=self.restore_script(lines))

    def remove(self, addrs: Sequence[IPAddress]) -> None:
        lines = [f"del {self.sets[a.version]} {a}" for a in addrs]
        if lines:
            self.run(["ipset", "restore", "-exist"], stdin=self.restore_script(lines))

    def list(self) -> dict[IPAddress, int]:
        out: dict[IPAddress, int] = {}
        for name in self.sets.values():
            res = self.run(["ipset", "save", name], check=False)
            for line in res.stdout.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "add" and parts[1] == name:
                    try:
                        addr = parse_ip(parts[2])
                    except ValueError:
                        continue
                    t = parts[parts.index("timeout") + 1] if "timeout" in parts else "0"
                    out[addr] = int(t) if t.isdigit() else 0
        return out

    def teardown(self) -> None:
        for version, tool in ((4, "iptables"), (6, "ip6tables")):
            for chain in ("INPUT", "FORWARD"):
                rule = ["-m", "set", "--match-set", self.sets[version], "src", "-j", "DROP"]
                self.run([tool, "-w", "-D", chain, *rule], check=False)
        for name in self.sets.values():
            self.run(["ipset", "destroy", name], check=False)
