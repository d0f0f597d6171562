"""Behavioural bot scoring: per-key request history and the risk it implies.

A key (an IP group or a session) keeps its last :data:`HISTORY` requests in fixed-size rings
(timestamp, path hash, status class, bytes, squared gap; see :data:`WIDTH`), so its memory is
bounded and its counters are windowed: only requests within ``window`` seconds of the newest
count. The ring's counts (errors, paths) and sums (bytes, squared gaps) are kept as requests come
and go, so computing the features in the common case (every remembered request inside the
window) reads a few fields and the (path, count) table, not the ring: the scorer runs after
nearly every request a server answers, by when a ring has gone cold.

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
import zlib
from typing import Final, NamedTuple

from librt.vecs import vec

HISTORY: Final = 32
"""Requests remembered per key."""

ENTROPY_CENTRE: Final = 1.66
"""Endpoint entropy (bits) of ordinary browsing: the bottom of the U."""

RPM_FULL: Final = 150.0
"""Requests per minute that count as full rate risk."""

VOLUME_FULL: Final = 50 * 1024 * 1024
"""Bytes per window that count as full volume risk."""

WIDTH: Final = 5
"""Doubles per request in the ring: timestamp, bytes, the squared gap to the request before
(seconds squared), the status class (0: < 400, 1: 4xx, 2: 5xx) and the path's hash (see
:func:`path_hash`; 32 bits, exact in a double), interleaved, so recording a request touches one
span of one buffer (with many keys, the cache misses are the cost, not the arithmetic). The ring
is a ``librt.vecs.vec[float]``: unboxed doubles in one buffer object that the compiled build
reads and writes with plain loads and stores (``array`` took a boxed float and a C call per
element, ``struct.pack_into`` one call with five boxed arguments: together about 2,000
instructions per recorded request, now about 100); bytes and squared gaps are also kept as
running sums."""
# Offsets in a request's span of the ring (Final, so compiled code uses the constants instead
# of looking the names up in the module on every use).
_SIZE: Final = 1
_GAP2: Final = 2
_CLS: Final = 3
_PATH: Final = 4
_SLOTS: Final = WIDTH * HISTORY
_NO_RING: Final = vec[float]()  # shared and empty: a key that never had a request
_PLOGP: Final = tuple(
    (0.0, *(-(c / n) * math.log2(c / n) for c in range(1, HISTORY + 1))) for n in range(HISTORY + 1)
    if n
)
"""``_PLOGP[n - 1][c]``: the entropy term of a path seen ``c`` times among ``n`` requests."""
_TOP: Final = tuple(math.log2(n if n > 16 else 16) for n in range(HISTORY + 1))
"""``_TOP[n]``: the top of the entropy scale for ``n`` requests (a table: compiled,
``math.log2`` is a generic call with a boxed argument and result)."""
_RESYNC: Final = 64
"""Requests after which a key's running sums are recomputed from its ring (float drift)."""

IP_WEIGHTS: Final = {"rate": 0.30, "errors": 0.10, "entropy": 0.25, "timing": 0.25, "volume": 0.10}
SESSION_WEIGHTS: Final = {"rate": 0.35, "timing": 0.35, "entropy": 0.30}
FEATURES: Final = ("rate", "errors", "entropy", "timing", "volume")
"""The normalised features, in the order of :class:`Features` and of :func:`weight_vector`."""


def weight_vector(weights: dict[str, float]) -> tuple[float, float, float, float, float]:
    """``weights`` as one factor per feature (in :data:`FEATURES` order), normalised to sum
    to 1 (all zeros when they sum to 0 or less), for :meth:`Features.weighted`."""
    total = sum(weights.values())
    if total <= 0:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    r, e, n, t, v = (float(weights.get(name, 0.0)) / total for name in FEATURES)
    return (r, e, n, t, v)


class Features(NamedTuple):
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
        return self.weighted(weight_vector(weights))

    def weighted(self, w: tuple[float, float, float, float, float]) -> float:
        """Risk 0..1 with a :func:`weight_vector` (the engine computes that once)."""
        return weighted_risk(self, w)

    def as_dict(self) -> dict[str, float]:
        return {
            "rate": round(self.rate, 3), "errors": round(self.errors, 3),
            "entropy": round(self.entropy, 3), "timing": round(self.timing, 3),
            "volume": round(self.volume, 3), "rpm": round(self.rpm, 1),
            "entropy_bits": round(self.entropy_bits, 3), "cv": round(self.cv, 3),
            "requests": self.requests,
        }


Measure = tuple[float, float, float, float, float, float, float, float, int]
"""The fields of :class:`Features` as a plain tuple."""


def weighted_risk(m: Measure, w: tuple[float, float, float, float, float]) -> float:
    """Risk 0..1 of a :data:`Measure` with a :func:`weight_vector`."""
    value = m[0] * w[0] + m[1] * w[1] + m[2] * w[2] + m[3] * w[3] + m[4] * w[4]
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def path_hash(path: str) -> int:
    """A 32-bit hash of a path (stable across processes, unlike ``hash``)."""
    return zlib.crc32(path.encode("utf-8", "surrogateescape"))


