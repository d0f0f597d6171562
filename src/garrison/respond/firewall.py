"""The firewall responder: when to block, for how long, and keeping kernel and records agreed.

Auto-blocking follows one rule against weaponisation: evidence an off-path attacker can forge
with spoofed packets (half-open SYN scans, lone FIN/NULL/XMAS packets, UDP probes) lowers
reputation and raises alerts but blocks only when ``block_unverified`` is set or the same source
also showed evidence it could not forge (a completed TCP handshake: a connect scan, a honeypot
session, an HTTP request). An event is verified when its ``detail["verified"]`` is true, or,
without that key, when its kind can only come from a completed handshake (:data:`HANDSHAKE_KINDS`).

Durations are seconds. A repeat offender's block lasts ``block_duration * escalation **
(offences - 1)``, capped at ``max_block_duration``. Additions requested while a batch is being
applied are applied together in the next one. Every block and unblock is logged, recorded in
SQLite and published as a ``blocked`` / ``unblocked`` event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from garrison.config import FirewallConfig
from garrison.correlate.addresses import IPAddress, parse_ip
from garrison.correlate.attack import kind_of
from garrison.events import (
    BLOCKED,
    BOT_BLOCKED,
    CAMPAIGN_DETECTED,
    HONEYPOT,
    IMPOSSIBLE_TRAVEL,
    RATE_LIMITED,
    SCAN,
    SQL_INJECTION,
    SSRF_BLOCKED,
    UNBLOCKED,
    Event,
    Severity,
)
from garrison.respond.backend import Backend, FirewallError
from garrison.respond.guard import BlockGuard
from garrison.respond.store import ResponseStore

log = logging.getLogger("garrison.respond.firewall")

# Kinds that exist only after a completed TCP handshake (a honeypot session, an HTTP request).
HANDSHAKE_KINDS: Final = frozenset(
    {HONEYPOT, SQL_INJECTION, BOT_BLOCKED, RATE_LIMITED, IMPOSSIBLE_TRAVEL, SSRF_BLOCKED}
)


def is_verified(event: Event) -> bool:
    """True if the event's source address cannot have been forged by an off-path attacker.

    A scan counts only when the probes themselves completed handshakes (``type == "connect"``
    and ``verified``): a spoofed SYN scan naming a real client is marked ``verified`` by the
    detector as soon as that client makes one ordinary connection, and blocking on that would
    hand the attacker the weapon this rule exists to withhold.
    """
    flag = event.detail.get("verified")
    if event.name == SCAN:
        return flag is True and event.detail.get("type") == "connect"
    if isinstance(flag, bool):
        return flag
    return event.name in HANDSHAKE_KINDS


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """One block as applied (``until``: seconds since the epoch; ``duration``: seconds)."""

    ip: str
    until: float
    duration: float
    reason: str
    offences: int
    dry_run: bool
    backend: str


class FirewallResponder:
    """Blocks and unblocks addresses through a :class:`Backend`, under a :class:`BlockGuard`."""

    def __init__(
        self,
        config: FirewallConfig,
        backend: Backend,
        guard: BlockGuard,
        store: ResponseStore,
        *,
        emit: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_tracked: int = 100_000,
    ) -> None:
        self.config = config
        self.backend = backend
        self.guard = guard
        self.store = store
        self.emit = emit
        self.clock = clock
        self.max_tracked = max_tracked
        self._verified: OrderedDict[IPAddress, float] = OrderedDict()
        self._active: dict[IPAddress, float] = {}
        self._pending: dict[IPAddress, str] = {}
        self._punished: OrderedDict[str, None] = OrderedDict()
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {
            "blocked": 0, "unblocked": 0, "refused": 0, "withheld_unverified": 0, "errors": 0,
        }

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create Garrison's table/sets and reconcile them with the records (once, at start)."""
        if not self.config.dry_run:
            try:
                self.backend.setup()
            except (FirewallError, OSError) as exc:
                self.counters["errors"] += 1
                log.error("firewall setup failed (%s): blocks will be recorded only: %s",
                          self.backend.name, exc)
                return
        self.reconcile()

    def reconcile(self) -> None:
        """Make kernel and records agree: re-add recorded blocks the kernel lost (a reboot),
        adopt kernel entries we have no record of, retire records whose time ran out."""
        now = self.clock()
        self.sweep(now)
        kernel: dict[IPAddress, int] = {}
        if not self.config.dry_run and self.backend.kernel_expiry:
            try:
                kernel = self.backend.list()
            except (FirewallError, OSError, ValueError) as exc:
                log.error("cannot list firewall sets: %s", exc)
        missing: list[tuple[IPAddress, int]] = []
        for row in self.store.active_blocks(now):
            addr = parse_ip(row["ip"])
            self._active[addr] = float(row["until"])
            if not row["dry_run"] and addr not in kernel:
                missing.append((addr, math.ceil(float(row["until"]) - now)))
        for addr, expires in kernel.items():
            if addr not in self._active:
                until = now + expires
                self.store.record_block(str(addr), until, now, "reconciled from kernel",
                                        max(1, self.store.offences(str(addr))), False,
                                        self.backend.name)
                self._active[addr] = until
        if missing and not self.config.dry_run:
            log.info("re-adding %d recorded blocks missing from the kernel", len(missing))
            try:
                self.backend.add(missing)
            except (FirewallError, OSError) as exc:
                self.counters["errors"] += 1
                log.error("cannot restore blocks: %s", exc)

    # -- evidence and automatic blocks -----------------------------------------------------
    def note(self, addr: IPAddress, event: Event) -> None:
        """Remember that ``addr`` showed evidence it could not forge (bounded LRU)."""
        if is_verified(event):
            self._verified[addr] = event.ts
            self._verified.move_to_end(addr)
            while len(self._verified) > self.max_tracked:
                self._verified.popitem(last=False)

    def has_verified(self, addr: IPAddress) -> bool:
        return addr in self._verified

    def consider(self, addr: IPAddress, event: Event, score: float) -> bool:
        """Auto-block ``addr`` if ``event`` (with reputation ``score``) calls for it.

        Returns True if a block was requested."""
        cfg = self.config
        if not cfg.auto_block:
            return False
        if event.name != CAMPAIGN_DETECTED and not kind_of(event.name).detection:
            return False
        severe = event.severity >= Severity.parse(cfg.auto_block_severity)
        if not severe and score > cfg.auto_block_score:
            return False
        if self.is_active(addr):
            return False
        if event.episode is not None and event.episode in self._punished:
            # Later updates of an episode already answered with a block do not block again
            # (nor escalate) once that block has expired.
            return False
        if self.guard.refusal(addr) is not None:
            self.counters["refused"] += 1
            return False
        if not cfg.block_unverified and not self.has_verified(addr):
            self.counters["withheld_unverified"] += 1
            log.info("not blocking %s on %s: only forgeable (unverified) evidence so far",
                     addr, event.name)
            return False
        why = f"{event.name} ({event.severity.label}, reputation {score:.2f})"
        if event.episode is not None:
            self._punished[event.episode] = None
            while len(self._punished) > self.max_tracked:
                self._punished.popitem(last=False)
        self.request(addr, why)
        return True

    def is_active(self, addr: IPAddress) -> bool:
        until = self._active.get(addr)
        return until is not None and until > self.clock()

    def request(self, addr: IPAddress, reason: str) -> None:
        """Queue an automatic block; applied in this call (no event loop) or a batch soon."""
        self._pending[addr] = reason
        self._active[addr] = math.inf  # until applied: stops duplicate requests
        if self._flushing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flushing = True
        self._task = loop.create_task(self._flush_async())

    async def _flush_async(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                records = await asyncio.to_thread(self._apply, batch, None)
                self._published(batch, records)
        finally:
            self._flushing = False

    def flush(self) -> list[BlockRecord]:
        """Apply every queued block now, in one batch."""
        batch, self._pending = self._pending, {}
        records = self._apply(batch, None)
        self._published(batch, records)
        return records

    def _published(self, batch: dict[IPAddress, str], records: list[BlockRecord]) -> None:
        done = {r.ip for r in records}
        for addr in batch:
            if str(addr) not in done:
                self._active.pop(addr, None)
        for rec in records:
            self._active[parse_ip(rec.ip)] = rec.until
            self._publish(BLOCKED, rec.ip, asdict(rec), f"blocked {rec.ip}: {rec.reason}")

    def _apply(self, batch: dict[IPAddress, str], duration: float | None) -> list[BlockRecord]:
        if not batch:
            return []
        now = self.clock()
        cfg = self.config
        records = []
        for addr, reason in batch.items():
            offences = self.store.offences(str(addr)) + 1
            if duration is None:
                secs = cfg.block_duration * cfg.escalation ** (offences - 1)
                secs = min(secs, max(cfg.max_block_duration, cfg.block_duration))
            else:
                secs = duration
            records.append(BlockRecord(str(addr), now + secs, secs, reason, offences,
                                       cfg.dry_run, self.backend.name))
        if cfg.dry_run:
            for r in records:
                log.warning("dry run: would block %s for %.0f s: %s", r.ip, r.duration, r.reason)
        else:
            try:
                self.backend.add([(parse_ip(r.ip), math.ceil(r.duration)) for r in records])
            except (FirewallError, OSError) as exc:
                self.counters["errors"] += 1
                log.error("cannot block %s: %s", ", ".join(r.ip for r in records), exc)
                return []
        for r in records:
            self.store.record_block(r.ip, r.until, now, r.reason, r.offences, r.dry_run,
                                    r.backend)
            self.store.log_action(now, r.ip, "block", r.duration, r.reason, r.dry_run,
                                  r.backend)
            if not r.dry_run:
                log.warning("blocked %s for %.0f s (offence %d): %s", r.ip, r.duration,
                            r.offences, r.reason)
        self.counters["blocked"] += len(records)
        return records

    # -- manual -----------------------------------------------------------------------------
    def block(self, ip: object, duration: float | None = None,
              reason: str = "manual") -> BlockRecord:
        """Block ``ip`` now for ``duration`` seconds (default: escalating ``block_duration``).

        Raises :class:`~garrison.respond.guard.BlockRefused` for protected addresses,
        ValueError for anything that is not an IP address, FirewallError if the backend fails.
        """
        addr = self.guard.check(ip)
        if duration is not None and not (0 < duration <= 10 * 365 * 86400):
            raise ValueError(f"block duration must be 1 s .. 10 years, got {duration!r}")
        errors = self.counters["errors"]
        records = self._apply({addr: reason[:200]}, duration)
        if not records:
            raise FirewallError(f"could not block {addr} (see log; {errors + 1} errors so far)")
        self._published({addr: reason}, records)
        return records[0]

    def unblock(self, ip: object, reason: str = "manual") -> bool:
        """Lift the block on ``ip`` at once. True if it was blocked."""
        addr = parse_ip(ip)
        now = self.clock()
        if not self.config.dry_run:
            self.backend.remove([addr])
        was = self.store.end_block(str(addr))
        self._active.pop(addr, None)
        self.store.log_action(now, str(addr), "unblock", None, reason, self.config.dry_run,
                              self.backend.name)
        log.warning("%sunblocked %s: %s", "dry run: " if self.config.dry_run else "", addr,
                    reason)
        self.counters["unblocked"] += 1
        self._publish(UNBLOCKED, str(addr), {"ip": str(addr), "reason": reason,
                                             "was_blocked": was}, f"unblocked {addr}")
        return was

    def sweep(self, now: float) -> list[str]:
        """Retire blocks whose time ran out (and remove them where the kernel does not)."""
        expired = self.store.expired_blocks(now)
        if not expired:
            return []
        addrs = [parse_ip(r["ip"]) for r in expired]
        if not self.backend.kernel_expiry and not self.config.dry_run:
            try:
                self.backend.remove(addrs)
            except (FirewallError, OSError) as exc:
                log.error("cannot remove expired blocks: %s", exc)
                return []
        out = []
        for addr in addrs:
            if self.store.end_block(str(addr)):
                self.store.log_action(now, str(addr), "expire", None, "expired",
                                      self.config.dry_run, self.backend.name)
                self._active.pop(addr, None)
                self._publish(UNBLOCKED, str(addr), {"ip": str(addr), "reason": "expired",
                                                     "was_blocked": True},
                              f"block on {addr} expired")
                out.append(str(addr))
        return out

    def blocks(self) -> list[dict[str, Any]]:
        """Blocks in force now, each with its remaining seconds."""
        now = self.clock()
        rows = self.store.active_blocks(now)
        for r in rows:
            r["remaining"] = round(float(r["until"]) - now, 1)
        return rows

    def _publish(self, name: str, ip: str, detail: dict[str, Any], message: str) -> None:
        if self.emit is None:
            return
        self.emit(Event(name, self.clock(), Severity.MEDIUM, source_ip=ip, detail=detail,
                        message=message))
