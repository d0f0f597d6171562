"""Alert pipeline: cooldown dedupe, severity floor, per-kind rules, handlers that cannot stall."""

from __future__ import annotations

import asyncio
import threading
import time

from garrison.config import AlertsConfig
from garrison.events import Severity
from garrison.respond.alerts import Alert, AlertPipeline

from .conftest import ev


def _wait(cond: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_cooldown_per_kind_and_address_counts_repeats() -> None:
    p = AlertPipeline(AlertsConfig(cooldown=10.0))
    got = [p.submit(ev("scan", "203.0.113.5", t)) for t in (0, 1, 2, 9.9, 10.0, 11)]
    assert [a is not None for a in got] == [True, False, False, False, True, False]
    assert got[4] is not None and got[4].suppressed == 3
    # Another address, or another kind, has its own cooldown.
    assert p.submit(ev("scan", "203.0.113.6", 1)) is not None
    assert p.submit(ev("honeypot", "203.0.113.5", 1)) is not None
    assert p.counters == {"alerts": 4, "suppressed": 4, "filtered": 0}


def test_min_severity_and_per_kind_rules() -> None:
    cfg = AlertsConfig.model_validate({
        "min_severity": "medium",
        "kinds": {"scan": {"min_severity": "high", "cooldown": 0},
                  "rate-limited": {"enabled": False}},
    })
    p = AlertPipeline(cfg)
    assert p.submit(ev("honeypot", "203.0.113.5", 0, Severity.LOW)) is None
    assert p.submit(ev("honeypot", "203.0.113.5", 0, Severity.MEDIUM)) is not None
    assert p.submit(ev("scan", "203.0.113.5", 0, Severity.MEDIUM)) is None
    assert p.submit(ev("scan", "203.0.113.5", 0, Severity.HIGH)) is not None
    assert p.submit(ev("scan", "203.0.113.5", 0, Severity.HIGH)) is not None  # cooldown 0
    assert p.submit(ev("rate-limited", "203.0.113.5", 0, Severity.CRITICAL)) is None


def test_a_stuck_handler_stalls_neither_detection_nor_other_handlers() -> None:
    p = AlertPipeline(AlertsConfig(cooldown=0, queue_size=5))
    release = threading.Event()
    fast: list[str] = []
    p.add_handler(lambda a: release.wait(30), name="stuck")
    p.add_handler(lambda a: fast.append(a.id), name="fast")

    def failing(a: Alert) -> None:
        raise RuntimeError("handler bug")

    p.add_handler(failing)
    for i in range(50):  # returns at once although "stuck" never finishes
        assert p.submit(ev("scan", "203.0.113.5", float(i))) is not None
        assert _wait(lambda n=i + 1: len(fast) == n)  # the fast handler keeps up meanwhile
    stats = p.stats()
    assert stats["dropped"] >= 40  # the stuck handler's queue overflowed, counted
    release.set()
    assert p.join(10)
    assert p.stats()["handler_failures"] == 50
    p.close()


def test_async_handlers_run() -> None:
    p = AlertPipeline(AlertsConfig(cooldown=0))
    got: list[str] = []

    async def handler(a: Alert) -> None:
        await asyncio.sleep(0)
        got.append(a.event.name)

    p.add_handler(handler)
    p.submit(ev("exfil", "203.0.113.5", 0))
    p.submit(ev("beacon", "2001:db8:2::5", 0))
    assert p.join(10)
    assert got == ["exfil", "beacon"]
    p.close()
