"""Behavioural bot scoring: per-key request history and the risk it implies.

A key (an IP group or a session) keeps its last :data:`HISTORY` requests in fixed-size rings
(timestamp, path hash, status, bytes), so its memory is bounded and its counters are windowed:
only requests within ``window`` seconds of the newest count.

Features, each normalised to 0..1 (risk):

* ``rate``: requests in the last minute / 150 (a sliding two-bucket count, so never
  extrapolated: a browser fetching a page and its assets in 0.2 s is 7 requests, not 2100 rpm);
* ``errors``: share of 4xx/5xx answers;
* ``entropy``: U-shaped around 1.66 bits of endpoint entropy. Above it (walking many distinct
  pages) risk rises to 1 at the most spread-out history possible; below it (hammering one
  endpoint) risk rises to 1 at 0 bits but is *gated* by harm (see below). The top of the scale
  is ``log2(max(n, 16))`` for ``n`` requests, so a short history is not judged too spread out;
* ``timing``: regularity ``1 - min(cv / 2, 1)`` of the gaps (cv: coefficient of variation),
  also gated by harm;
* ``volume``: bytes sent in the window / 50 MB.

Gating is the fix for the predecessor's false positive: a dashboard polling ``/api/status``
once a second is perfectly regular and hits one endpoint, yet harms no one. Regularity and
single-endpoint focus only count in proportion to *harm*: the rate, the share of 4xx answers
(client errors; 5xx are the server's fault and do not gate), or breadth (high entropy). A slow
regular poller therefore scores low, while the same regularity walking many pages (a scraper)
or failing logins (credential stuffing) scores high.

No judgement before ``min_requests`` requests spanning ``min_span`` seconds: a first visit,
or a browser fetching one page and its assets, is never scored.
"""

from __future__ import annotations

import math
import operator
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Final

HISTORY: Final = 32
"""Requests remembered per key."""

ENTROPY_CENTRE: Final = 1.66
"""Endpoint entropy (bits) of ordinary browsing: the bottom of the U."""

RPM_FULL: Final = 150.0
"""Requests per minute that count as full rate risk."""

VOLUME_FULL: Final = 50 * 1024 * 1024
"""Bytes per window that count as full volume risk."""

_PATH, _SIZE, _STATUS = 1, 2, 3
"""Offsets within one request's record; records are interleaved (timestamp, path, bytes,
status), so recording a request touches one 32-byte span of the ring (one cache line), not
four scattered slots: with many thousands of keys, cache misses are most of the cost."""
_ZEROS: Final = bytes(8 * 4 * HISTORY)
_NO_RING: Final = array("d")  # shared and empty: a key that never had a request
_MAX_SIZE: Final = float(1 << 52)
_AT_LEAST_400: Final = (400.0).__le__
_AT_LEAST_500: Final = (500.0).__le__  # doubles hold integers exactly up to 2**53

IP_WEIGHTS: Final = {"rate": 0.30, "errors": 0.10, "entropy": 0.25, "timing": 0.25, "volume": 0.10}
SESSION_WEIGHTS: Final = {"rate": 0.35, "timing": 0.35, "entropy": 0.30}


@dataclass(frozen=True, slots=True)
class Features:
    """Normalised features of one key (each 0..1) and the raw figures behind them."""

    rate: float
    errors: float
    entropy: float
    timing: float
    volume: float
    rpm: float
    entropy_bits: float
    cv: float
    requests: int

    def risk(self, weights: dict[str, float]) -> float:
        """Weighted risk 0..1 (weights are normalised to sum to 1)."""
        total = sum(weights.values())
        if total <= 0:
            return 0.0
        value = sum(getattr(self, name) * w for name, w in weights.items())
        return float(max(0.0, min(1.0, value / total)))

    def as_dict(self) -> dict[str, float]:
        return {
            "rate": round(self.rate, 3), "errors": round(self.errors, 3),
            "entropy": round(self.entropy, 3), "timing": round(self.timing, 3),
            "volume": round(self.volume, 3), "rpm": round(self.rpm, 1),
            "entropy_bits": round(self.entropy_bits, 3), "cv": round(self.cv, 3),
            "requests": self.requests,
        }


def path_hash(path: str) -> int:
    """A 32-bit signed hash of a path (stable across processes, unlike ``hash``)."""
    h = zlib.crc32(path.encode("utf-8", "surrogateescape"))
    return h - (1 << 32) if h >= (1 << 31) else h


