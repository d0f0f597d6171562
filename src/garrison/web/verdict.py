"""The fused verdict: one trust score per request from everything known about the client.

Trust is 0..1 (1 = trusted). It combines, with configurable weights, the behavioural bot score
(``1 - risk``), the reputation of the address (from ``garrison.correlate`` or any object with the
:class:`ReputationSource` shape), its honeypot history and its rate-limit trust. Components that
are unknown (no reputation source, no history yet) drop out and the remaining weights are
renormalised. Hard overrides come last: a blocklisted address is capped at ``blocklist_cap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple, NoReturn, Protocol, runtime_checkable

DEFAULT_TRUST_WEIGHTS: Final = {"bot": 0.4, "reputation": 0.3, "honeypot": 0.15, "rate": 0.15}
HONEYPOT_FULL: Final = 3
"""Honeypot hits at which that component reaches zero trust."""


@runtime_checkable
class ReputationSource(Protocol):
    """What the middleware needs from a reputation service (all answers from local memory).

    ``score(ip)``: reputation 0..1 (0.5 neutral, <= 0.15 malicious) or None when unknown.
    ``is_blocklisted(ip)``: the address is on a blocklist (a hard override).
    ``honeypot_hits(ip)``: how many times it touched a honeypot.
    """

    def score(self, ip: str) -> float | None: ...

    def is_blocklisted(self, ip: str) -> bool: ...

    def honeypot_hits(self, ip: str) -> int: ...


class SharedComponents(dict[str, float]):
    """The components of a verdict that many clients share (the engine keeps one per rate
    trust for clients not judged yet): read-only, so that an app changing its own request's
    verdict cannot change everyone else's. A dict still, so ``json.dumps`` and every other
    use of a verdict's components work on it as on any other; and unlike a
    ``MappingProxyType`` the collector may be spared it (garrison.acyclic)."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("the components of a shared verdict are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


class Verdict(NamedTuple):
    """The trust verdict of one request (0..1 each; None: not known) and what fed it."""

    trust: float
    bot_risk: float | None = None
    reputation: float | None = None
    honeypot_hits: int = 0
    rate_trust: float | None = None
    blocklisted: bool = False
    components: Mapping[str, float] = SharedComponents()


def fuse(*, bot_risk: float | None, reputation: float | None, honeypot_hits: int,
         rate_trust: float | None, blocklisted: bool, weights: Mapping[str, float],
         blocklist_cap: float = 0.05) -> Verdict:
    """Combine the components into a :class:`Verdict` (see the module docstring)."""
    parts: dict[str, float] = {}
    if bot_risk is not None:
        parts["bot"] = 1.0 - bot_risk
    if reputation is not None:
        parts["reputation"] = max(0.0, min(reputation, 1.0))
    if honeypot_hits > 0 or reputation is not None:
        parts["honeypot"] = 1.0 - min(honeypot_hits / HONEYPOT_FULL, 1.0)
    if rate_trust is not None:
        parts["rate"] = rate_trust
    total = acc = 0.0
    for k, v in parts.items():
        w = weights.get(k, 0.0)
        total += w
        acc += v * w
    trust = acc / total if total else 0.5
    if blocklisted:
        trust = min(trust, blocklist_cap)
    return Verdict(max(0.0, min(trust, 1.0)), bot_risk, reputation, honeypot_hits, rate_trust,
                   blocklisted, parts)
