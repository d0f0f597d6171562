"""The NDJSON event log: one Elastic Common Schema document per line.

Each line is written and flushed as the event arrives, so a reader tailing the file (or a
shipper such as Filebeat) sees it at once, and a crash loses at most the line in flight. A
failing disk is reported once per minute and counted, never raised into detection.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import IO

from garrison.events import Event

log = logging.getLogger("garrison.respond.ndjson")


class NDJSONLog:
    """Appends events to ``path`` (``"-"``: standard output) as ECS NDJSON."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.failures = 0
        self._last_error = 0.0

    def _open(self) -> IO[str]:
        if self._fh is None:
            if self.path == "-":
                self._fh = sys.stdout
            else:
                p = Path(self.path)
                p.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(p, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        return self._fh

    def __call__(self, event: Event) -> None:
        """Bus handler: write one event."""
        line = event.to_json() + "\n"
        with self._lock:
            try:
                fh = self._open()
                fh.write(line)
                fh.flush()
                self.written += 1
            except OSError as exc:
                self.failures += 1
                now = time.monotonic()
                if now - self._last_error > 60:
                    self._last_error = now
                    log.error("cannot write event log %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None and self._fh is not sys.stdout:
                self._fh.close()
            self._fh = None
