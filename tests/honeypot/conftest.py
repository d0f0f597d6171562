"""Fixtures: the honeypot running inside a defended network namespace, seen from outside.

The decoys run in a child process (``serve_decoys.py``) inside the defended namespace; events
are read back from the NDJSON file it writes. Everything is torn down with the namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.netns import Topology, require_root_tools, topology

SERVE = Path(__file__).with_name("serve_decoys.py")

#: The standard decoy set: every port is one a scanner probes, services guessed from the port.
STANDARD_PORTS = [21, 22, 23, 25, 80, 3306, 3389, 5432, 5900, 6379, 9200, 2222, 8080]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded by ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def complete_lines(text: str) -> list[dict[str, Any]]:
    """The NDJSON documents of ``text``, ignoring a last line still being written."""
    lines = text.split("\n")[:-1]  # the part after the last newline is incomplete (or "")
    return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Decoys:
    """A running honeypot process in ``topo.defended`` and the file its events go to."""

    topo: Topology
    proc: subprocess.Popen[bytes]
    events_path: Path
    services: dict[int, str]
    pid: int
    stderr: IO[bytes] | None = None

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return complete_lines(self.events_path.read_text(encoding="utf-8"))

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first event (ECS document) for which ``match`` is true."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.events() if match(e)), None)

        found: dict[str, Any] = wait_for(find, timeout, "a matching honeypot event")
        return found

    def outside(
        self, args: Sequence[str], timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the outside namespace. ``input`` is fed as bytes (latin-1, so
        ``"\\xff"`` is one byte) and the output decoded the same way."""
        if input is None:
            return self.topo.run(self.topo.outside, list(args), check=False, timeout=timeout)
        r = subprocess.run(
            ["ip", "netns", "exec", self.topo.outside, *args], input=input.encode("latin-1"),
            capture_output=True, timeout=timeout, check=False,
        )
        return subprocess.CompletedProcess(
            r.args, r.returncode, r.stdout.decode("latin-1"), r.stderr.decode("latin-1")
        )


def start_decoys(topo: Topology, config: dict[str, Any], workdir: Path) -> Decoys:
    events = workdir / "events.ndjson"
    ready = workdir / "ready.json"
    stderr = open(workdir / "decoys.log", "wb")  # noqa: SIM115 - closed by stop_decoys
    proc = topo.popen(
        topo.defended,
        [sys.executable, str(SERVE), json.dumps(config), str(events), str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )

    def is_ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                "honeypot process exited: " + (workdir / "decoys.log").read_text()
            )
        return ready.exists()

    wait_for(is_ready, 20.0, "the honeypot to listen")
    info = json.loads(ready.read_text())
    return Decoys(topo, proc, events, {int(k): v for k, v in info["services"].items()},
                  int(info["pid"]), stderr)


def stop_decoys(decoys: Decoys) -> None:
    if decoys.proc.poll() is None:
        os.kill(decoys.pid, signal.SIGTERM)
        try:
            decoys.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            decoys.proc.kill()
            decoys.proc.wait(timeout=10)
    if decoys.stderr is not None:
        decoys.stderr.close()


@pytest.fixture(scope="module")
def decoys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decoys]:
    """The standard decoy set in a fresh defended namespace (shared by a test module)."""
    require_root_tools()
    workdir = tmp_path_factory.mktemp("honeypot")
    config = {"ports": STANDARD_PORTS, "services": {"2525": "smtp"}}
    with topology(prefix="gh") as topo:
        d = start_decoys(topo, config, workdir)
        try:
            yield d
        finally:
            stop_decoys(d)
