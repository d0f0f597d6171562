"""SQLite persistence of events and per-IP summaries.

WAL mode, one transaction per event: a ``kill -9`` in the middle of writing loses at most the
event in flight and never corrupts the file (SQLite's journal guarantees it; the tests kill a
writer and check). The schema is versioned; :data:`MIGRATIONS` upgrades older files in place.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from garrison.events import Event

# Each entry upgrades the schema from version i to i+1. Append only.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        name TEXT NOT NULL,
        severity INTEGER NOT NULL,
        actor TEXT,
        episode TEXT,
        doc TEXT NOT NULL
    );
    CREATE INDEX events_actor_ts ON events(actor, ts);
    CREATE INDEX events_name_ts ON events(name, ts);
    CREATE TABLE ip_summary (
        ip TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        event_count INTEGER NOT NULL,
        max_severity INTEGER NOT NULL,
        last_event TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE ip_summary ADD COLUMN kinds TEXT NOT NULL DEFAULT '{}';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The database cannot be opened or is newer than this Garrison."""


class SQLiteStore:
    """Events and per-IP summaries in one SQLite file (thread-safe, one connection)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open database: {exc}") from None

    @property
    def version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            db.execute("INSERT INTO schema_version VALUES (0)")
        current = self.version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this Garrison "
                f"({SCHEMA_VERSION}); upgrade Garrison"
            )
        for version in range(current, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (version + 1,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def __call__(self, event: Event) -> None:
        """Bus handler: persist one event and fold it into its actor's summary."""
        self.add(event)

    def add(self, event: Event) -> int:
        """Store ``event`` in its own transaction; returns its row id."""
        doc = event.to_json()
        actor = event.actor
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO events (ts, name, severity, actor, episode, doc) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event.ts, event.name, int(event.severity), actor, event.episode, doc),
                )
                if actor:
                    row = db.execute(
                        "SELECT kinds FROM ip_summary WHERE ip = ?", (actor,)
                    ).fetchone()
                    kinds: dict[str, int] = json.loads(row[0]) if row else {}
                    kinds[event.name] = kinds.get(event.name, 0) + 1
                    db.execute(
                        """INSERT INTO ip_summary
                               (ip, first_seen, last_seen, event_count, max_severity,
                                last_event, kinds)
                           VALUES (?, ?, ?, 1, ?, ?, ?)
                           ON CONFLICT(ip) DO UPDATE SET
                               first_seen = MIN(first_seen, excluded.first_seen),
                               last_seen = MAX(last_seen, excluded.last_seen),
                               event_count = event_count + 1,
                               max_severity = MAX(max_severity, excluded.max_severity),
                               last_event = excluded.last_event,
                               kinds = excluded.kinds""",
                        (actor, event.ts, event.ts, int(event.severity), event.name,
                         json.dumps(kinds)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

    def events(
        self, actor: str | None = None, name: str | None = None, limit: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Stored events (ECS documents), newest first, optionally for one actor or name."""
        sql = "SELECT doc FROM events"
        where, args = [], []
        if actor is not None:
            where.append("actor = ?")
            args.append(actor)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        for (doc,) in rows:
            yield json.loads(doc)

    def summary(self, ip: str) -> dict[str, Any] | None:
        """The per-IP summary of ``ip`` or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT ip, first_seen, last_seen, event_count, max_severity, last_event, kinds "
                "FROM ip_summary WHERE ip = ?", (ip,),
            ).fetchone()
        if row is None:
            return None
        keys = ("ip", "first_seen", "last_seen", "event_count", "max_severity", "last_event")
        out = dict(zip(keys, row[:6], strict=True))
        out["kinds"] = json.loads(row[6])
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
