"""DNS tunnel detector: what query names look like, and how much a client pushes to one domain.

A tunnel has to push its data through the query name, so its names are long, deep, made of
encoded data (hex, base32, base64 or raw 8-bit bytes) and high in entropy, often asking for
record types that carry a lot back (TXT, NULL, CNAME, ANY). Ordinary names can look like that
one at a time (CDN hashes), which is why the detector also needs volume per registered domain
(unique names, bytes of unique names, queries) before it speaks, and learns per-client
baselines so that domains a host always talks to a lot stop looking unusual.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, NamedTuple

from publicsuffixlist import PublicSuffixList

from garrison.detect.homenet import HomeNet
from garrison.detect.homenet import Network as IPNetwork
from garrison.events import DNS_TUNNEL, Event, Severity, Technique
from garrison.observations import TCP, UDP, Packet
from garrison.sensors.dns import (
    ANY,
    CNAME,
    NULL,
    TXT,
    DnsParseError,
    Question,
    parse_message,
    parse_tcp_segment,
    type_name,
    visible_labels,
)

UNUSUAL_TYPES: Final = frozenset({TXT, NULL, CNAME, ANY})

# Weights of each feature in a query's suspicion (0..1 after clamping).
W_BINARY: Final = 1.0  # bytes outside letters, digits, '-' and '_': no hostname has them
W_ENCODED: Final = 0.6  # hex, base32 or base64 looking label of 16+ characters
W_ENTROPY: Final = 0.3  # normalised entropy >= 0.92 on a label of 12+ characters
W_LONG: Final = 0.3  # subdomain part of 50+ bytes
W_VERY_LONG: Final = 0.6  # subdomain part of 100+ bytes
W_DEEP: Final = 0.2  # 4+ labels below the registered domain
W_TYPE: Final = 0.4  # TXT, NULL, CNAME or ANY

_HOSTNAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = re.compile(r"[0-9a-f]{16,}")
_BASE32 = re.compile(r"[a-z2-7]{16,}=*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]{16,}=*")
_DIGITS = re.compile(r"\d")

_psl = PublicSuffixList()


class QueryFeatures(NamedTuple):
    """Features of one query name. ``suspicion`` is 0..1; ``sub_bytes`` counts the subdomain
    part (below the registered domain) in bytes including dots."""

    suspicion: float
    reasons: frozenset[str]
    sub_bytes: int


def normalised_entropy(text: str, alphabet: int = 0) -> float:
    """Shannon entropy of ``text`` divided by its maximum, log2(min(len, alphabet)): 0..1.

    A label of n characters can never exceed log2(n) bits per character, nor log2(k) when it
    is drawn from k symbols (32 for base32, 37 for hostname characters); dividing by the
    smaller bound makes short and long labels comparable. ``alphabet`` 0 means unbounded.
    """
    n = len(text)
    cap = min(n, alphabet) if alphabet else n
    if n < 2 or cap < 2:
        return 0.0
    h = -sum(c / n * math.log2(c / n) for c in Counter(text).values())
    return min(1.0, h / math.log2(cap))


def _encoded(label: str, raw: str) -> str | None:
    """Which encoding a label looks like ('hex', 'base32', 'base64') or None."""
    if len(label) < 16:
        return None
    if _HEX.fullmatch(label) and len(_DIGITS.findall(label)) >= 3:
        return "hex"
    if (
        _BASE32.fullmatch(label)
        and len(_DIGITS.findall(label)) >= 2
        and normalised_entropy(label, 32) >= 0.75
    ):
        return "base32"
    if (
        _BASE64.fullmatch(raw)
        and "--" not in raw
        and raw != raw.lower()
        and raw != raw.upper()
        and _DIGITS.search(raw)
        and normalised_entropy(raw, 64) >= 0.9
    ):
        return "base64"
    return None


@lru_cache(maxsize=16384)
def registered_domain(tail: tuple[str, ...]) -> tuple[str, ...]:
    """The registered domain (public suffix + one label, from the Public Suffix List, offline)
    of a name given as labels; the name itself when it is a public suffix. Callers pass at most
    the last 7 labels, which covers every rule of the list and keeps the cache small."""
    name = ".".join(tail)
    reg = _psl.privatesuffix(name)
    if reg is None:
        return tail
    return tuple(reg.split("."))


def split_name(labels: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a name into (subdomain labels, registered-domain labels)."""
    reg = registered_domain(labels[-7:])
    return labels[: len(labels) - len(reg)], reg


