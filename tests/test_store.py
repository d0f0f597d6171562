"""SQLite persistence: schema versions, summaries, and a writer killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from garrison.events import SCAN, Event, Severity
from garrison.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError


def ev(i: int, ip: str = "203.0.113.50", sev: Severity = Severity.MEDIUM) -> Event:
    return Event(SCAN, 1000.0 + i, sev, source_ip=ip, detail={"ip": ip, "n": i}, episode=f"e{i}")


def test_events_and_summaries(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    for i in range(5):
        store.add(ev(i))
    store.add(ev(9, sev=Severity.CRITICAL))
    store.add(ev(10, ip="2001:db8:2::50"))
    assert store.count() == 7
    s = store.summary("203.0.113.50")
    assert s is not None
    assert s["event_count"] == 6
    assert s["max_severity"] == int(Severity.CRITICAL)
    assert s["first_seen"] == 1000.0 and s["last_seen"] == 1009.0
    assert s["kinds"] == {"scan": 6}
    newest = next(store.events(actor="203.0.113.50"))
    assert newest["garrison"]["n"] == 9
    store.close()
    reopened = SQLiteStore(tmp_path / "g.db")
    assert reopened.count() == 7
    assert reopened.version == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / "g.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_migrates_a_version_one_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (1);
        CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, name TEXT NOT NULL,
            severity INTEGER NOT NULL, actor TEXT, episode TEXT, doc TEXT NOT NULL);
        CREATE TABLE ip_summary (ip TEXT PRIMARY KEY, first_seen REAL NOT NULL,
            last_seen REAL NOT NULL, event_count INTEGER NOT NULL,
            max_severity INTEGER NOT NULL, last_event TEXT NOT NULL);
        INSERT INTO ip_summary VALUES ('203.0.113.9', 1, 2, 3, 2, 'scan');
        """
    )
    db.close()
    store = SQLiteStore(path)
    assert store.version == SCHEMA_VERSION
    s = store.summary("203.0.113.9")
    assert s is not None and s["event_count"] == 3 and s["kinds"] == {}
    store.add(ev(1, ip="203.0.113.9"))
    s = store.summary("203.0.113.9")
    assert s is not None and s["event_count"] == 4


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this Garrison"):
        SQLiteStore(path)


WRITER = """
import sys, itertools
from garrison.events import SCAN, Event, Severity
from garrison.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
for i in itertools.count():
    store.add(Event(SCAN, 1000.0 + i, Severity.LOW, source_ip="203.0.113.%d" % (i % 200),
                    detail={"ip": "203.0.113.%d" % (i % 200), "n": i, "pad": "x" * 500}))
    print(i, flush=True)
"""


@pytest.mark.parametrize("run", range(3))
def test_kill_9_mid_write_loses_at_most_the_event_in_flight(tmp_path: Path, run: int) -> None:
    path = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    last = -1
    deadline = time.monotonic() + 30
    while last < 300 + run * 250 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        last = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # The writer runs ahead of this reader: what it printed before the kill is still in the
    # pipe, and the newest of those is the last write that returned.
    for line in proc.stdout.read().splitlines():
        if line.strip().isdigit():
            last = int(line)
    assert last >= 300
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    # Every event whose write returned is there; at most the one in flight beyond it.
    assert last + 1 <= count <= last + 2
    total = db.execute("SELECT SUM(event_count) FROM ip_summary").fetchone()[0]
    assert total == count  # the summary and the event were committed together
    doc = json.loads(db.execute("SELECT doc FROM events ORDER BY id DESC").fetchone()[0])
    assert doc["event"]["action"] == "scan"
