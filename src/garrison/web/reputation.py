"""Adapter: the correlator's reputation (``garrison.correlate.reputation.Reputation``) seen
through the middleware's :class:`~garrison.web.verdict.ReputationSource`.

The correlator scores an :mod:`ipaddress` object at a time you pass; the middleware asks with a
string and no time. This adapter parses once, reads the time from ``clock`` (seconds since the
epoch) and answers None for addresses the correlator knows nothing about (so the verdict leaves
reputation out rather than counting "neutral" as evidence).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from garrison.web.clientaddr import parse_ip

if TYPE_CHECKING:
    from garrison.correlate.reputation import Reputation


class CorrelateReputation:
    """A :class:`~garrison.web.verdict.ReputationSource` backed by the correlator.

    ``honeypot_hits`` is always 0: the correlator already charges honeypot contacts to the
    score (its heaviest penalty), and counting them twice would double the evidence.
    """

    def __init__(self, reputation: Reputation, clock: Callable[[], float] = time.time) -> None:
        self.reputation = reputation
        self.clock = clock

    def score(self, ip: str) -> float | None:
        addr = parse_ip(ip)
        if addr is None:
            return None
        rep = self.reputation
        if not rep.known(addr) and not rep.blocklists.match(addr):
            return None
        return float(rep.score(addr, self.clock()))

    def is_blocklisted(self, ip: str) -> bool:
        addr = parse_ip(ip)
        return addr is not None and bool(self.reputation.summary(addr)[1])

    def honeypot_hits(self, ip: str) -> int:
        return 0
