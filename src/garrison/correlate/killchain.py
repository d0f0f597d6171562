"""Kill chain: which stages each address reached, and campaigns that reach all four.

Stages are recon -> discovery -> command and control -> exfiltration (see
:mod:`garrison.correlate.attack`). For each address the latest time it reached each stage is
kept; when one address holds all four within ``window`` seconds of event time, one
``campaign-detected`` event fires. It fires again for that address only after ``window`` has
passed since it last fired. State is bounded to ``max_ips`` addresses (LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from garrison.correlate.attack import STAGES, points_of, stage_of, techniques_of
from garrison.events import CAMPAIGN_DETECTED, Event, Severity, Technique


@dataclass
class _Chain:
    stages: dict[str, float] = field(default_factory=dict)
    techniques: dict[str, Technique] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)
    fired_at: float | None = None


class KillChain:
    """Tracks stages per address; :meth:`observe` returns a campaign event when one completes."""

    def __init__(self, *, window: float = 86400.0, max_ips: int = 100_000) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.window = window
        self.max_ips = max_ips
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self.campaigns = 0

    def observe(self, ip: str, event: Event) -> Event | None:
        """Record ``event`` for ``ip`` (a canonical address string); maybe a campaign event."""
        stage = stage_of(event)
        if stage is None:
            return None
        chain = self._chains.get(ip)
        if chain is None:
            chain = self._chains[ip] = _Chain()
            while len(self._chains) > self.max_ips:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(ip)
        now = event.ts
        chain.stages[stage] = max(now, chain.stages.get(stage, now))
        chain.events[stage] = event.name
        for t in techniques_of(event):
            chain.techniques.setdefault(t.id, t)
        live = self.stages(ip, now)
        if len(live) < len(STAGES):
            return None
        if chain.fired_at is not None and now - chain.fired_at < self.window:
            return None
        chain.fired_at = now
        self.campaigns += 1
        score = min(100, sum(points_of(s) for s in STAGES))
        detail: dict[str, Any] = {
            "ip": ip,
            "score": score,
            "stages": list(STAGES),
            "stage_count": len(STAGES),
            "severity": Severity.CRITICAL.label,
            "first_seen": min(chain.stages.values()),
            "evidence": {s: chain.events[s] for s in STAGES},
        }
        return Event(
            CAMPAIGN_DETECTED, now, Severity.CRITICAL, source_ip=ip, detail=detail,
            techniques=tuple(chain.techniques.values()),
            message=f"{ip} reached all {len(STAGES)} kill-chain stages",
        )

    def restore(self, ip: str, reached: dict[str, float], events: dict[str, str]) -> None:
        """Seed ``ip`` with stages reached before a restart (stage -> seconds since epoch)."""
        chain = self._chains.get(ip)
        if chain is None:
            chain = self._chains[ip] = _Chain()
            while len(self._chains) > self.max_ips:
                self._chains.popitem(last=False)
        for stage, ts in reached.items():
            if stage in STAGES and ts > chain.stages.get(stage, float("-inf")):
                chain.stages[stage] = ts
                chain.events[stage] = events.get(stage, "")
        if all(s in chain.stages for s in STAGES) and chain.fired_at is None:
            # A full chain on record was reported before the restart: do not report it twice.
            chain.fired_at = max(chain.stages.values())

    def stages(self, ip: str, now: float) -> list[str]:
        """Stages ``ip`` reached within the window before ``now``, in kill-chain order."""
        chain = self._chains.get(ip)
        if chain is None:
            return []
        return [s for s in STAGES if s in chain.stages and now - chain.stages[s] <= self.window]

    def report(self, ip: str, now: float) -> dict[str, Any]:
        """A plain dict: stages reached (with times), the furthest stage, techniques seen."""
        chain = self._chains.get(ip)
        live = self.stages(ip, now)
        return {
            "stages": live,
            "stage_count": len(live),
            "furthest_stage": live[-1] if live else None,
            "reached_at": {s: chain.stages[s] for s in live} if chain else {},
            "techniques": [
                {"id": t.id, "name": t.name, "tactic_id": t.tactic_id, "tactic": t.tactic}
                for t in (chain.techniques.values() if chain else ())
            ],
            "campaign": chain is not None and chain.fired_at is not None,
        }
