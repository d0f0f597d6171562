"""Two-host test networks in Linux network namespaces.

``Topology`` creates a *defended* namespace (198.51.100.1/24, 2001:db8:1::1/64) and an *outside*
namespace (203.0.113.50/24, 2001:db8:2::50/64, plus any extra actor addresses) joined by a veth
pair, with direct routes between the two documentation ranges. Nothing touches the machine's own
network: all traffic stays inside the two namespaces, which are deleted on close.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import pytest

DEFENDED_V4 = "198.51.100.1"
DEFENDED_V6 = "2001:db8:1::1"
OUTSIDE_V4 = "203.0.113.50"
OUTSIDE_V6 = "2001:db8:2::50"


def require_root_tools(*tools: str) -> None:
    """Skip the calling test unless we are root and every tool is on PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and captures packets")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`) for network namespaces")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (installed by scripts/setup)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class Topology:
    """A defended host and an outside host in two fresh namespaces."""

    prefix: str = "gt"
    extra_outside_v4: Sequence[str] = ()
    extra_outside_v6: Sequence[str] = ()
    defended: str = field(init=False)
    outside: str = field(init=False)
    defended_if: str = field(init=False)
    outside_if: str = field(init=False)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(3)
        self.defended = f"{self.prefix}-d-{tag}"
        self.outside = f"{self.prefix}-o-{tag}"
        self.defended_if = f"vd{tag}"
        self.outside_if = f"vo{tag}"

    def create(self) -> Topology:
        d, o = self.defended, self.outside
        _ip("netns", "add", d)
        _ip("netns", "add", o)
        try:
            _ip("link", "add", self.defended_if, "netns", d, "type", "veth",
                "peer", "name", self.outside_if, "netns", o)
            for ns, ifname, v4, v6, other4, other6 in (
                (d, self.defended_if, DEFENDED_V4, DEFENDED_V6,
                 "203.0.113.0/24", "2001:db8:2::/64"),
                (o, self.outside_if, OUTSIDE_V4, OUTSIDE_V6,
                 "198.51.100.0/24", "2001:db8:1::/64"),
            ):
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
                _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
                _ip("-n", ns, "link", "set", ifname, "up")
                _ip("-n", ns, "route", "add", other4, "dev", ifname)
                _ip("-n", ns, "-6", "route", "add", other6, "dev", ifname)
            for extra in self.extra_outside_v4:
                _ip("-n", o, "addr", "add", f"{extra}/24", "dev", self.outside_if)
            for extra in self.extra_outside_v6:
                _ip("-n", o, "-6", "addr", "add", f"{extra}/64", "dev", self.outside_if, "nodad")
            self.wait_reachable()
        except Exception:
            self.close()
            raise
        return self

    def wait_reachable(self, timeout: float = 10.0) -> None:
        """Block until the outside host can ping the defended host over IPv4 and IPv6."""
        deadline = time.monotonic() + timeout
        for target in (DEFENDED_V4, DEFENDED_V6):
            while True:
                r = self.run(self.outside, ["ping", "-c", "1", "-W", "1", target], check=False)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} not reachable from {self.outside}")
                time.sleep(0.1)

    def run(
        self, ns: str, args: Sequence[str], *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside namespace ``ns`` and wait for it (bounded by ``timeout``)."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args], check=check, capture_output=True,
            text=True, timeout=timeout,
        )

    def popen(self, ns: str, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start ``args`` inside namespace ``ns`` in the background."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)  # type: ignore[call-overload, no-any-return]

    def close(self) -> None:
        for ns in (self.defended, self.outside):
            # Kill anything still running inside before deleting the namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def topology(
    prefix: str = "gt", extra_outside_v4: Sequence[str] = (), extra_outside_v6: Sequence[str] = ()
) -> Iterator[Topology]:
    """A :class:`Topology` that is torn down on exit."""
    topo = Topology(prefix, extra_outside_v4, extra_outside_v6).create()
    try:
        yield topo
    finally:
        topo.close()