@lru_cache(maxsize=16384)
def query_features(
    sub: tuple[str, ...], raw_sub: tuple[str, ...], qtype: int
) -> QueryFeatures:
    """Score one query from its subdomain labels (lower-cased and as sent) and record type.

    Underscore labels (``_dmarc``, ``_domainkey``, ``_tcp``) are protocol words, not data, and
    are left out.
    """
    reasons: set[str] = set()
    score = 0.0
    data = [(lab, raw) for lab, raw in zip(sub, raw_sub, strict=True) if not lab.startswith("_")]
    sub_bytes = sum(len(lab) + 1 for lab, _ in data)
    binary = encoded = entropic = False
    for lab, raw in data:
        if not binary and not _HOSTNAME_CHARS.issuperset(lab):
            binary = True
        if not encoded:
            kind = _encoded(lab, raw)
            if kind is not None:
                encoded = True
                reasons.add(f"{kind}-labels")
        if not entropic and len(lab) >= 12 and normalised_entropy(lab, 37) >= 0.92:
            entropic = True
    if binary:
        score += W_BINARY
        reasons.add("binary-labels")
    if encoded:
        score += W_ENCODED
    if entropic:
        score += W_ENTROPY
        reasons.add("high-entropy-labels")
    if sub_bytes >= 100:
        score += W_VERY_LONG
        reasons.add("long-names")
    elif sub_bytes >= 50:
        score += W_LONG
        reasons.add("long-names")
    if len(data) >= 4:
        score += W_DEEP
        reasons.add("deep-names")
    if qtype in UNUSUAL_TYPES:
        score += W_TYPE
        reasons.add(f"record-type-{type_name(qtype)}")
    return QueryFeatures(min(1.0, score), frozenset(reasons), sub_bytes)


# --- the detector ------------------------------------------------------------------------------

T1071_004: Final = Technique("T1071.004", "Application Layer Protocol: DNS", "TA0011",
                             "Command and Control")
T1048_003: Final = Technique(
    "T1048.003", "Exfiltration Over Unencrypted Non-C2 Protocol", "TA0010", "Exfiltration"
)
# Reverse lookups, and reputation services that mail and security software query with hashed
# or reversed-address labels by design (a tunnel cannot use them: their servers are not the
# attacker's).
DEFAULT_ALLOWLIST: Final = (
    "in-addr.arpa", "ip6.arpa", "spamhaus.org", "spamhaus.net", "surbl.org", "uribl.com",
    "spamcop.net", "barracudacentral.org", "dnswl.org", "mailspike.net", "sophosxl.net",
    "avqs.mcafee.com",
)
MAX_UNIQUE_TRACKED: Final = 4096  # names remembered per (client, domain); later ones count as new
MAX_TYPES: Final = 8  # distinct record types counted per flow; the rest count as 'other'
SAMPLE_SIZE: Final = 3


@dataclass(slots=True)
class _Flow:
    """What one client asked under one registered domain during one episode."""

    first_ts: float
    last_ts: float
    server: str
    sport: int
    transport: str
    zone: tuple[str, ...] | None = None  # common suffix (labels) of the names asked
    queries: int = 0
    names: set[int] = field(default_factory=set)  # hashes of the names asked
    unique: int = 0
    unique_bytes: int = 0  # bytes of unique subdomain parts: the information pushed
    suspicion_sum: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    answer_bytes: int = 0  # RDATA bytes of answers sent back to the client
    sample: list[str] = field(default_factory=list)
    alerted: bool = False


@dataclass(slots=True)
class _Baseline:
    """Per client: when first seen, and the peak volume per registered domain in warm-up."""

    first_ts: float
    peaks: dict[str, tuple[int, int]] = field(default_factory=dict)  # domain -> (unique, bytes)
    last_domain: str = ""  # registered domain of its latest query


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    n = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        n += 1
    return a[len(a) - n :] if n else ()


