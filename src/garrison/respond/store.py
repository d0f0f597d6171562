"""SQLite persistence for the response side: blocks, actions, events per IP, alerts, reputation.

Tables are Garrison-response's own (prefix ``response_``) in the same database file as the rest
of Garrison, with their own ``response_schema_version``; the file is opened in WAL mode so the
daemon writes while ``garrison investigate`` reads. Event and alert rows are capped at
``max_rows`` each (oldest dropped first), so an outside flood costs bounded disk.
One connection, guarded by a lock: the firewall may write from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS response_schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS response_blocks (
    ip TEXT PRIMARY KEY, until REAL NOT NULL, created REAL NOT NULL, reason TEXT NOT NULL,
    offences INTEGER NOT NULL DEFAULT 1, active INTEGER NOT NULL DEFAULT 1,
    dry_run INTEGER NOT NULL DEFAULT 0, backend TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS response_actions (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, ip TEXT NOT NULL, action TEXT NOT NULL,
    duration REAL, reason TEXT NOT NULL, dry_run INTEGER NOT NULL, backend TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS response_actions_ip ON response_actions (ip);
CREATE TABLE IF NOT EXISTS response_events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, ip TEXT NOT NULL, name TEXT NOT NULL,
    severity TEXT NOT NULL, verified INTEGER NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS response_events_ip ON response_events (ip, ts);
CREATE TABLE IF NOT EXISTS response_alerts (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, ip TEXT, name TEXT NOT NULL,
    severity TEXT NOT NULL, suppressed INTEGER NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS response_alerts_ip ON response_alerts (ip, ts);
CREATE TABLE IF NOT EXISTS response_reputation (
    ip TEXT PRIMARY KEY, score REAL NOT NULL, at REAL NOT NULL, events INTEGER NOT NULL,
    blocklists TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS response_killchain (
    ip TEXT NOT NULL, stage TEXT NOT NULL, ts REAL NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (ip, stage)
);
"""


class ResponseStore:
    """The response tables in one SQLite file (``":memory:"`` for a private in-memory one)."""

    def __init__(self, path: str, *, max_rows: int = 200_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._inserts = 0
        with self._lock:
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT version FROM response_schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO response_schema_version VALUES (?)",
                                 (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path}: response schema version {row[0]} is newer than this Garrison "
                    f"({SCHEMA_VERSION})"
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction for every write inside (re-entrant on the same thread)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    _tx = transaction

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -----------------------------------------------------------------------------
    def add_event(self, ts: float, ip: str, name: str, severity: str, verified: bool,
                  doc: Mapping[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_events (ts, ip, name, severity, verified, doc) "
                "VALUES (?,?,?,?,?,?)",
                (ts, ip, name, severity, int(verified), _dumps(doc)),
            )
            self._prune(db, "response_events")

    def add_alert(self, ts: float, ip: str | None, name: str, severity: str, suppressed: int,
                  doc: Mapping[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_alerts (ts, ip, name, severity, suppressed, doc) "
                "VALUES (?,?,?,?,?,?)",
                (ts, ip, name, severity, suppressed, _dumps(doc)),
            )
            self._prune(db, "response_alerts")

    def _prune(self, db: sqlite3.Connection, table: str) -> None:
        self._inserts += 1
        if self._inserts % 1000 == 0:
            db.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",
                (self.max_rows,),
            )

    def set_reputation(self, ip: str, score: float, at: float, events: int,
                       blocklists: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_reputation VALUES (?,?,?,?,?) ON CONFLICT(ip) DO UPDATE "
                "SET score=excluded.score, at=excluded.at, events=excluded.events, "
                "blocklists=excluded.blocklists",
                (ip, score, at, events, json.dumps(blocklists)),
            )

    def set_stage(self, ip: str, stage: str, ts: float, event: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_killchain VALUES (?,?,?,?) ON CONFLICT(ip, stage) DO "
                "UPDATE SET ts=MAX(ts, excluded.ts), event=excluded.event",
                (ip, stage, ts, event),
            )

    def record_block(self, ip: str, until: float, created: float, reason: str,
                     offences: int, dry_run: bool, backend: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_blocks VALUES (?,?,?,?,?,1,?,?) ON CONFLICT(ip) DO UPDATE "
                "SET until=excluded.until, created=excluded.created, reason=excluded.reason, "
                "offences=excluded.offences, active=1, dry_run=excluded.dry_run, "
                "backend=excluded.backend",
                (ip, until, created, reason, offences, int(dry_run), backend),
            )

    def end_block(self, ip: str) -> bool:
        """Mark ``ip``'s block inactive; True if it was active."""
        with self._tx() as db:
            cur = db.execute("UPDATE response_blocks SET active=0 WHERE ip=? AND active=1", (ip,))
            return cur.rowcount > 0

    def log_action(self, ts: float, ip: str, action: str, duration: float | None, reason: str,
                   dry_run: bool, backend: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO response_actions (ts, ip, action, duration, reason, dry_run, "
                "backend) VALUES (?,?,?,?,?,?,?)",
                (ts, ip, action, duration, reason, int(dry_run), backend),
            )

    # -- reads ------------------------------------------------------------------------------
    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def offences(self, ip: str) -> int:
        rows = self._all("SELECT offences FROM response_blocks WHERE ip=?", (ip,))
        return int(rows[0]["offences"]) if rows else 0

    def active_blocks(self, now: float) -> list[dict[str, Any]]:
        """Blocks still in force at ``now`` (seconds since the epoch)."""
        return self._all(
            "SELECT * FROM response_blocks WHERE active=1 AND until > ? ORDER BY until", (now,)
        )

    def expired_blocks(self, now: float) -> list[dict[str, Any]]:
        """Blocks still marked active whose time has run out at ``now``."""
        return self._all("SELECT * FROM response_blocks WHERE active=1 AND until <= ?", (now,))

    def block_of(self, ip: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM response_blocks WHERE ip=?", (ip,))
        return rows[0] if rows else None

    def actions(self, ip: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM response_actions WHERE ip=? ORDER BY id", (ip,))

    def events(self, ip: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM response_events WHERE ip=? ORDER BY id DESC LIMIT ?", (ip, limit)
        )
        for r in rows:
            r["doc"] = json.loads(r["doc"])
        return rows[::-1]

    def alerts(self, ip: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM response_alerts WHERE ip=? ORDER BY id DESC LIMIT ?", (ip, limit)
        )
        for r in rows:
            r["doc"] = json.loads(r["doc"])
        return rows[::-1]

    def reputation(self, ip: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM response_reputation WHERE ip=?", (ip,))
        if not rows:
            return None
        rows[0]["blocklists"] = json.loads(rows[0]["blocklists"])
        return rows[0]

    def stages(self, ip: str) -> dict[str, tuple[float, str]]:
        rows = self._all("SELECT stage, ts, event FROM response_killchain WHERE ip=?", (ip,))
        return {r["stage"]: (float(r["ts"]), str(r["event"])) for r in rows}


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, default=str, separators=(",", ":"))
