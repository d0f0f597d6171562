"""The response service: reputation, kill chain, alerts and firewall behind one bus handler.

:meth:`ResponseService.handle` is subscribed to every event (``engine.on("*", ...)``). For an
event about an address (its actor) it records the event, charges reputation, advances the kill
chain (publishing ``campaign-detected`` when one address reaches all four stages), passes the
event through the alert pipeline and lets the firewall decide on an automatic block. The same
object offers :meth:`block`, :meth:`unblock`, :meth:`investigate`, :meth:`collect_evidence`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from garrison.config import GarrisonConfig, parse_duration
from garrison.correlate.addresses import IPAddress, parse_ip
from garrison.correlate.attack import kind_of, stage_of
from garrison.correlate.blocklist import Blocklists
from garrison.correlate.killchain import KillChain
from garrison.correlate.reputation import Reputation
from garrison.events import BLOCKED, UNBLOCKED, Event
from garrison.respond.alerts import AlertHandler, AlertPipeline
from garrison.respond.backend import Backend, NoBackend, Runner
from garrison.respond.firewall import BlockRecord, FirewallResponder, is_verified
from garrison.respond.guard import BlockGuard
from garrison.respond.ipset import IpsetBackend
from garrison.respond.netsh import NetshBackend
from garrison.respond.nft import NftBackend
from garrison.respond.store import ResponseStore
from garrison.respond.webhook import Webhook

log = logging.getLogger("garrison.respond")

_SWEEP_EVERY = 1.0  # seconds of wall time between expiry sweeps driven by events


def make_backend(config: GarrisonConfig, prefix: Sequence[str] = (),
                 platform: str = sys.platform) -> Backend:
    """The firewall backend ``config.firewall.backend`` names.

    ``nftables`` falls back to ipset + iptables when ``nft`` is not installed but ``ipset``
    is; on Windows any enforcing backend means Windows Firewall (``netsh``)."""
    fw = config.firewall
    runner = Runner(prefix)
    if fw.backend == "none":
        return NoBackend()
    if platform == "win32":
        return NetshBackend(runner)
    if fw.backend == "nftables" and shutil.which("nft") is None and shutil.which("ipset"):
        log.warning("nft not found: falling back to ipset + iptables")
        return IpsetBackend(runner, table=fw.table, set_only=fw.set_only)
    if fw.backend == "nftables":
        return NftBackend(runner, table=fw.table, priority=fw.priority, set_only=fw.set_only)
    return IpsetBackend(runner, table=fw.table, set_only=fw.set_only)


class ResponseService:
    """Judgement and response for one engine (or for the CLI, with no engine)."""

    def __init__(
        self,
        config: GarrisonConfig,
        *,
        store: ResponseStore,
        backend: Backend,
        guard: BlockGuard,
        emit: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.emit = emit
        rep = config.reputation
        self.reputation = Reputation(
            half_life=rep.half_life,
            trusted=[*rep.allowlist, *config.firewall.allowlist],
            blocklists=Blocklists.from_files(rep.blocklists),
            weights=rep.weights,
            blocklisted_score=rep.blocklisted_score,
            max_ips=rep.max_ips,
            history=rep.history,
        )
        self.killchain = KillChain(window=rep.campaign_window, max_ips=rep.max_ips)
        self.alerts = AlertPipeline(config.alerts)
        self.firewall = FirewallResponder(config.firewall, backend, guard, store, emit=emit,
                                          clock=clock, max_tracked=rep.max_ips)
        al = config.alerts
        self.webhooks = [
            Webhook(url, secret=al.webhook_secret, timeout=al.webhook_timeout,
                    retries=al.webhook_retries, backoff=al.webhook_backoff,
                    max_backoff=al.webhook_max_backoff, clock=clock)
            for url in al.webhooks
        ]
        for hook in self.webhooks:
            self.alerts.add_handler(hook, name=hook.__name__, webhook_only=True)
        self.counters: dict[str, int] = {"events": 0, "bad_actor": 0, "campaigns": 0}
        self._last_sweep = 0.0
        self._started = False

    @classmethod
    def from_config(
        cls,
        config: GarrisonConfig,
        *,
        emit: Callable[[Event], None] | None = None,
        prefix: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        environ: dict[str, str] | None = None,
    ) -> ResponseService:
        """Build everything from ``config``; ``prefix`` wraps firewall commands (tests)."""
        fw = config.firewall
        guard = BlockGuard.for_host(
            [*fw.allowlist, *fw.never_block, *config.reputation.allowlist, *config.home_net],
            protect_system=fw.protect_system, environ=environ, prefix=prefix,
        )
        store = ResponseStore(config.db or ":memory:")
        return cls(config, store=store, backend=make_backend(config, prefix), guard=guard,
                   emit=emit, clock=clock)

    def start(self) -> None:
        """Set up the firewall and reconcile it with the records (once; later calls no-op)."""
        if not self._started:
            self._started = True
            self.firewall.start()

    def _restore(self, addr: IPAddress, ip: str) -> None:
        """Seed memory with what SQLite remembers of ``addr`` (after a restart)."""
        row = self.store.reputation(ip)
        if row is not None:
            self.reputation.restore(addr, float(row["score"]), float(row["at"]),
                                    int(row["events"]))
        stages = self.store.stages(ip)
        if stages:
            self.killchain.restore(ip, {s: ts for s, (ts, _) in stages.items()},
                                   {s: name for s, (_, name) in stages.items()})

    # -- the bus handler ------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        """Judge one event (subscribed to ``"*"``)."""
        self.counters["events"] += 1
        actor = event.actor
        addr = None
        if actor is not None:
            try:
                addr = parse_ip(actor)
            except ValueError:
                self.counters["bad_actor"] += 1
        with self.store.transaction():  # one SQLite commit per event, not one per table
            campaign = self._judge(event, addr)
        if campaign is not None:
            self.counters["campaigns"] += 1
            log.warning("%s", campaign.message)
            if self.emit is not None:
                self.emit(campaign)
            else:
                self.handle(campaign)
        now = self.clock()
        if now - self._last_sweep >= _SWEEP_EVERY:
            self._last_sweep = now
            self.firewall.sweep(now)

    def _judge(self, event: Event, addr: IPAddress | None) -> Event | None:
        kind = kind_of(event.name)
        campaign = None
        score = 1.0
        if addr is not None:
            ip = str(addr)
            if not self.reputation.known(addr) and not self.reputation.is_trusted(addr):
                self._restore(addr, ip)
            if event.name not in (BLOCKED, UNBLOCKED):
                self.store.add_event(event.ts, ip, event.name, event.severity.label,
                                     is_verified(event), event.to_ecs())
            score = self.reputation.score(addr, event.ts)
            if kind.detection:
                score = self.reputation.apply(addr, event)
                if not self.reputation.is_trusted(addr):
                    count, lists = self.reputation.summary(addr)
                    self.store.set_reputation(ip, score, event.ts, count, lists)
            self.firewall.note(addr, event)
            stage = stage_of(event)
            if stage is not None:
                self.store.set_stage(ip, stage, event.ts, event.name)
            campaign = self.killchain.observe(ip, event)
        alert = self.alerts.submit(event)
        if alert is not None:
            # The event itself is in response_events; the alert row keeps the summary only.
            self.store.add_alert(event.ts, alert.ip if addr is not None else None, event.name,
                                 event.severity.label, alert.suppressed,
                                 {"alert": alert.summary()})
        if addr is not None:
            self.firewall.consider(addr, event, score)
        return campaign

    # -- the public verbs ----------------------------------------------------------------
    def block(self, ip: str, duration: float | str | None = None,
              reason: str = "manual") -> BlockRecord:
        """Block ``ip`` for ``duration`` (seconds or ``"1h"``; default the configured one)."""
        secs = None if duration is None else parse_duration(duration)
        self.start()
        return self.firewall.block(ip, secs, reason)

    def unblock(self, ip: str) -> bool:
        """Lift the block on ``ip`` now; True if it was blocked."""
        self.start()
        return self.firewall.unblock(ip)

    def blocks(self) -> list[dict[str, Any]]:
        """Blocks in force now."""
        return self.firewall.blocks()

    def investigate(self, ip: str) -> dict[str, Any]:
        """Everything Garrison knows about ``ip`` (see :func:`garrison.forensics.investigate`)."""
        from garrison.forensics import investigate

        return investigate(self, ip)

    def collect_evidence(self, ip: str) -> dict[str, Any]:
        """An evidence bundle for ``ip`` (see :func:`garrison.forensics.collect_evidence`)."""
        from garrison.forensics import collect_evidence

        return collect_evidence(self, ip)

    def on_alert(self, handler: AlertHandler) -> AlertHandler:
        """Call ``handler(alert)`` (sync or async) for every alert, on its own worker."""
        self.alerts.add_handler(handler)
        return handler

    def close(self) -> None:
        """Stop webhooks and handlers, close the database; forget this as the current one."""
        import garrison.respond as respond

        if respond._current is self:
            respond._current = None
        for hook in self.webhooks:
            hook.stopping.set()
        self.alerts.close()
        self.store.close()
