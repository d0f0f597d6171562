"""Reputation: neutral start, trusted ranges, weights by kind and severity, decay, episodes."""

from __future__ import annotations

import ipaddress

import pytest

from garrison.correlate.blocklist import Blocklist, Blocklists
from garrison.correlate.reputation import Reputation, classify
from garrison.events import Severity

from .conftest import ev

A = ipaddress.ip_address("203.0.113.50")


def test_unknown_public_address_is_neutral_and_private_is_trusted() -> None:
    rep = Reputation()
    assert rep.score(A, 0) == 0.5
    for ip in ("10.1.2.3", "127.0.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd00::1",
               "fe80::1"):
        addr = ipaddress.ip_address(ip)
        assert rep.apply(addr, ev("honeypot", ip, 0, Severity.CRITICAL)) == 1.0
        assert rep.score(addr, 0) == 1.0
    assert len(rep) == 0  # trusted addresses are never tracked


def test_allowlisted_is_trusted() -> None:
    rep = Reputation(trusted=[ipaddress.ip_network("203.0.113.0/28")])
    assert rep.apply(ipaddress.ip_address("203.0.113.5"), ev("exfil", "x", 0)) == 1.0
    assert rep.score(A, 0) == 0.5


def test_weights_by_kind_and_severity() -> None:
    rep = Reputation()
    assert rep.apply(A, ev("scan", str(A), 0, Severity.MEDIUM)) == pytest.approx(0.3)
    b = ipaddress.ip_address("203.0.113.51")
    assert rep.apply(b, ev("honeypot", str(b), 0, Severity.LOW)) == pytest.approx(
        0.5 - 0.35 * 0.5)
    c = ipaddress.ip_address("203.0.113.52")
    assert rep.apply(c, ev("exfil", str(c), 0, Severity.CRITICAL)) == 0.0  # clamped at 0
    # A kind nobody has written yet gets the default weight (0.1 at medium).
    assert rep.weight("some-future-detector") == 0.1
    d = ipaddress.ip_address("2001:db8:2::9")
    rep2 = Reputation(weights={"scan": 0.05})
    assert rep2.apply(d, ev("scan", str(d), 0, Severity.MEDIUM)) == pytest.approx(0.45)


def test_decays_back_to_neutral_with_half_life() -> None:
    rep = Reputation(half_life=100.0)
    s0 = rep.apply(A, ev("exfil", str(A), 1000.0, Severity.MEDIUM))  # 0.2
    assert s0 == pytest.approx(0.2)
    assert rep.score(A, 1100.0) == pytest.approx(0.35)   # half the distance back
    assert rep.score(A, 1200.0) == pytest.approx(0.425)
    assert rep.score(A, 1000.0 + 100 * 30) == pytest.approx(0.5, abs=1e-6)


def test_an_episode_is_charged_once_at_its_highest_severity() -> None:
    rep = Reputation()
    for sev in (Severity.LOW, Severity.MEDIUM, Severity.MEDIUM, Severity.HIGH):
        e = ev("scan", str(A), 10.0, sev)
        e = type(e)(e.name, e.ts, e.severity, detail=e.detail, episode="scan-1")
        score = rep.apply(A, e)
    assert score == pytest.approx(0.5 - 0.2 * 1.5)
    hist = rep.report(A, 10.0)["history"]
    assert [h["severity"] for h in hist] == ["low", "medium", "medium", "high"]
    assert sum(h["penalty"] for h in hist) == pytest.approx(0.3)


def test_blocklisted_address_is_marked_and_starts_low() -> None:
    lists = Blocklists([Blocklist.from_lines("drop", ["203.0.113.0/24"])])
    rep = Reputation(blocklists=lists, blocklisted_score=0.1)
    report = rep.report(A, 0)
    assert report["blocklisted"] and report["blocklists"] == ["drop"]
    assert report["score"] == 0.1 and report["classification"] == "malicious"
    assert not rep.report(ipaddress.ip_address("198.51.100.9"), 0)["blocklisted"]


def test_state_is_bounded() -> None:
    rep = Reputation(max_ips=16, history=3)
    for i in range(100):
        addr = ipaddress.ip_address(f"203.0.113.{i}")
        for t in range(5):
            rep.apply(addr, ev("scan", str(addr), t, Severity.LOW))
    assert len(rep) == 16 and rep.evicted == 84
    assert len(rep.report(ipaddress.ip_address("203.0.113.99"), 5)["history"]) == 3


def test_classification_thresholds() -> None:
    assert [classify(s) for s in (0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0)] == [
        "malicious", "malicious", "suspicious", "suspicious", "neutral", "trusted", "trusted"]
