"""Runs the honeypot in this process (tests start it inside a network namespace).

Usage: ``python serve_decoys.py CONFIG_JSON EVENTS_PATH READY_PATH``. CONFIG_JSON is the
``[honeypot]`` section as JSON. Each event is appended to EVENTS_PATH as one NDJSON line (the
ECS form of the log); READY_PATH gets ``{"services": {port: name}, "pid": ...}`` once every
listener is up. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from garrison.config import HoneypotConfig
from garrison.events import Event
from garrison.sensors.honeypot import HoneypotComponent


async def main(config_json: str, events_path: str, ready_path: str) -> None:
    config = HoneypotConfig.model_validate(json.loads(config_json))
    out = open(events_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def emit(event: Event) -> None:
        out.write(event.to_json() + "\n")

    component = HoneypotComponent(config, emit=emit)
    await component.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tmp = ready_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"services": component.services, "pid": os.getpid()}, f)
    os.replace(tmp, ready_path)
    await stop.wait()
    await component.stop()
    out.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
