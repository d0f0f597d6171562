"""SQL firewall at the database: sees the final SQL the application sends and refuses injected
structure before it runs.

``protect(connection_or_engine, mode=...)`` wraps a DB-API connection (sqlite3, psycopg, ...;
the returned proxy's cursors check every ``execute``) or hooks a SQLAlchemy engine
(``before_cursor_execute``). Every SQL text is analysed by :mod:`garrison.guards.sqlanalysis`
(cached per text in a bounded LRU, so a parameterised query costs one dictionary lookup after
the first time). Modes:

- ``learn``: records the fingerprint of every clean query's shape; refuses injected structure.
- ``enforce``: refuses injected structure and any shape not learned.
- ``monitor``: refuses nothing; reports what ``enforce`` would have refused.

A refusal raises :class:`QueryBlocked` (before the query reaches the database) and emits a
``sql-injection`` event on the bus (default ``garrison.default_bus``); monitor mode emits the
event only.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from garrison.events import SQL_INJECTION, Event, Severity, Technique
from garrison.guards.sqlanalysis import Analysis, analyze

if TYPE_CHECKING:
    from garrison.bus import EventBus

__all__ = [
    "Mode",
    "ProtectedConnection",
    "ProtectedCursor",
    "QueryBlocked",
    "SQLFirewall",
    "firewall_of",
    "protect",
]

Mode = Literal["learn", "enforce", "monitor"]
MODES: Final = ("learn", "enforce", "monitor")
_T1190: Final = Technique("T1190", "Exploit Public-Facing Application", "TA0001", "Initial Access")


class QueryBlocked(Exception):
    """The firewall refused a query; ``reason``, ``fingerprint`` and ``sql`` say which and why.

    Subclasses :class:`Exception` only, so it is not mistaken for a database error."""

    def __init__(self, reason: str, fingerprint: str, sql: str) -> None:
        super().__init__(f"SQL firewall refused query ({reason}): {sql[:200]!r}")
        self.reason = reason
        self.fingerprint = fingerprint
        self.sql = sql


class SQLFirewall:
    """Checks SQL texts in one of the three modes (see module doc).

    ``dialect`` is a sqlglot dialect name (``"sqlite"``, ``"postgres"``, ``"mysql"``...).
    ``learned`` seeds the known fingerprints; at most ``max_shapes`` are kept (new shapes past
    that are not learned, and are counted in ``overflow``). ``cache_size`` bounds the per-text
    analysis cache (entries). ``clock`` gives event timestamps (seconds since the epoch).
    """

    def __init__(
        self,
        mode: Mode = "learn",
        *,
        dialect: str | None = None,
        learned: Iterable[str] = (),
        bus: EventBus | None = None,
        max_shapes: int = 10_000,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mode = mode
        self.dialect = dialect
        self.learned: dict[str, str] = dict.fromkeys(learned, "")
        self.max_shapes = max_shapes
        self.overflow = 0
        self.checked = 0
        self.refused = 0
        self.reported = 0
        self._bus = bus
        self._clock = clock
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def analyze(self, sql: str) -> Analysis:
        """The (cached) analysis of ``sql``."""
        with self._lock:
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
                return hit
        result = analyze(sql, self.dialect)
        with self._lock:
            self._cache[sql] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def check(self, sql: str | bytes) -> Analysis:
        """Judge ``sql`` in the current mode: returns its analysis, or raises
        :class:`QueryBlocked` (never in monitor mode)."""
        if isinstance(sql, bytes):
            sql = sql.decode("utf-8", "replace")
        self.checked += 1
        result = self.analyze(sql)
        reason: str | None = None
        if result.problems:
            reason = "; ".join(result.problems)
        elif self._mode == "learn":
            self._learn(result)
        elif result.fingerprint not in self.learned:
            reason = f"query shape {result.fingerprint} was not learned"
        if reason is None:
            return result
        self._report(reason, result, sql)
        if self._mode == "monitor":
            self.reported += 1
            return result
        self.refused += 1
        raise QueryBlocked(reason, result.fingerprint, sql)

    def _learn(self, result: Analysis) -> None:
        if result.fingerprint in self.learned:
            return
        if len(self.learned) >= self.max_shapes:
            self.overflow += 1
            return
        self.learned[result.fingerprint] = result.shape

    def save(self, path: str | Path) -> None:
        """Write the learned shapes (fingerprint -> normalised SQL) as JSON."""
        Path(path).write_text(json.dumps(self.learned, indent=1, sort_keys=True) + "\n")

    def load(self, path: str | Path) -> None:
        """Add the shapes saved by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of fingerprint -> shape")
        for fingerprint, shape in data.items():
            if len(self.learned) >= self.max_shapes:
                self.overflow += 1
                break
            self.learned[str(fingerprint)] = str(shape)

    def _report(self, reason: str, result: Analysis, sql: str) -> None:
        bus = self._bus
        if bus is None:
            from garrison import default_bus

            bus = default_bus
        bus.emit(
            Event(
                name=SQL_INJECTION,
                ts=self._clock(),
                severity=Severity.HIGH if result.problems else Severity.MEDIUM,
                detail={
                    "layer": "database",
                    "mode": self._mode,
                    "reason": reason,
                    "fingerprint": result.fingerprint,
                    "query": sql[:512],
                    "blocked": self._mode != "monitor",
                },
                techniques=(_T1190,),
                message=f"SQL firewall ({self._mode}): {reason}",
            )
        )