class DnsTunnelDetector:
    """Finds DNS tunnels per (client, registered domain) and reports one event per episode.

    Score (0..1) = 0.6 x content + 0.4 x volume, where content is the mean suspicion of the
    unique names asked (see :func:`query_features`) and volume the largest of unique names /
    ``unique_threshold``, bytes of unique names / ``budget_bytes`` and queries /
    ``volume_threshold`` (each capped at 1). An alert needs ``score >= threshold`` and at least
    ``min_unique`` unique names. An episode ends after ``episode_timeout`` seconds without a
    query; the next one may alert again.

    Baseline: for the first ``warmup`` seconds after a client is first seen, the peak unique
    names and bytes it sends to each domain are learned (from episodes that did not alert);
    afterwards the volume thresholds for those domains are at least ``learn_factor`` times the
    learned peaks, so a host that always resolves many names of one domain stops scoring on
    volume. Content is never baselined: names full of binary or encoded data score the same in
    and after warm-up.

    Input: queries and answers over UDP and TCP (the first message of a TCP segment; messages
    split across segments are counted as truncated). Malformed messages are counted in
    ``stats`` and dropped. A query cut by the capture's snap length keeps its visible labels,
    which are scored under the registered domain the same client asked last (the domain, at
    the end of the name, is what got cut; tunnels interleave short and long queries).

    Actor (``detail["ip"]``): always the client, see :mod:`garrison.analytics`.

    Memory is bounded whoever sends the queries: at most ``max_flows`` (client, domain) pairs
    and ``max_clients`` baselines (LRU), at most ``max_names`` remembered names in all (as
    hashes), at most 4,096 per pair.
    """

    name = "dns-tunnel"
    accepts: tuple[type, ...] = (Packet,)
    packet_filter = "dns"

    def __init__(
        self,
        home_net: HomeNet | Iterable[IPNetwork | str],
        *,
        allowlist: Iterable[str] = (),
        threshold: float = 0.7,
        min_unique: int = 10,
        unique_threshold: int = 50,
        budget_bytes: int = 4096,
        volume_threshold: int = 1000,
        episode_timeout: float = 600.0,
        warmup: float = 3600.0,
        learn_factor: float = 4.0,
        max_flows: int = 50_000,
        max_names: int = 1_000_000,
        max_clients: int = 10_000,
        max_baseline_domains: int = 512,
    ) -> None:
        self.home = home_net if isinstance(home_net, HomeNet) else HomeNet(home_net)
        self.allowlist = frozenset(
            tuple(d.strip(".").lower().split(".")) for d in (*DEFAULT_ALLOWLIST, *allowlist) if d
        )
        self._allow_lengths = sorted({len(a) for a in self.allowlist})
        self.threshold = threshold
        self.min_unique = min_unique
        self.unique_threshold = unique_threshold
        self.budget_bytes = budget_bytes
        self.volume_threshold = volume_threshold
        self.episode_timeout = episode_timeout
        self.warmup = warmup
        self.learn_factor = learn_factor
        self.max_flows = max_flows
        self.max_names = max_names
        self._tracked = 0  # names remembered over all flows
        self.max_clients = max_clients
        self.max_baseline_domains = max_baseline_domains
        self._flows: OrderedDict[tuple[str, str], _Flow] = OrderedDict()
        self._baselines: OrderedDict[str, _Baseline] = OrderedDict()
        self.stats: Counter[str] = Counter()

    # -- input ----------------------------------------------------------------------------------
    def observe(self, obs: Packet) -> list[Event]:
        if obs.proto == UDP:
            transport = "udp"
        elif obs.proto == TCP:
            if not obs.payload:
                return []
            transport = "tcp"
        else:
            return []
        if obs.dport != 53 and obs.sport != 53:
            return []
        try:
            msg = parse_message(obs.payload) if transport == "udp" else parse_tcp_segment(
                obs.payload
            )
        except DnsParseError as exc:
            cut = len(obs.payload) < obs.payload_len
            if not cut:
                self.stats[f"malformed.{exc.reason}"] += 1
                return []
            self.stats["truncated-capture"] += 1
            seen = visible_labels(obs.payload) if obs.dport == 53 and transport == "udp" else None
            return self._truncated(obs, transport, *seen) if seen else []
        if not msg.questions:
            self.stats["no-question"] += 1
            return []
        q = msg.questions[0]
        if msg.is_response:
            self.stats["responses"] += 1
            if obs.sport == 53:
                self._answer(obs.dst, q, sum(r.rdlength for r in msg.answers))
            return []
        if obs.dport != 53:
            self.stats["malformed.query-from-port-53"] += 1
            return []
        self.stats["queries"] += 1
        return self._query(obs, transport, q)

    def flush(self, now: float) -> list[Event]:
        """End episodes idle for ``episode_timeout`` seconds (oldest-first, LRU order)."""
        self._expire(now)
        return []

    # -- state ----------------------------------------------------------------------------------
    def _allowlisted(self, labels: tuple[str, ...]) -> bool:
        n = len(labels)
        return any(labels[n - k :] in self.allowlist for k in self._allow_lengths if k <= n)

    def _expire(self, now: float) -> None:
        flows = self._flows
        while flows:
            key, flow = next(iter(flows.items()))
            if now - flow.last_ts <= self.episode_timeout:
                break
            del flows[key]
            self._drop(key, flow)

    def _drop(self, key: tuple[str, str], flow: _Flow) -> None:
        self._tracked -= len(flow.names)
        self._learn(key[0], key[1], flow)

    def _baseline(self, client: str, ts: float) -> _Baseline:
        base = self._baselines.get(client)
        if base is None:
            base = _Baseline(ts)
            self._baselines[client] = base
            while len(self._baselines) > self.max_clients:
                self._baselines.popitem(last=False)
        else:
            self._baselines.move_to_end(client)
        return base

    def _learn(self, client: str, domain: str, flow: _Flow) -> None:
        base = self._baselines.get(client)
        if base is None or flow.first_ts - base.first_ts > self.warmup or flow.alerted:
            return
        old_u, old_b = base.peaks.get(domain, (0, 0))
        if domain in base.peaks or len(base.peaks) < self.max_baseline_domains:
            base.peaks[domain] = (max(old_u, flow.unique), max(old_b, flow.unique_bytes))

    def _answer(self, client: str, q: Question, rdata_bytes: int) -> None:
        if not q.labels:
            return
        _sub, reg = split_name(q.labels)
        flow = self._flows.get((client, ".".join(reg)))
        if flow is not None:
            flow.answer_bytes += rdata_bytes

    def _truncated(self, obs: Packet, transport: str, q: Question, whole: bool
                   ) -> list[Event]:
        """A query cut by the snap length. A whole visible name is scored as usual (type
        unknown). Otherwise the domain is what got cut: the visible labels are scored under the
        domain this client asked last, as a tunnel interleaves its short and long queries to one
        zone; with no such recent flow the query is only counted."""
        if whole:
            return self._query(obs, transport, q)
        base = self._baselines.get(obs.src)
        if base is None or not base.last_domain or (obs.src, base.last_domain) not in self._flows:
            self.stats["truncated-unattributed"] += 1
            return []
        self.stats["truncated-attributed"] += 1
        return self._query(obs, transport, q, domain=base.last_domain)

    def _query(
        self, obs: Packet, transport: str, q: Question, domain: str | None = None
    ) -> list[Event]:
        """Score one query. ``domain`` given: ``q`` holds only the visible labels of a name
        whose end (the domain) the capture cut off."""
        labels = q.labels
        if not labels or (domain is None and self._allowlisted(labels)):
            self.stats["allowlisted" if labels else "root-query"] += 1
            return []
        self._expire(obs.ts)
        client = obs.src
        base = self._baseline(client, obs.ts)
        if domain is None:
            sub, reg = split_name(labels)
            domain = ".".join(reg)
        else:
            sub, reg = labels, tuple(domain.split("."))
            labels = (*labels, *reg)
        base.last_domain = domain
        key = (client, domain)
        flow = self._flows.get(key)
        if flow is None:
            flow = _Flow(obs.ts, obs.ts, obs.dst, obs.sport, transport)
            self._flows[key] = flow
            while len(self._flows) > self.max_flows:
                old_key, old = self._flows.popitem(last=False)
                self._drop(old_key, old)
        else:
            self._flows.move_to_end(key)
        flow.last_ts = obs.ts
        flow.server = obs.dst
        flow.sport = obs.sport
        flow.queries += 1
        tname = type_name(q.qtype) if q.qtype else "unknown"
        flow.types[tname if tname in flow.types or len(flow.types) < MAX_TYPES else "other"] += 1
        name = q.name
        digest = hash(name)
        new = digest not in flow.names
        if new:
            # Beyond the caps a name is not remembered, so asking it again counts as new: the
            # error only ever adds evidence to a flow that is already busy.
            if len(flow.names) < MAX_UNIQUE_TRACKED and self._tracked < self.max_names:
                flow.names.add(digest)
                self._tracked += 1
            feats = query_features(sub, q.raw_labels[: len(sub)], q.qtype)
            flow.unique += 1
            flow.unique_bytes += feats.sub_bytes
            flow.suspicion_sum += feats.suspicion
            flow.reasons.update(feats.reasons)
            if q.qtype:  # a cut name does not tell where the zone starts
                flow.zone = (labels[1:] if flow.zone is None
                             else _common_suffix(flow.zone, labels))
            if flow.zone is None or len(flow.zone) < len(reg):
                flow.zone = reg
            if feats.suspicion > 0 and len(flow.sample) < SAMPLE_SIZE:
                flow.sample.append(name)
        if flow.alerted or flow.unique < self.min_unique or not new:
            return []
        score = self._score(flow, base, domain, obs.ts)
        if score < self.threshold:
            return []
        flow.alerted = True
        return [self._event(obs, client, domain, flow, score, base, transport)]

    def _thresholds(self, base: _Baseline, domain: str, ts: float) -> tuple[float, float]:
        unique_t, budget_t = float(self.unique_threshold), float(self.budget_bytes)
        peak = base.peaks.get(domain)
        if peak is not None and ts - base.first_ts > self.warmup:
            unique_t = max(unique_t, self.learn_factor * peak[0])
            budget_t = max(budget_t, self.learn_factor * peak[1])
        return unique_t, budget_t

    def _volume(self, flow: _Flow, base: _Baseline, domain: str, ts: float) -> float:
        unique_t, budget_t = self._thresholds(base, domain, ts)
        return min(
            1.0,
            max(
                flow.unique / unique_t,
                flow.unique_bytes / budget_t,
                flow.queries / self.volume_threshold,
            ),
        )

    def _score(self, flow: _Flow, base: _Baseline, domain: str, ts: float) -> float:
        content = flow.suspicion_sum / flow.unique if flow.unique else 0.0
        return round(0.6 * content + 0.4 * self._volume(flow, base, domain, ts), 3)

    def _event(
        self, obs: Packet, client: str, domain: str, flow: _Flow, score: float,
        base: _Baseline, transport: str,
    ) -> Event:
        unique_t, budget_t = self._thresholds(base, domain, obs.ts)
        reasons = sorted(r for r, n in flow.reasons.items() if n * 4 >= flow.unique)
        # A volume reason is named when it made at least half of its full contribution.
        if flow.unique >= unique_t / 2:
            reasons.append("many-unique-subdomains")
        if flow.unique_bytes >= budget_t / 2:
            reasons.append("information-budget")
        if flow.queries >= self.volume_threshold / 2:
            reasons.append("sustained-volume")
        zone = ".".join(flow.zone or ())
        # The actor is always the client: an outside client tunnelling through our server is
        # the adversary; when the client is one of ours it is the compromised party, and the
        # server it asks is usually an innocent resolver that must not be blamed (or blocked,
        # which would cut the host's DNS). The tunnel's real far end hides behind it.
        actor = client
        techniques: tuple[Technique, ...] = (T1071_004,)
        if "information-budget" in reasons:
            techniques = (T1071_004, T1048_003)
        return Event(
            name=DNS_TUNNEL,
            ts=obs.ts,
            severity=Severity.HIGH if score >= 0.9 else Severity.MEDIUM,
            source_ip=client,
            source_port=flow.sport,
            destination_ip=flow.server,
            destination_port=53,
            transport=transport,
            detail={
                "ip": actor,
                "domain": zone,
                "registered_domain": domain,
                "client": client,
                "server": flow.server,
                "score": score,
                "reasons": reasons,
                "query_count": flow.queries,
                "unique_names": flow.unique,
                "bytes": flow.unique_bytes,
                "answer_bytes": flow.answer_bytes,
                "record_types": dict(flow.types.most_common(5)),
                "sample": list(flow.sample),
                "duration": round(obs.ts - flow.first_ts, 3),
            },
            techniques=techniques,
            episode=f"{DNS_TUNNEL}:{client}:{domain}:{flow.first_ts:.3f}",
            message=f"DNS tunnel to {zone} from {client}: {flow.unique} unique names, "
            f"{flow.unique_bytes} bytes, score {score}",
        )
