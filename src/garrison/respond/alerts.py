"""The alert pipeline: which events become alerts, and handing them to handlers safely.

:meth:`AlertPipeline.submit` decides, per event kind (``alerts.kinds``), whether an event is an
alert: the kind is enabled, its severity reaches the minimum, and no alert of the same kind about
the same address went out within the cooldown (seconds of event time; the repeats are counted and
reported in the next alert as ``suppressed``). Cooldown keys are bounded (LRU, ``max_keys``).

Each handler (sync or ``async def``) runs on its own worker thread fed by a bounded queue, so a
slow or failing handler can neither stall detection nor the other handlers: when its queue is
full, alerts for it are dropped and counted. Async handlers run on their worker's own event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from garrison.config import AlertRule, AlertsConfig
from garrison.events import Event, Severity

log = logging.getLogger("garrison.respond.alerts")

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Alert:
    """An event that passed the pipeline. ``suppressed``: repeats folded into it by cooldown."""

    id: str
    event: Event
    ip: str | None
    suppressed: int = 0
    webhook: bool = True

    def summary(self) -> dict[str, Any]:
        """The alert's own fields (``ts`` in seconds since the epoch)."""
        return {
            "id": self.id,
            "kind": self.event.name,
            "severity": self.event.severity.label,
            "ip": self.ip,
            "ts": self.event.ts,
            "suppressed": self.suppressed,
            "message": self.event.message,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the alert summary and the event in its ECS form."""
        return {"alert": self.summary(), "event": self.event.to_ecs()}


AlertHandler = Callable[[Alert], Any]


@dataclass
class _Worker:
    handler: AlertHandler
    queue: queue.Queue[Alert | None]
    thread: threading.Thread
    dropped: int = 0
    failed: int = 0
    done: int = 0
    webhook_only: bool = False
    loop: asyncio.AbstractEventLoop | None = field(default=None)


class AlertPipeline:
    """Dedupe, filter and dispatch alerts to handlers."""

    def __init__(self, config: AlertsConfig | None = None, *, instance: str = "") -> None:
        self.config = config or AlertsConfig()
        self.instance = instance
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._suppressed: dict[tuple[str, str], int] = {}
        self._workers: list[_Worker] = []
        self.counters: dict[str, int] = {"alerts": 0, "suppressed": 0, "filtered": 0}

    def rule(self, name: str) -> AlertRule:
        return self.config.kinds.get(name) or AlertRule()

    def submit(self, event: Event) -> Alert | None:
        """The alert ``event`` becomes (dispatched to every handler), or None if filtered."""
        rule = self.rule(event.name)
        min_sev = Severity.parse(rule.min_severity or self.config.min_severity)
        if not rule.enabled or event.severity < min_sev:
            self.counters["filtered"] += 1
            return None
        cooldown = self.config.cooldown if rule.cooldown is None else rule.cooldown
        ip = event.actor
        key = (event.name, ip or "-")
        last = self._last.get(key)
        if last is not None and 0 <= event.ts - last < cooldown:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self.counters["suppressed"] += 1
            return None
        self._last[key] = event.ts
        self._last.move_to_end(key)
        while len(self._last) > self.config.max_keys:
            old, _ = self._last.popitem(last=False)
            self._suppressed.pop(old, None)
        alert = Alert(f"{self.instance}{next(_ids)}", event, ip,
                      self._suppressed.pop(key, 0), rule.webhook)
        self.counters["alerts"] += 1
        self.dispatch(alert)
        return alert

    def add_handler(self, handler: AlertHandler, *, name: str = "",
                    webhook_only: bool = False) -> None:
        """Run ``handler(alert)`` for every alert, on its own worker thread.

        ``webhook_only`` handlers skip alerts whose kind has ``webhook = false``."""
        q: queue.Queue[Alert | None] = queue.Queue(maxsize=self.config.queue_size)
        label = name or getattr(handler, "__name__", type(handler).__name__)
        worker = _Worker(handler, q, threading.Thread(), webhook_only=webhook_only)
        worker.thread = threading.Thread(target=self._run, args=(worker,),
                                         name=f"garrison-alert-{label}", daemon=True)
        self._workers.append(worker)
        worker.thread.start()

    def dispatch(self, alert: Alert) -> None:
        for w in self._workers:
            if w.webhook_only and not alert.webhook:
                continue
            try:
                w.queue.put_nowait(alert)
            except queue.Full:
                w.dropped += 1
                if w.dropped in (1, 10, 100) or w.dropped % 1000 == 0:
                    log.error("alert handler %r is behind: %d alerts dropped", w.handler,
                              w.dropped)

    def _run(self, w: _Worker) -> None:
        while True:
            alert = w.queue.get()
            if alert is None:
                w.queue.task_done()
                break
            try:
                result = w.handler(alert)
                if inspect.isawaitable(result):
                    if w.loop is None:
                        w.loop = asyncio.new_event_loop()
                    w.loop.run_until_complete(_await(result))
                w.done += 1
            except Exception:
                w.failed += 1
                log.exception("alert handler %r failed on alert %s", w.handler, alert.id)
            finally:
                w.queue.task_done()
        if w.loop is not None:
            w.loop.close()

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was handled (at most ``timeout`` seconds each)."""
        ok = True
        for w in self._workers:
            t = threading.Thread(target=w.queue.join, daemon=True)
            t.start()
            t.join(timeout)
            ok = ok and not t.is_alive()
        return ok

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (pending alerts are handled first, within ``timeout`` seconds)."""
        for w in self._workers:
            try:
                w.queue.put(None, timeout=timeout)
            except queue.Full:
                log.error("alert handler %r did not drain; abandoning it", w.handler)
        for w in self._workers:
            w.thread.join(timeout)
        self._workers.clear()

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["dropped"] = sum(w.dropped for w in self._workers)
        out["handler_failures"] = sum(w.failed for w in self._workers)
        return out


async def _await(aw: Any) -> Any:
    return await aw
