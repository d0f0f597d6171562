"""Helpers for the response tests: events, configs, a service on a temporary SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from garrison import EventBus, Garrison, GarrisonConfig
from garrison.events import Event, Severity
from garrison.respond.service import ResponseService


def ev(name: str, ip: str, ts: float, severity: Severity = Severity.HIGH,
       **detail: Any) -> Event:
    """An event of kind ``name`` about ``ip`` at ``ts`` (seconds)."""
    return Event(name, ts, severity, detail={"ip": ip, **detail})


def config(tmp_path: Path, **sections: Any) -> GarrisonConfig:
    """A configuration with its database in ``tmp_path`` and no real firewall by default."""
    data: dict[str, Any] = {"db": str(tmp_path / "garrison.db"),
                            "firewall": {"backend": "none"}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GarrisonConfig.model_validate(data)


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Any]:
    """Build engines with the response service installed; closed at teardown."""
    made: list[ResponseService] = []

    def make(**sections: Any) -> tuple[Garrison, ResponseService, list[Event]]:
        from garrison.respond import install

        bus = EventBus()
        engine = Garrison(config(tmp_path, **sections), bus=bus)
        seen: list[Event] = []
        bus.on("*", seen.append)
        svc = install(engine)
        made.append(svc)
        return engine, svc, seen

    yield make
    for svc in made:
        svc.close()
