"""Blocklists: the file formats, both families, and exact answers at a large size."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from garrison.correlate.blocklist import Blocklist, Blocklists

DATA = Path(__file__).parent.parent / "data" / "response"


def test_formats_plain_netset_drop_and_json() -> None:
    bl = Blocklists.from_files(sorted(DATA.glob("*.txt")) + sorted(DATA.glob("*.netset")))
    assert {b.name for b in bl.lists} == {"drop.txt", "firehol_sample.netset", "plain.txt"}
    hits = {
        "1.10.16.1": ["drop.txt"],          # Spamhaus DROP line with "; SBL" comment
        "5.188.10.77": ["firehol_sample.netset"],
        "203.0.113.99": ["plain.txt"],      # single address
        "2001:db8:dead::1": ["plain.txt"],  # IPv6 CIDR
        "::ffff:203.0.113.99": ["plain.txt"],  # IPv4-mapped IPv6 is the IPv4 address
    }
    for ip, names in hits.items():
        assert bl.match(ipaddress.ip_address(ip)) == names, ip
    for ip in ("1.10.32.0", "203.0.113.98", "2001:db8:beef::1", "8.8.8.8"):
        assert bl.match(ipaddress.ip_address(ip)) == [], ip


def test_bad_lines_are_counted_not_fatal() -> None:
    bl = Blocklist.from_lines("x", [
        "# comment", "", "198.51.100.0/24", "1.2.3.4/33", "not-an-ip", "$(reboot)",
        "2001:db8::/129", "x" * 10_000, '{"cidr": "192.0.2.0/24", "sblid": "SBL1"}',
    ])
    assert bl.entries == 2
    assert bl.rejected == 5
    assert "192.0.2.200" in bl and "198.51.100.7" in bl and "10.0.0.1" not in bl


def test_overlapping_ranges_merge() -> None:
    bl = Blocklist.from_lines("x", ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "12.0.0.1"])
    assert bl.ranges == 2  # 10/8 + 11/8 are adjacent: one range; 12.0.0.1 another
    assert "11.255.255.255" in bl and "12.0.0.0" not in bl and "12.0.0.1" in bl


def test_large_list_answers_exactly_like_ipaddress() -> None:
    rng = random.Random(7)
    nets = [ipaddress.ip_network((rng.getrandbits(32) & ~0xFF, 24)) for _ in range(20_000)]
    nets6 = [ipaddress.ip_network((rng.getrandbits(128) >> 64 << 64, 64)) for _ in range(2_000)]
    bl = Blocklist.from_lines("big", [str(n) for n in nets + nets6])
    assert bl.entries == 22_000
    # Probes inside listed ranges must hit; random probes must agree with a set of /24s.
    listed = {int(n.network_address) for n in nets}
    for n in rng.sample(nets, 500):
        assert bl.contains(n.network_address + rng.randrange(256))
    for _ in range(5000):
        a = ipaddress.IPv4Address(rng.getrandbits(32))
        assert bl.contains(a) == ((int(a) & ~0xFF) in listed)
    for n in rng.sample(nets6, 200):
        assert bl.contains(n.network_address + rng.getrandbits(64))
        assert not bl.contains(n.network_address - 1) or any(
            (n.network_address - 1) in m for m in nets6)
