"""The middleware fed by the correlator's real reputation (issue 5) through the adapter."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from garrison.bus import EventBus
from garrison.events import HONEYPOT, Event, Severity
from garrison.web.verdict import ReputationSource
from tests.web import scenarios as sc
from tests.web.conftest import FakeClock

reputation_mod = pytest.importorskip("garrison.correlate.reputation")
blocklist_mod = pytest.importorskip("garrison.correlate.blocklist")


def test_correlator_reputation_drives_the_verdict(serve_asgi: Callable[[Any], str],
                                                  clock: FakeClock) -> None:
    from garrison.web.reputation import CorrelateReputation

    lists = blocklist_mod.Blocklists(
        [blocklist_mod.Blocklist.from_lines("drop", ["192.0.2.0/28"])])
    rep = reputation_mod.Reputation(blocklists=lists)
    for _ in range(3):  # an address that keeps touching honeypots
        rep.apply(ipaddress.ip_address("203.0.113.66"),
                  Event(HONEYPOT, clock(), Severity.HIGH, source_ip="203.0.113.66"))
    source = CorrelateReputation(rep, clock=clock)
    assert isinstance(source, ReputationSource)
    assert source.score("198.51.100.1") is None  # unknown: no evidence either way
    assert source.is_blocklisted("192.0.2.5") and not source.is_blocklisted("192.0.2.99")
    bad = source.score("203.0.113.66")
    assert bad is not None and bad < 0.2
    base = serve_asgi(sc.starlette_app(bus=EventBus(), clock=clock, reputation=source,
                                       trusted_proxies=["127.0.0.1"]))
    with httpx.Client(timeout=10) as http:
        def get(ip: str) -> httpx.Response:
            return http.get(base + "/api/status", headers={"x-forwarded-for": ip})

        r = get("192.0.2.5")
        assert r.status_code == 403 and r.json()["reason"] == "blocklist"
        assert get("198.51.100.1").status_code == 200
        low = get("203.0.113.66")  # bad reputation lowers trust (not below min_trust alone)
        ok = get("198.51.100.2")
        assert low.status_code == 200 and ok.status_code == 200
        assert low.json()["trust"] < ok.json()["trust"]
