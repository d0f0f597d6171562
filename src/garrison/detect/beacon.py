"""Beacon detector: periodic callbacks from the defended host to one outside destination.

In the spirit of RITA's beacon analysis. For each (local host, remote address, remote port,
transport) the detector keeps the start time and size (payload bytes, both directions) of each
completed connection and scores, 0..1, as the mean of four subscores:

- **timing**: mean of ``1 - |Bowley skewness|`` and ``1 - MAD/median`` of the intervals between
  connections (robust: one long pause or a few outliers do not break it, jitter of +-15% keeps
  it above 0.9);
- **size**: the same two statistics on the connection sizes (an implant sends the same check-in);
- **histogram**: ``1 - coefficient of variation`` of connection counts in equal time bins over
  the series' span (a beacon fills the bins evenly; bursts of activity do not);
- **coverage**: how much of the observed time (since the detector first saw traffic, at most
  ``window`` seconds) the series spans.

An alert needs ``score >= threshold`` and a timing subscore of at least ``min_timing``, because
regularity of time is what makes a beacon (a client repeating one request at random moments has
perfect sizes but is not one). Not beacons: strobes (median interval under ``min_interval``,
i.e. more than one connection a second) and connection attempts whose handshake never completed
(failed retries look like a 1 s, 3 s beacon). Only TCP connections and UDP flows opened by the
defended host count; DNS (port 53) is the tunnel detector's. A connection ends with FIN/RST or
after ``conn_idle`` seconds without packets (never at a fixed age: a long UDP stream cut every
N seconds would look like a perfect beacon). Periodic polling of well-known services (NTP,
update checks) is a beacon by this definition: allowlist those destinations.
"""

from __future__ import annotations

import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final, NamedTuple

from garrison.detect.homenet import HomeNet
from garrison.detect.homenet import Network as IPNetwork
from garrison.events import BEACON, Event, Severity, Technique
from garrison.observations import ACK, FIN, RST, SYN, TCP, UDP, Packet, transport_name

T1071: Final = Technique("T1071", "Application Layer Protocol", "TA0011", "Command and Control")
T1573: Final = Technique("T1573", "Encrypted Channel", "TA0011", "Command and Control")
T1571: Final = Technique("T1571", "Non-Standard Port", "TA0011", "Command and Control")
COMMON_PORTS: Final = frozenset({80, 443, 8080, 8443, 22, 25, 587, 993, 995, 123})
ENCRYPTED_PORTS: Final = frozenset({443, 8443, 993, 995, 465, 22})


class BeaconScore(NamedTuple):
    """Subscores and total, each 0..1; ``interval`` is the median interval (seconds) and
    ``jitter`` the median absolute deviation of intervals relative to it (0..1)."""

    score: float
    timing: float
    size: float
    histogram: float
    coverage: float
    interval: float
    jitter: float


def _bowley(values: Sequence[float]) -> float:
    """Bowley (quartile) skewness in -1..1; 0 when the quartiles coincide."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    spread = q3 - q1
    if spread <= 0 or q2 in (q1, q3):
        return 0.0
    return (q3 + q1 - 2 * q2) / spread


def _madm_score(values: Sequence[float]) -> tuple[float, float]:
    """(1 - MAD/median clamped to 0..1, MAD/median) of ``values``."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    if med <= 0:
        return (1.0, 0.0) if mad == 0 else (0.0, 1.0)
    rel = mad / med
    return max(0.0, 1.0 - rel), rel


