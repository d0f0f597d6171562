"""The honeypot component: asyncio listeners on the decoy ports, one bounded session each.

Admission is capped (``max_sessions`` in total, ``max_sessions_per_source`` per source): a
connection over a cap is reset at once, so a flood costs at most the capped number of sessions
(descriptors: one each, two for an asyncssh-backed SSH session) plus one accept each. When
every slot is taken, a newcomer still gets in if another source holds more than its share:
that source's oldest session is ended instead (see :class:`.limits.SessionLimiter`). Each
session runs under a hard deadline (``session_timeout`` s) and an idle deadline
(``idle_timeout`` s). Every visit, admitted or not, is a ``honeypot`` event, subject to a
per-source event budget so a flood cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from garrison.config import HoneypotConfig
from garrison.events import Event
from garrison.sensors.honeypot import ports as portcheck
from garrison.sensors.honeypot.catalog import AUTO_CANDIDATES, plan_ports
from garrison.sensors.honeypot.limits import EventBudget, SessionLimiter, source_key
from garrison.sensors.honeypot.report import Visit, honeypot_event
from garrison.sensors.honeypot.services import Decoy, decoys
from garrison.sensors.honeypot.session import Session, SessionEnd

if TYPE_CHECKING:
    from garrison.engine import Garrison

log = logging.getLogger("garrison.honeypot")

#: Bytes a connection may have buffered before its reads pause (per session).
READ_BUFFER = 8192
_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@dataclass(slots=True)
class _Live:
    """A session in progress, so a fair-share eviction can end it."""

    writer: asyncio.StreamWriter
    evicted: bool = False


def _plain_ip(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class HoneypotComponent:
    """Serves the configured decoys until stopped; emits one event per visit.

    ``emit`` receives the events (``start(engine)`` sets it to ``engine.emit``); ``clock``
    gives event timestamps (seconds since the epoch); ``candidates``, ``wanted`` and
    ``proc_net`` drive the ``auto`` choice (see :mod:`.ports`).
    """

    name = "honeypot"

    def __init__(
        self,
        config: HoneypotConfig,
        *,
        emit: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
        candidates: Iterable[int] = AUTO_CANDIDATES,
        wanted: Callable[[int], bool] = portcheck.installed,
        proc_net: str = "/proc/net",
    ) -> None:
        self.config = config
        self._emit = emit
        self._clock = clock
        self._candidates = tuple(candidates)
        self._wanted = wanted
        self._proc_net = proc_net
        self._limiter = SessionLimiter(config.max_sessions, config.max_sessions_per_source)
        self._budget = EventBudget(
            config.events_per_source, config.event_window, config.max_sources
        )
        self._decoys = decoys(config.ssh_auth)
        self._servers: dict[int, list[asyncio.Server]] = {}
        self._services: dict[int, str] = {}
        self._auto: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: dict[str, deque[_Live]] = {}
        self._recheck: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self.stats: dict[str, int] = {
            "sessions": 0, "rejected": 0, "events": 0, "suppressed": 0, "errors": 0,
            "bind_failures": 0, "released": 0, "evicted": 0,
        }

    # -- public view ------------------------------------------------------------------------
    @property
    def services(self) -> Mapping[int, str]:
        """Port -> service name for every port being served now."""
        return dict(self._services)

    @property
    def active_sessions(self) -> int:
        return self._limiter.active

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, engine: Garrison) -> None:
        """Start serving, publishing events with ``engine.emit``."""
        if self._emit is None:
            self._emit = engine.emit
        await self.open()

    async def open(self) -> None:
        """Bind every planned port; returns once they are all listening (or failed)."""
        cfg = self.config
        plan = plan_ports(cfg.ports, cfg.services, cfg.exclude)
        if cfg.auto:
            auto = portcheck.choose_auto_ports(
                (p for p in self._candidates if p not in plan),
                cfg.exclude,
                listening=portcheck.listening_ports(self._proc_net),
                bindable=lambda p: portcheck.can_bind(p, cfg.bind),
                wanted=self._wanted,
            )
            for port in auto:
                plan[port] = plan_ports([port], {})[port]
            self._auto = set(auto)
        for port, service in sorted(plan.items()):
            await self._listen(port, self._decoys[service])
        if self._auto and cfg.recheck_interval > 0:
            self._recheck = asyncio.create_task(self._recheck_loop())
        log.info("honeypot serving %s", ", ".join(f"{p}/{s}" for p, s in self._services.items()))

    async def stop(self) -> None:
        """Stop listening and end every session."""
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
        for port in list(self._servers):
            await self._close_port(port)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, port: int, decoy: Decoy) -> None:
        servers: list[asyncio.Server] = []

        def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> asyncio.Task[None]:
            return self._spawn(r, w, decoy)

        for addr in self.config.bind:
            try:
                server = await asyncio.start_server(
                    accept,
                    host=addr, port=port, reuse_address=True, limit=READ_BUFFER, backlog=256,
                )
            except OSError as exc:
                if exc.errno not in _UNAVAILABLE:
                    self.stats["bind_failures"] += 1
                    log.warning("honeypot cannot listen on [%s]:%d: %s", addr, port, exc)
                continue
            servers.append(server)
        if servers:
            self._servers[port] = servers
            self._services[port] = decoy.name

    async def _close_port(self, port: int) -> None:
        for server in self._servers.pop(port, []):
            server.close()
        self._services.pop(port, None)

    def _our_inodes(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for port, servers in self._servers.items():
            for server in servers:
                for sock in server.sockets:
                    out.setdefault(port, set()).add(os.fstat(sock.fileno()).st_ino)
        return out

    async def recheck(self) -> list[int]:
        """Give back every auto port a real service now wants; returns the ports released."""
        foreign = portcheck.foreign_listeners(self._our_inodes(), self._proc_net)
        released = [p for p in sorted(self._auto) if p in foreign or self._wanted(p)]
        for port in released:
            await self._close_port(port)
            self._auto.discard(port)
            self.stats["released"] += 1
            log.warning("honeypot released auto port %d: a real service wants it", port)
        return released

    async def _recheck_loop(self) -> None:
        while self._auto:
            await asyncio.sleep(self.config.recheck_interval)
            try:
                await self.recheck()
            except Exception:
                log.exception("honeypot port re-check failed")

    # -- sessions ---------------------------------------------------------------------------
    def _spawn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoy: Decoy
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._session(reader, writer, decoy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoy: Decoy
    ) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        if not peer or not local:
            writer.transport.abort()
            return
        ip, peer_port = _plain_ip(peer[0]), int(peer[1])
        local_ip, local_port = _plain_ip(local[0]), int(local[1])
        key = source_key(ip)
        ts = self._clock()
        session = Session(
            reader, writer, service=decoy.name, max_capture=self.config.max_capture_bytes,
            max_input=self.config.max_input_bytes, idle_timeout=self.config.idle_timeout,
            peer_ip=ip, local_ip=local_ip, local_port=local_port,
        )
        session.banner = decoy.banner
        admitted, victim = self._limiter.acquire(key)
        if not admitted:
            self.stats["rejected"] += 1
            writer.transport.abort()  # reset now: a flood must not hold our descriptors
            self._report(Visit(ip, peer_port, local_ip, local_port, ts, 0.0, "limit",
                               self._session_id()), session, key)
            return
        if victim is not None:
            self._evict(victim)
        live = _Live(writer)
        self._live.setdefault(key, deque()).append(live)
        self.stats["sessions"] += 1
        started = time.monotonic()
        closed = "done"
        try:
            async with asyncio.timeout(self.config.session_timeout):
                await decoy.serve(session)
        except SessionEnd as end:
            closed = end.reason
        except TimeoutError:
            closed = "timeout"
        except (ConnectionError, OSError):
            closed = "reset"
        except asyncio.CancelledError:
            closed = "shutdown"
            raise
        except Exception:
            # A decoy bug must not take the listener down; the visit is still reported.
            self.stats["errors"] += 1
            closed = "error"
            log.exception("honeypot %s decoy failed", decoy.name)
        finally:
            queue = self._live.get(key)
            if queue is not None:
                queue.remove(live)
                if not queue:
                    del self._live[key]
            self._limiter.release(key, evicted=live.evicted)
            if live.evicted:
                closed = "evicted"
            if closed in ("timeout", "reset", "evicted"):
                writer.transport.abort()
            else:
                writer.close()
            self._report(
                Visit(ip, peer_port, local_ip, local_port, ts, time.monotonic() - started,
                      closed, self._session_id()),
                session, key,
            )

    def _evict(self, key: str) -> None:
        """End the oldest session of ``key`` at once (fair share when every slot is taken)."""
        for live in self._live.get(key, ()):
            if not live.evicted:
                live.evicted = True
                self.stats["evicted"] += 1
                live.writer.transport.abort()
                return

    def _session_id(self) -> str:
        return f"hp-{self._prefix}-{next(self._ids)}"

    def _report(self, visit: Visit, session: Session, key: str) -> None:
        emit_ok, suppressed = self._budget.admit(key, visit.ts)
        if not emit_ok:
            self.stats["suppressed"] += 1
            return
        if suppressed:
            visit = Visit(**{**_fields(visit), "suppressed": suppressed})
        event = honeypot_event(visit, session)
        self.stats["events"] += 1
        if self._emit is not None:
            try:
                self._emit(event)
            except Exception:
                log.exception("honeypot event handler failed")


def _fields(visit: Visit) -> dict[str, Any]:
    return {name: getattr(visit, name) for name in Visit.__slots__}