class History:
    """The last :data:`HISTORY` requests of one key, in one ring of doubles (one allocation):
    one record of four doubles (timestamp, path hash, bytes, status) per request. About 1.1 KB,
    allocated with the first request."""

    __slots__ = ("_bucket", "_cur", "_prev", "_ring", "count", "idx")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every request. The ring is allocated by the first :meth:`add`, so an
        identity that is never scored (an API key, a limiter-only record) costs no ring."""
        self._ring = _NO_RING
        self.idx = 0
        self.count = 0
        self._bucket = 0.0
        self._cur = 0
        self._prev = 0

    def add(self, ts: float, path: int, status: int, size: int) -> None:
        """Record one answered request (``ts`` seconds, ``size`` bytes sent)."""
        i = self.idx
        ring = self._ring
        if not ring:
            ring = self._ring = array("d", _ZEROS)
        r = 4 * i
        ring[r] = ts
        ring[r + _PATH] = path
        ring[r + _SIZE] = size if 0 <= size < _MAX_SIZE else (_MAX_SIZE if size > 0 else 0)
        ring[r + _STATUS] = status
        self.idx = (i + 1) % HISTORY
        self.count += 1
        if ts - self._bucket >= 60.0:
            self._prev = self._cur if ts - self._bucket < 120.0 else 0
            self._cur = 0
            self._bucket = ts - (ts - self._bucket) % 60.0 if self._bucket else ts
        self._cur += 1

    def per_minute(self, now: float) -> float:
        """Requests in the minute before ``now`` (sliding two-bucket estimate)."""
        age = now - self._bucket
        if age >= 120.0:
            return 0.0
        if age >= 60.0:
            return self._cur * max(0.0, 1.0 - (age - 60.0) / 60.0)
        return self._cur + self._prev * (1.0 - age / 60.0)

    def features(self, now: float, window: float, min_requests: int,
                 min_span: float) -> Features | None:
        """Features over requests within ``window`` seconds of ``now``; None if too few."""
        n = min(self.count, HISTORY)
        if n < min_requests:
            return None
        ring = self._ring
        cutoff = now - window
        # Oldest to newest. When every remembered request is inside the window (the common
        # case: 32 requests rarely span two minutes) the features come from C-level slices,
        # sums and counts over the ring instead of a Python loop over it.
        lo = 4 * self.idx
        seq = ring[lo:] + ring[:lo] if n == HISTORY else ring[:4 * n]
        ts = seq[0::4]
        if ts[0] >= cutoff:
            total = n
            statuses = seq[_STATUS::4]
            errors = sum(map(_AT_LEAST_400, statuses))
            client_errors = errors - sum(map(_AT_LEAST_500, statuses))
            volume = sum(seq[_SIZE::4])
            counts: dict[float, int] = Counter(seq[_PATH::4])
            first, prev = ts[0], ts[-1]
            gaps = list(map(operator.sub, ts[1:], ts[:-1]))
            s1 = prev - first
            s2 = sum(map(operator.mul, gaps, gaps))
            return self._features(now, min_requests, min_span, total, errors, client_errors,
                                  volume, counts, first, prev, s1, s2)
        total = errors = client_errors = 0
        volume = 0.0
        counts = {}
        first = prev = -1.0
        s1 = s2 = 0.0
        for j in range(self.idx - n, self.idx):  # oldest to newest, one pass
            i = 4 * (j % HISTORY)
            t = ring[i]
            if t < cutoff:
                continue
            total += 1
            status = ring[i + _STATUS]
            if status >= 400:
                errors += 1
                if status < 500:
                    client_errors += 1
            volume += ring[i + _SIZE]
            p = ring[i + _PATH]
            counts[p] = counts.get(p, 0) + 1
            if prev >= 0:
                gap = t - prev
                s1 += gap
                s2 += gap * gap
            else:
                first = t
            prev = t
        return self._features(now, min_requests, min_span, total, errors, client_errors, volume,
                              counts, first, prev, s1, s2)

    def _features(self, now: float, min_requests: int, min_span: float, total: int,
                  errors: int, client_errors: int, volume: float, counts: dict[float, int],
                  first: float, prev: float, s1: float, s2: float) -> Features | None:
        """Features from the window's counts and sums (``s1``/``s2``: sum of the gaps and of
        their squares, seconds)."""
        if total < min_requests or prev - first < min_span:
            return None
        rpm = self.per_minute(now)
        rate = min(rpm / RPM_FULL, 1.0)
        err_share = errors / total
        client_share = client_errors / total
        bits = 0.0
        for c in counts.values():
            share = c / total
            bits -= share * math.log2(share)
        top = math.log2(max(total, 16))
        high = (bits - ENTROPY_CENTRE) / (top - ENTROPY_CENTRE) if bits > ENTROPY_CENTRE else 0.0
        high = max(0.0, min(high, 1.0))
        harm = max(rate, client_share, high)
        if bits >= ENTROPY_CENTRE:
            entropy = high
        else:
            entropy = (ENTROPY_CENTRE - bits) / ENTROPY_CENTRE * max(rate, client_share)
        gaps = total - 1
        mean = s1 / gaps
        cv = math.sqrt(max(s2 / gaps - mean * mean, 0.0)) / mean if mean > 0 else 0.0
        regularity = 1.0 - min(cv / 2.0, 1.0)
        return Features(
            rate=rate, errors=err_share, entropy=entropy, timing=regularity * harm,
            volume=min(volume / VOLUME_FULL, 1.0), rpm=rpm, entropy_bits=bits, cv=cv,
            requests=total,
        )
