"""The firewall for real: nftables (and ipset+iptables) inside a network namespace.

The defended namespace runs a TCP listener (ncat) on port 8080; connection attempts come from
the outside namespace with a chosen source address. nft/ipset/iptables run only inside the
defended namespace (``ip netns exec``), never on this machine's own tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from garrison.events import Severity
from garrison.respond.service import ResponseService
from tests.support.netns import (
    DEFENDED_V4,
    DEFENDED_V6,
    OUTSIDE_V4,
    OUTSIDE_V6,
    Topology,
    require_root_tools,
    topology,
)

from .conftest import config, ev

ATTACKER2_V4 = "203.0.113.51"
ATTACKER2_V6 = "2001:db8:2::51"
PORT = 8080

_CONNECT = """
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(1.0)
s.bind((src, 0))
try:
    s.connect((dst, port))
except OSError:
    sys.exit(1)
sys.exit(0)
"""


def can_connect(topo: Topology, src: str, dst: str) -> bool:
    r = topo.run(topo.outside, [sys.executable, "-c", _CONNECT, src, dst, str(PORT)],
                 check=False, timeout=15)
    return r.returncode == 0


def wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def net() -> Iterator[Topology]:
    require_root_tools("nft", "ncat")
    with topology("gr", extra_outside_v4=[ATTACKER2_V4],
                  extra_outside_v6=[ATTACKER2_V6]) as topo:
        listener = topo.popen(topo.defended, ["ncat", "-lk", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: can_connect(topo, OUTSIDE_V4, DEFENDED_V4), 10)
            assert wait_until(lambda: can_connect(topo, OUTSIDE_V6, DEFENDED_V6), 10)
            yield topo
        finally:
            listener.kill()
            listener.wait(5)


def service(topo: Topology, tmp_path: Path, **firewall: Any) -> ResponseService:
    cfg = config(tmp_path, firewall={"backend": "nftables", **firewall})
    svc = ResponseService.from_config(cfg, prefix=["ip", "netns", "exec", topo.defended])
    svc.start()
    return svc


def nft(topo: Topology, *args: str) -> str:
    return topo.run(topo.defended, ["nft", *args]).stdout


@pytest.mark.root
@pytest.mark.parametrize(("attacker", "other", "target"), [
    (OUTSIDE_V4, ATTACKER2_V4, DEFENDED_V4), (OUTSIDE_V6, ATTACKER2_V6, DEFENDED_V6),
])
def test_block_drops_the_source_and_unblock_lifts_it_at_once(
    net: Topology, tmp_path: Path, attacker: str, other: str, target: str
) -> None:
    svc = service(net, tmp_path)
    try:
        rec = svc.block(attacker, "10m")
        assert rec.backend == "nftables" and not rec.dry_run
        assert not can_connect(net, attacker, target)
        assert can_connect(net, other, target)  # another outside address still connects
        listed = svc.firewall.backend.list()
        assert {str(a) for a in listed} == {attacker} and next(iter(listed.values())) >= 590
        assert svc.unblock(attacker)
        assert can_connect(net, attacker, target)
        assert svc.blocks() == []
    finally:
        svc.close()


@pytest.mark.root
def test_the_kernel_expires_a_block_even_when_garrison_is_gone(
    net: Topology, tmp_path: Path
) -> None:
    svc = service(net, tmp_path)
    svc.block(OUTSIDE_V4, 3)
    svc.block(OUTSIDE_V6, 3)
    assert not can_connect(net, OUTSIDE_V4, DEFENDED_V4)
    svc.close()  # Garrison is gone; only the kernel's per-element timeout is left
    assert wait_until(lambda: can_connect(net, OUTSIDE_V4, DEFENDED_V4), 15)
    assert wait_until(lambda: can_connect(net, OUTSIDE_V6, DEFENDED_V6), 15)
    # The next Garrison notices the expiry, records it and says so.
    svc2 = service(net, tmp_path)
    try:
        assert svc2.blocks() == []
        actions = [a["action"] for a in svc2.store.actions(OUTSIDE_V4)]
        assert actions == ["block", "expire"]
    finally:
        svc2.close()


@pytest.mark.root
def test_reconcile_restores_lost_blocks_and_adopts_kernel_entries(
    net: Topology, tmp_path: Path
) -> None:
    svc = service(net, tmp_path)
    svc.block(OUTSIDE_V4, "1h")
    svc.close()
    # The kernel lost our sets (a reboot, an admin's flush) and gained an entry we never made.
    nft(net, "flush", "set", "inet", "garrison", "blocked4")
    nft(net, "add", "element", "inet", "garrison", "blocked6",
        "{", ATTACKER2_V6, "timeout", "10m", "}")
    assert can_connect(net, OUTSIDE_V4, DEFENDED_V4)
    svc2 = service(net, tmp_path)
    try:
        assert not can_connect(net, OUTSIDE_V4, DEFENDED_V4)
        assert {b["ip"] for b in svc2.blocks()} == {OUTSIDE_V4, ATTACKER2_V6}
        assert svc2.firewall.backend.list()[svc2.firewall.guard.check(OUTSIDE_V4)] > 3500
    finally:
        svc2.close()


@pytest.mark.root
def test_only_garrisons_table_is_touched_and_set_only_has_no_chains(
    net: Topology, tmp_path: Path
) -> None:
    user = ("table inet userfw {\n chain input {\n type filter hook input priority 0;"
            " policy accept;\n tcp dport 9999 counter drop\n }\n}\n")
    subprocess.run(["ip", "netns", "exec", net.defended, "nft", "-f", "-"], input=user,
                   text=True, check=True, timeout=10)
    before = nft(net, "list", "table", "inet", "userfw")
    svc = service(net, tmp_path, set_only=True)
    try:
        svc.block(OUTSIDE_V4, 60)
        doc = json.loads(nft(net, "-j", "list", "table", "inet", "garrison"))
        kinds = {next(iter(o)) for o in doc["nftables"]}
        assert "set" in kinds and "chain" not in kinds  # set-only: the admin's rules decide
        assert can_connect(net, OUTSIDE_V4, DEFENDED_V4)  # nothing references the set yet
    finally:
        svc.close()
    (tmp_path / "full").mkdir()
    svc = service(net, tmp_path / "full")
    try:
        svc.block(OUTSIDE_V4, 60)
        assert not can_connect(net, OUTSIDE_V4, DEFENDED_V4)
        svc.firewall.backend.setup()  # idempotent: still exactly two rules per chain
        doc = json.loads(nft(net, "-j", "list", "table", "inet", "garrison"))
        rules = [o["rule"] for o in doc["nftables"] if "rule" in o]
        assert sorted(r["chain"] for r in rules) == ["forward", "forward", "input", "input"]
        chains = [o["chain"] for o in doc["nftables"] if "chain" in o]
        assert all(c["prio"] == -10 for c in chains)
        assert nft(net, "list", "table", "inet", "userfw") == before
        svc.firewall.backend.teardown()
        assert nft(net, "list", "table", "inet", "userfw") == before
    finally:
        svc.close()


@pytest.mark.root
def test_auto_block_needs_unforgeable_evidence(net: Topology, tmp_path: Path) -> None:
    svc = service(net, tmp_path, auto_block_severity="high")
    try:
        # A half-open SYN scan "from" a bystander: forgeable, so alerts but no block.
        svc.handle(ev("scan", ATTACKER2_V4, time.time(), Severity.CRITICAL, type="syn",
                      verified=False, port_count=500))
        assert svc.blocks() == []
        assert svc.firewall.counters["withheld_unverified"] == 1
        assert can_connect(net, ATTACKER2_V4, DEFENDED_V4)
        # A connect scan completed handshakes: the source is real, so it is blocked.
        svc.handle(ev("scan", OUTSIDE_V4, time.time(), Severity.HIGH, type="connect",
                      verified=True, port_count=500))
        assert [b["ip"] for b in svc.blocks()] == [OUTSIDE_V4]
        assert not can_connect(net, OUTSIDE_V4, DEFENDED_V4)
        # The bystander later shows verified evidence of its own: now it may be blocked.
        svc.handle(ev("honeypot", ATTACKER2_V4, time.time(), Severity.HIGH, service="ssh"))
        assert {b["ip"] for b in svc.blocks()} == {OUTSIDE_V4, ATTACKER2_V4}
    finally:
        svc.close()


@pytest.mark.root
def test_ipset_iptables_fallback(net: Topology, tmp_path: Path) -> None:
    require_root_tools("ipset", "iptables", "ip6tables")
    cfg = config(tmp_path, firewall={"backend": "iptables"})
    svc = ResponseService.from_config(cfg, prefix=["ip", "netns", "exec", net.defended])
    svc.start()
    try:
        if svc.firewall.counters["errors"]:
            pytest.skip("ipset/iptables unusable inside a namespace on this kernel")
        svc.block(OUTSIDE_V4, 60)
        svc.block(OUTSIDE_V6, 60)
        assert not can_connect(net, OUTSIDE_V4, DEFENDED_V4)
        assert not can_connect(net, OUTSIDE_V6, DEFENDED_V6)
        assert can_connect(net, ATTACKER2_V4, DEFENDED_V4)
        svc.unblock(OUTSIDE_V4)
        assert can_connect(net, OUTSIDE_V4, DEFENDED_V4)
        svc.firewall.backend.teardown()
    finally:
        svc.close()