def status_class(status: int) -> int:
    """0 for a status below 400, 1 for a 4xx (the client's error), 2 for 5xx (the server's)."""
    return 0 if status < 400 else 1 if status < 500 else 2


NOT_JUDGED: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
"""What :meth:`History.assess` gives when there is too little history to judge (``requests``
0): a :data:`Measure` all the same, so that compiled the result stays an unboxed tuple."""


def scratch() -> vec[float]:
    """A buffer for :meth:`History.assess` to count paths in (one per scorer, reused: counting
    a history then allocates nothing)."""
    return vec[float]([0.0] * (2 * HISTORY))


def _tally(counts: vec[float], m: int, path: float) -> int:
    """Count one request's ``path`` in the first ``m`` slots of ``counts``, (path, count) pairs
    in order of first sight; the slots now used. A linear scan of at most :data:`HISTORY`
    pairs of unboxed doubles: compiled, a fraction of what a dict costs (a boxed float, its
    hash and an entry per request, and the dict itself, per measurement)."""
    for k in range(0, m, 2):
        if counts[k] == path:
            counts[k + 1] += 1.0
            return m
    counts[m] = path
    counts[m + 1] = 1.0
    return m + 2


class History:
    """The last :data:`HISTORY` requests of one key (see :data:`WIDTH`). About 1.3 KB,
    allocated with the first request."""

    __slots__ = ("_bucket", "_cerrors", "_cur", "_errors", "_m", "_prev", "_ring", "_tab",
                 "count", "idx", "last", "s2", "volume")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every request. The ring is allocated by the first :meth:`add`, so an
        identity that is never scored (an API key, a limiter-only record) costs no ring."""
        self._ring = _NO_RING
        self.idx = 0
        self.count = 0
        self.last = 0.0
        self.volume = 0.0
        self.s2 = 0.0
        self._bucket = 0.0
        self._cur = 0
        self._prev = 0
        # What the ring holds, kept as it changes, so that measuring reads a few fields and
        # not the whole ring (1.3 KB, cold by then): its 4xx/5xx answers, its 4xx answers,
        # and its paths as (path, count) pairs in the first _m slots of _tab.
        self._errors = 0
        self._cerrors = 0
        self._tab = _NO_RING
        self._m = 0

    def add(self, ts: float, path: int, status: int, size: int) -> None:
        """Record one answered request (``ts`` seconds, ``size`` bytes sent)."""
        self.note(ts, path, 0 if status < 400 else 1 if status < 500 else 2, size)

    def note(self, ts: float, path: int, cls: int, size: float) -> None:
        """:meth:`add` with the status already as its :func:`status_class`."""
        ring = self._ring
        i = self.idx
        r = WIDTH * i
        p = float(path)
        if self.count >= HISTORY:  # the oldest request leaves the running sums
            g2 = ts - self.last
            g2 *= g2
            self.volume += size - ring[r + _SIZE]
            self.s2 += g2 - ring[r + _GAP2]
            gone = ring[r + _CLS]
            if gone != 0.0:
                self._errors -= 1
                if gone == 1.0:
                    self._cerrors -= 1
            was = ring[r + _PATH]
            if was != p:  # (the same path leaving and coming: its count stays)
                self._uncount(was)
                self._count(p)
        elif len(ring):
            g2 = ts - self.last
            g2 *= g2
            self.volume += size
            self.s2 += g2
            self._count(p)
        else:
            ring = self._ring = vec[float]([0.0] * _SLOTS)
            g2 = 0.0
            self.volume = size
            self._count(p)
        if cls != 0:
            self._errors += 1
            if cls == 1:
                self._cerrors += 1
        ring[r] = ts
        ring[r + _SIZE] = size
        ring[r + _GAP2] = g2
        ring[r + _CLS] = float(cls)
        ring[r + _PATH] = p
        self.last = ts
        self.count += 1
        if i < HISTORY - 1:
            self.idx = i + 1
        else:
            self.idx = 0
            if self.count % _RESYNC == 0:
                volume = s2 = 0.0
                for j in range(0, _SLOTS, WIDTH):
                    volume += ring[j + _SIZE]
                    s2 += ring[j + _GAP2]
                self.volume, self.s2 = volume, s2
        if ts - self._bucket >= 60.0:
            self._prev = self._cur if ts - self._bucket < 120.0 else 0
            self._cur = 0
            self._bucket = ts - (ts - self._bucket) % 60.0 if self._bucket else ts
        self._cur += 1

    def _count(self, path: float) -> None:
        """One more request for ``path`` in the (path, count) table (grown by doubling, up to
        one pair per remembered request)."""
        tab = self._tab
        m = self._m
        for k in range(0, m, 2):
            if tab[k] == path:
                tab[k + 1] += 1.0
                return
        if m >= len(tab):
            grown = vec[float]([0.0] * (2 * m if m else 8))
            for k in range(m):
                grown[k] = tab[k]
            tab = self._tab = grown
        tab[m] = path
        tab[m + 1] = 1.0
        self._m = m + 2

    def _uncount(self, path: float) -> None:
        """One request fewer for ``path``; a path no longer remembered gives its pair up to
        the last one."""
        tab = self._tab
        m = self._m
        for k in range(0, m, 2):
            if tab[k] == path:
                c = tab[k + 1] - 1.0
                if c > 0.0:
                    tab[k + 1] = c
                else:
                    m -= 2
                    tab[k] = tab[m]
                    tab[k + 1] = tab[m + 1]
                    self._m = m
                return

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
        m = self.measure(now, window, min_requests, min_span)
        return None if m is None else Features(*m)

    def measure(self, now: float, window: float, min_requests: int,
                min_span: float) -> Measure | None:
        """:meth:`features` as a plain tuple in the same order."""
        m = self.assess(now, window, min_requests, min_span, scratch())
        return m if m[8] else None

    def assess(self, now: float, window: float, min_requests: int, min_span: float,
              counts: vec[float]) -> Measure:
        """:meth:`measure` for the scorer, which runs after nearly every request: the paths
        are counted in ``counts`` (see :func:`scratch`), and too little history is
        :data:`NOT_JUDGED` rather than None. Compiled, it then allocates nothing: the result
        is an unboxed tuple, where ``Measure | None`` was a tuple object and eight boxed
        floats per call, freed a moment later."""
        n = self.count if self.count < HISTORY else HISTORY
        if n < min_requests:
            return NOT_JUDGED
        ring = self._ring
        lo = WIDTH * self.idx if n == HISTORY else 0  # the oldest request
        first = ring[lo]
        newest = self.last
        cutoff = now - window
        if first >= cutoff:
            # Every remembered request is inside the window (the common case: 32 requests
            # rarely span two minutes): the counts and sums kept by note(), without reading
            # the ring; the squared gaps leave out the oldest request's (its predecessor is
            # gone).
            return self._features(now, min_requests, min_span, n, self._errors, self._cerrors,
                                  self.volume, self._tab, self._m, first, newest,
                                  newest - first, self.s2 - ring[lo + _GAP2])
        total = errors = client_errors = m = 0
        volume = 0.0
        first = prev = -1.0
        s1 = s2 = 0.0
        for j in range(self.idx - n, self.idx):  # oldest to newest, one pass
            k = j % HISTORY
            i = WIDTH * k
            t = ring[i]
            if t < cutoff:
                continue
            total += 1
            cls = ring[i + _CLS]
            if cls:
                errors += 1
                if cls == 1.0:
                    client_errors += 1
            volume += ring[i + _SIZE]
            m = _tally(counts, m, ring[i + _PATH])
            if prev >= 0:
                gap = t - prev
                s1 += gap
                s2 += gap * gap
            else:
                first = t
            prev = t
        return self._features(now, min_requests, min_span, total, errors, client_errors, volume,
                              counts, m, first, prev, s1, s2)

    def _features(self, now: float, min_requests: int, min_span: float, total: int,
                  errors: int, client_errors: int, volume: float, counts: vec[float],
                  m: int, first: float, prev: float, s1: float, s2: float) -> Measure:
        """Features from the window's counts and sums (``counts``: the first ``m`` slots, see
        :func:`_tally`; ``s1``/``s2``: sum of the gaps and of their squares, seconds)."""
        if total < min_requests or prev - first < min_span:
            return NOT_JUDGED
        rpm = self.per_minute(now)
        rate = rpm / RPM_FULL
        if rate > 1.0:
            rate = 1.0
        client_share = client_errors / total
        terms = _PLOGP[total - 1]
        bits = 0.0
        for k in range(1, m, 2):  # in order of first sight, as a dict would sum
            bits += terms[int(counts[k])]
        top = _TOP[total]
        if bits > ENTROPY_CENTRE:
            high = (bits - ENTROPY_CENTRE) / (top - ENTROPY_CENTRE)
            if high > 1.0:
                high = 1.0
            entropy = high
        else:
            high = 0.0
            focus = rate if rate > client_share else client_share
            entropy = (ENTROPY_CENTRE - bits) / ENTROPY_CENTRE * focus
        harm = rate if rate > client_share else client_share
        if high > harm:
            harm = high
        gaps = total - 1
        mean = s1 / gaps
        var = s2 / gaps - mean * mean
        cv = math.sqrt(var if var > 0.0 else 0.0) / mean if mean > 0 else 0.0
        regularity = 1.0 - cv / 2.0 if cv < 2.0 else 0.0
        v = volume / VOLUME_FULL
        return (rate, errors / total, entropy, regularity * harm, v if v < 1.0 else 1.0, rpm,
                bits, cv, total)