def _sql_text(operation: Any, raw: Any) -> str:
    if isinstance(operation, str):
        return operation
    if isinstance(operation, bytes):
        return operation.decode("utf-8", "replace")
    as_string = getattr(operation, "as_string", None)  # psycopg.sql.Composed
    if callable(as_string):
        return str(as_string(raw))
    return str(operation)


class ProtectedCursor:
    """A DB-API cursor whose ``execute``/``executemany`` pass the firewall first; everything
    else is the wrapped cursor's."""

    def __init__(self, cursor: Any, firewall: SQLFirewall, raw_connection: Any) -> None:
        self._cursor = cursor
        self._firewall = firewall
        self._raw = raw_connection

    def execute(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        self._firewall.check(_sql_text(operation, self._raw))
        result = self._cursor.execute(operation, *args, **kwargs)
        return self if result is self._cursor else result

    def executemany(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        self._firewall.check(_sql_text(operation, self._raw))
        result = self._cursor.executemany(operation, *args, **kwargs)
        return self if result is self._cursor else result

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)

    def __enter__(self) -> ProtectedCursor:
        self._cursor.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._cursor.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class ProtectedConnection:
    """A DB-API connection whose cursors (and the ``execute`` shortcuts of sqlite3) pass the
    firewall first; everything else is the wrapped connection's. ``firewall`` is public."""

    def __init__(self, connection: Any, firewall: SQLFirewall) -> None:
        self._connection = connection
        self.firewall = firewall

    def cursor(self, *args: Any, **kwargs: Any) -> ProtectedCursor:
        return ProtectedCursor(self._connection.cursor(*args, **kwargs), self.firewall,
                               self._connection)

    def execute(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = self.cursor()
        cursor.execute(operation, *args, **kwargs)
        return cursor

    def executemany(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = self.cursor()
        cursor.executemany(operation, *args, **kwargs)
        return cursor

    def executescript(self, script: str) -> Any:
        """sqlite3's script runner: each statement is checked on its own (a script is meant to
        hold several)."""
        import sqlglot
        from sqlglot.errors import SqlglotError

        try:
            statements = sqlglot.parse(script, read=self.firewall.dialect)
        except SqlglotError:
            statements = []
        if not statements:
            self.firewall.check(script)  # unparseable: judged as one text (lexical checks)
        for statement in statements:
            if statement is not None:
                self.firewall.check(statement.sql(dialect=self.firewall.dialect))
        return self._connection.executescript(script)

    def __enter__(self) -> ProtectedConnection:
        self._connection.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._connection.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


_ENGINE_FIREWALLS: weakref.WeakKeyDictionary[Any, SQLFirewall] = weakref.WeakKeyDictionary()


def firewall_of(target: Any) -> SQLFirewall:
    """The firewall that :func:`protect` attached to ``target`` (a protected connection or a
    hooked engine)."""
    if isinstance(target, ProtectedConnection):
        return target.firewall
    engine = getattr(target, "sync_engine", target)
    try:
        return _ENGINE_FIREWALLS[engine]
    except (KeyError, TypeError):
        raise ValueError(f"{target!r} is not protected by a SQL firewall") from None


def protect(
    connection_or_engine: Any,
    mode: Mode = "learn",
    *,
    firewall: SQLFirewall | None = None,
    dialect: str | None = None,
    bus: EventBus | None = None,
) -> Any:
    """Put a SQL firewall in front of a DB-API connection or a SQLAlchemy engine.

    Returns a :class:`ProtectedConnection` for a DB-API connection (use it instead of the
    original) or the same engine, hooked, for a SQLAlchemy ``Engine``/``AsyncEngine``. Pass
    ``firewall`` to share learned shapes between several connections; otherwise one is created
    with ``mode``, ``dialect`` (guessed from the driver when not given) and ``bus``.
    """
    target = connection_or_engine
    engine = _sqlalchemy_engine(target)
    if firewall is None:
        firewall = SQLFirewall(mode, dialect=dialect or _guess_dialect(target, engine), bus=bus)
    if engine is not None:
        _hook_engine(engine, firewall)
        return target
    if not callable(getattr(target, "cursor", None)):
        raise TypeError(f"expected a DB-API connection or a SQLAlchemy engine, got {target!r}")
    return ProtectedConnection(target, firewall)


def _sqlalchemy_engine(target: Any) -> Any:
    try:
        from sqlalchemy.engine import Engine
    except ImportError:
        return None
    engine = getattr(target, "sync_engine", target)
    return engine if isinstance(engine, Engine) else None


def _hook_engine(engine: Any, firewall: SQLFirewall) -> None:
    from sqlalchemy import event

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
        executemany: bool,
    ) -> None:
        firewall.check(statement)

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    _ENGINE_FIREWALLS[engine] = firewall


def _guess_dialect(target: Any, engine: Any) -> str | None:
    if engine is not None:
        name = str(engine.dialect.name)
        return {"postgresql": "postgres", "mssql": "tsql"}.get(name, name)
    module = type(target).__module__.split(".")[0]
    return {
        "sqlite3": "sqlite", "psycopg": "postgres", "psycopg2": "postgres",
        "pymysql": "mysql", "MySQLdb": "mysql", "mysql": "mysql", "pyodbc": "tsql",
        "oracledb": "oracle", "duckdb": "duckdb",
    }.get(module)
