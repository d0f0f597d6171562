"""Windows Firewall command construction (``netsh advfirewall``).

Only the argument lists are built and tested here (no Windows machine runs the tests). Windows
Firewall rules have no timeout, so :attr:`NetshBackend.kernel_expiry` is False and the responder
removes expired blocks itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from garrison.correlate.addresses import IPAddress
from garrison.respond.backend import Runner

RULE_PREFIX = "Garrison block"


def rule_name(addr: IPAddress) -> str:
    return f"{RULE_PREFIX} {addr}"


def block_commands(addr: IPAddress) -> list[list[str]]:
    """``netsh`` argument lists that block ``addr`` inbound (one rule per address)."""
    return [[
        "netsh", "advfirewall", "firewall", "add", "rule", f"name={rule_name(addr)}",
        "dir=in", "action=block", f"remoteip={addr}", "enable=yes", "profile=any",
    ]]


def unblock_commands(addr: IPAddress) -> list[list[str]]:
    """``netsh`` argument lists that remove Garrison's rule for ``addr``."""
    return [["netsh", "advfirewall", "firewall", "delete", "rule", f"name={rule_name(addr)}"]]


class NetshBackend:
    """Windows Firewall backend (construction tested; execution only on Windows)."""

    name = "netsh"
    kernel_expiry = False

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or Runner()

    def setup(self) -> None:
        pass

    def add(self, entries: Sequence[tuple[IPAddress, int]]) -> None:
        for addr, _ in entries:
            for cmd in unblock_commands(addr):
                self.run(cmd, check=False)
            for cmd in block_commands(addr):
                self.run(cmd)

    def remove(self, addrs: Sequence[IPAddress]) -> None:
        for addr in addrs:
            for cmd in unblock_commands(addr):
                self.run(cmd, check=False)

    def list(self) -> dict[IPAddress, int]:
        return {}

    def teardown(self) -> None:
        pass