def score_series(
    starts: Sequence[float], sizes: Sequence[float], observed: float
) -> BeaconScore:
    """Score a series of connection start times (seconds, sorted) and sizes (bytes) against
    ``observed`` seconds of observation. Needs at least 4 connections."""
    if len(starts) < 4:
        raise ValueError(f"need at least 4 connections to score, got {len(starts)}")
    intervals = [b - a for a, b in pairwise(starts)]
    ts_madm, jitter = _madm_score(intervals)
    timing = (1.0 - abs(_bowley(intervals)) + ts_madm) / 2
    ds_madm, _ = _madm_score(sizes)
    size = (1.0 - abs(_bowley(sizes)) + ds_madm) / 2
    span = starts[-1] - starts[0]
    bins = max(4, min(24, len(starts) // 4))
    counts = [0] * bins
    if span > 0:
        for t in starts:
            counts[min(bins - 1, int((t - starts[0]) / span * bins))] += 1
    mean = sum(counts) / bins
    cv = statistics.pstdev(counts) / mean if mean else 1.0
    histogram = max(0.0, 1.0 - cv)
    coverage = min(1.0, span / observed) if observed > 0 else 0.0
    total = (timing + size + histogram + coverage) / 4
    return BeaconScore(
        round(total, 3), round(timing, 3), round(size, 3), round(histogram, 3),
        round(coverage, 3), round(statistics.median(intervals), 3), round(jitter, 3),
    )


@dataclass(slots=True)
class _Conn:
    start: float
    last: float
    bytes: int = 0
    established: bool = False


@dataclass(slots=True)
class _Series:
    starts: deque[float]
    sizes: deque[int]
    last: float = 0.0
    alerted: bool = False


class BeaconDetector:
    """Finds periodic outbound callbacks (see module doc); one event per series episode."""

    name = "beacon"
    accepts: tuple[type, ...] = (Packet,)
    packet_filter = "all"

    def __init__(
        self,
        home_net: HomeNet | Iterable[IPNetwork | str],
        *,
        allowlist: Iterable[IPNetwork] = (),
        threshold: float = 0.8,
        min_timing: float = 0.8,
        min_connections: int = 20,
        min_interval: float = 1.0,
        window: float = 3600.0,
        max_samples: int = 128,
        conn_idle: float = 60.0,
        episode_timeout: float = 6 * 3600.0,
        max_conns: int = 65_536,
        max_series: int = 10_000,
    ) -> None:
        self.home = home_net if isinstance(home_net, HomeNet) else HomeNet(home_net)
        allowed = list(allowlist)
        # An empty HomeNet means 'everything'; an empty allowlist must mean nothing.
        self.allow = HomeNet(allowed) if allowed else None
        self.threshold = threshold
        self.min_timing = min_timing
        self.min_connections = max(4, min_connections)
        self.min_interval = min_interval
        self.window = window
        self.max_samples = max_samples
        self.conn_idle = conn_idle
        self.episode_timeout = episode_timeout
        self.max_conns = max_conns
        self.max_series = max_series
        self._conns: OrderedDict[tuple[str, int, str, int, int], _Conn] = OrderedDict()
        self._series: OrderedDict[tuple[str, str, int, int], _Series] = OrderedDict()
        self._first_ts: float | None = None
        self.stats: Counter[str] = Counter()

    def observe(self, obs: Packet) -> list[Event]:
        if self._first_ts is None:
            self._first_ts = obs.ts
        proto = obs.proto
        if proto != TCP and proto != UDP:
            return []
        out: list[Event] = []
        self._expire(obs.ts, out)
        fwd = (obs.src, obs.sport, obs.dst, obs.dport, proto)
        conn = self._conns.get(fwd)
        if conn is not None:
            conn.last = obs.ts
            conn.bytes += obs.payload_len
            self._conns.move_to_end(fwd)
            if proto == TCP and obs.flags & (FIN | RST):
                self._close(fwd, out)
            return out
        rev = (obs.dst, obs.dport, obs.src, obs.sport, proto)
        conn = self._conns.get(rev)
        if conn is not None:
            conn.last = obs.ts
            conn.bytes += obs.payload_len
            self._conns.move_to_end(rev)
            if proto == TCP:
                if obs.flags & (SYN | ACK) == SYN | ACK:
                    conn.established = True
                if obs.flags & (FIN | RST):
                    self._close(rev, out)
            else:
                conn.established = True
            return out
        # A new flow: only those the defended host opens, to the outside, not DNS.
        if obs.dport == 53 or not self.home[obs.src] or self.home[obs.dst]:
            return out
        if proto == TCP and obs.flags & (SYN | ACK | RST) != SYN:
            return out
        if self.allow is not None and obs.dst in self.allow:
            self.stats["allowlisted"] += 1
            return out
        self._conns[fwd] = _Conn(obs.ts, obs.ts, obs.payload_len, established=proto == UDP)
        while len(self._conns) > self.max_conns:
            key = next(iter(self._conns))
            self._close(key, out)
        return out

    def flush(self, now: float) -> list[Event]:
        out: list[Event] = []
        self._expire(now, out)
        return out

    def _expire(self, now: float, out: list[Event]) -> None:
        conns = self._conns
        while conns:
            key, conn = next(iter(conns.items()))
            if now - conn.last <= self.conn_idle:
                break
            self._close(key, out)

    def _close(self, key: tuple[str, int, str, int, int], out: list[Event]) -> None:
        conn = self._conns.pop(key)
        if not conn.established:
            self.stats["failed-handshake"] += 1
            return
        src, _sport, dst, dport, proto = key
        skey = (src, dst, dport, proto)
        series = self._series.get(skey)
        if series is None or conn.start - series.last > self.episode_timeout:
            series = _Series(deque(maxlen=self.max_samples), deque(maxlen=self.max_samples))
            self._series[skey] = series
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(skey)
        # Connections close out of order; keep the series sorted by start (almost always an
        # append).
        if series.starts and conn.start < series.starts[-1]:
            pairs = sorted(
                [*zip(series.starts, series.sizes, strict=True), (conn.start, conn.bytes)]
            )
            series.starts = deque((p[0] for p in pairs), maxlen=self.max_samples)
            series.sizes = deque((p[1] for p in pairs), maxlen=self.max_samples)
        else:
            series.starts.append(conn.start)
            series.sizes.append(conn.bytes)
        series.last = max(series.last, conn.start)
        if series.alerted or len(series.starts) < self.min_connections:
            return
        starts = list(series.starts)
        if statistics.median(b - a for a, b in pairwise(starts)) < self.min_interval:
            self.stats["strobe"] += 1
            return
        first = self._first_ts if self._first_ts is not None else starts[0]
        observed = min(self.window, max(conn.last, starts[-1]) - first)
        result = score_series(starts, list(series.sizes), observed)
        if result.score < self.threshold or result.timing < self.min_timing:
            return
        series.alerted = True
        out.append(self._event(src, dst, dport, proto, starts[-1], len(starts), result))

    def _event(
        self, src: str, dst: str, dport: int, proto: int, ts: float, count: int,
        result: BeaconScore,
    ) -> Event:
        techniques: list[Technique] = [T1071]
        if dport in ENCRYPTED_PORTS:
            techniques.append(T1573)
        if dport not in COMMON_PORTS:
            techniques.append(T1571)
        return Event(
            name=BEACON,
            ts=ts,
            severity=Severity.HIGH if result.score >= 0.9 else Severity.MEDIUM,
            source_ip=src,
            destination_ip=dst,
            destination_port=dport,
            transport=transport_name(proto),
            detail={
                "ip": dst,
                "src": src,
                "dst": dst,
                "port": dport,
                "interval": result.interval,
                "jitter": result.jitter,
                "count": count,
                "score": result.score,
                "subscores": {
                    "timing": result.timing,
                    "size": result.size,
                    "histogram": result.histogram,
                    "coverage": result.coverage,
                },
            },
            techniques=tuple(techniques),
            episode=f"{BEACON}:{src}:{dst}:{dport}:{transport_name(proto)}",
            message=f"{src} beacons to {dst}:{dport} every {result.interval}s "
            f"(jitter {result.jitter}, {count} connections, score {result.score})",
        )
