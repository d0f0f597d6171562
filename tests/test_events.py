"""Event records, their ECS/NDJSON form, and the subscription API."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

import garrison
from garrison.bus import EventBus
from garrison.events import SCAN, Event, Severity, Technique, community_id


def scan_event(**detail: object) -> Event:
    return Event(SCAN, 1795371636.5, Severity.HIGH, source_ip="203.0.113.50",
                 destination_ip="198.51.100.1", transport="tcp",
                 detail={"ip": "203.0.113.50", "type": "syn", **detail},
                 techniques=(Technique("T1046", "Network Service Discovery", "TA0007",
                                       "Discovery"),), episode="e1", message="syn scan")


def test_ecs_document() -> None:
    doc = scan_event(port_count=3).to_ecs()
    assert doc["@timestamp"] == "2026-11-22T18:20:36.500Z"
    assert doc["ecs"]["version"].startswith("8.")
    assert doc["event"]["action"] == "scan"
    assert doc["event"]["kind"] == "alert"
    assert "intrusion_detection" in doc["event"]["category"]
    assert doc["event"]["severity"] == 73
    assert doc["source"]["ip"] == "203.0.113.50"
    assert doc["destination"]["ip"] == "198.51.100.1"
    assert doc["network"]["transport"] == "tcp"
    assert "community_id" not in doc["network"]  # no ports: not one flow
    assert doc["threat"] == {
        "framework": "MITRE ATT&CK",
        "tactic": {"id": ["TA0007"], "name": ["Discovery"]},
        "technique": {"id": ["T1046"], "name": ["Network Service Discovery"]},
    }
    assert doc["garrison"]["type"] == "syn"
    assert doc["garrison"]["episode"] == "e1"


def test_community_id_matches_the_spec_vectors() -> None:
    # From the Community ID spec's baseline (corelight/community-id-spec, tcp.pcap).
    assert community_id("128.232.110.120", "66.35.250.204", 34855, 80, "tcp") == \
        "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    # Direction does not matter.
    assert community_id("66.35.250.204", "128.232.110.120", 80, 34855, "tcp") == \
        "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("198.51.100.1", "2001:db8::1", 1, 2, "tcp") is None


def test_ndjson_line_cannot_be_injected() -> None:
    line = scan_event(note="evil\n{\"event\":{\"action\":\"fake\"}}").to_json()
    assert "\n" not in line
    assert json.loads(line)["garrison"]["note"].startswith("evil\n")


def test_unknown_event_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event name"):
        Event("scna", 0.0, Severity.LOW)
    with pytest.raises(ValueError, match="unknown event name"):
        EventBus().on("scna", print)


def test_sync_and_async_handlers_and_isolation(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[str] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("handler bug")

    async def later(ev: Event) -> None:
        await asyncio.sleep(0)
        got.append("async")

    bus.on("scan", broken)
    bus.on("scan", lambda ev: got.append("sync"))
    bus.on("scan", later)
    bus.on("*", lambda ev: got.append("any"))
    with caplog.at_level(logging.ERROR):
        bus.emit(scan_event())  # no running loop: the async handler runs to completion here
    assert got == ["sync", "async", "any"]
    assert bus.handler_errors == 1
    assert "handler bug" in caplog.text


async def test_async_handlers_on_a_running_loop() -> None:
    bus = EventBus()
    got: list[int] = []

    async def slow(ev: Event) -> None:
        await asyncio.sleep(0.01)
        got.append(1)

    async def failing(ev: Event) -> None:
        raise ValueError("async bug")

    bus.on("scan", slow)
    bus.on("scan", failing)
    bus.emit(scan_event())
    assert got == []  # scheduled, not awaited inline: detection never waits for handlers
    await bus.drain()
    assert got == [1]
    assert bus.handler_errors == 1


def test_module_level_on_uses_the_default_bus() -> None:
    got: list[Event] = []
    handler = garrison.on("scan", got.append)
    try:
        engine = garrison.Garrison()
        engine.emit(scan_event())
        assert len(got) == 1
    finally:
        garrison.default_bus.off("scan", handler)


def test_decorator_form() -> None:
    bus = EventBus()
    got: list[str] = []

    @bus.on("scan")
    def handler(ev: Event) -> None:
        got.append(ev.name)

    bus.emit(scan_event())
    assert got == ["scan"]
