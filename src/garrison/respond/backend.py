"""The firewall backend contract, and the command runner all backends share.

A backend turns "block these addresses for these many seconds" into commands. Addresses reach
it already parsed (:mod:`ipaddress` objects); commands are argument lists, data goes on stdin,
never through a shell. ``prefix`` runs every command under a wrapper (tests use
``["ip", "netns", "exec", NS]`` to act inside a network namespace).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from typing import Protocol

from garrison.correlate.addresses import IPAddress

log = logging.getLogger("garrison.respond.firewall")


class FirewallError(RuntimeError):
    """A firewall command failed (the message carries the command and its stderr)."""


class Backend(Protocol):
    """What the firewall responder needs from a backend.

    ``kernel_expiry`` True means the kernel removes expired entries itself (Garrison dying does
    not leave them blocked forever); False means the responder must remove them.
    """

    name: str
    kernel_expiry: bool

    def setup(self) -> None: ...

    def add(self, entries: Sequence[tuple[IPAddress, int]]) -> None: ...

    def remove(self, addrs: Sequence[IPAddress]) -> None: ...

    def list(self) -> dict[IPAddress, int]: ...

    def teardown(self) -> None: ...


class Runner:
    """Runs argument lists (optionally under ``prefix``), raising :class:`FirewallError`."""

    def __init__(self, prefix: Sequence[str] = (), timeout: float = 15.0) -> None:
        self.prefix = list(prefix)
        self.timeout = timeout
        self.calls = 0

    def __call__(self, args: Sequence[str], stdin: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        if any(not isinstance(a, str) for a in args):
            raise TypeError(f"command arguments must be strings: {args!r}")
        cmd = [*self.prefix, *args]
        self.calls += 1
        try:
            res = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                                 timeout=self.timeout, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise FirewallError(f"{args[0]}: {exc}") from exc
        if check and res.returncode != 0:
            raise FirewallError(
                f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()[:500]}"
            )
        return res


class NoBackend:
    """``backend = "none"``: blocks are recorded and logged, nothing is enforced."""

    name = "none"
    kernel_expiry = False

    def setup(self) -> None:
        pass

    def add(self, entries: Sequence[tuple[IPAddress, int]]) -> None:
        pass

    def remove(self, addrs: Sequence[IPAddress]) -> None:
        pass

    def list(self) -> dict[IPAddress, int]:
        return {}

    def teardown(self) -> None:
        pass
