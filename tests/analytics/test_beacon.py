"""Beacon scoring and the beacon detector on synthetic connections."""

from __future__ import annotations

import random

import pytest

from garrison.detect.beacon import BeaconDetector, score_series
from garrison.events import BEACON, Event
from garrison.observations import Packet
from tests.analytics.synth import HOME, HOME_NET, OUTSIDE, tcp_session, udp

C2 = "203.0.113.66"


def series(n: int, interval: float, jitter: float, rng: random.Random) -> list[float]:
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += interval * (1 + rng.uniform(-jitter, jitter))
    return out


def run(det: BeaconDetector, packets: list[Packet]) -> list[Event]:
    events: list[Event] = []
    for p in sorted(packets, key=lambda p: p.ts):
        events += det.observe(p)
    return events + det.flush(packets[-1].ts + 1000)


def sessions(starts: list[float], dst: str = C2, dport: int = 443, size: int = 200,
             rng: random.Random | None = None, **kw: object) -> list[Packet]:
    out: list[Packet] = []
    for i, t in enumerate(starts):
        up = size if rng is None else size + rng.randrange(-3, 4)
        out += tcp_session(1000.0 + t, HOME, dst, 40000 + i, dport, up=up, **kw)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("jitter", [0.0, 0.05, 0.15, 0.20])
def test_regular_series_scores_high_under_jitter(jitter: float) -> None:
    rng = random.Random(int(jitter * 100))
    starts = series(60, 60.0, jitter, rng)
    s = score_series(starts, [200.0] * len(starts), starts[-1] - starts[0])
    assert s.score >= 0.85 and s.timing >= 0.85
    assert s.interval == pytest.approx(60.0, rel=0.1)
    assert s.jitter <= jitter / 2 + 0.01


def test_random_arrivals_score_low_on_timing() -> None:
    rng = random.Random(9)
    starts, t = [], 0.0
    for _ in range(80):
        starts.append(t)
        t += rng.expovariate(1 / 60.0)
    s = score_series(starts, [200.0] * len(starts), starts[-1] - starts[0])
    assert s.timing < 0.8


def test_score_needs_data() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        score_series([1.0, 2.0], [1.0, 1.0], 10.0)


def test_jittered_beacon_is_reported_once_with_fields() -> None:
    rng = random.Random(10)
    det = BeaconDetector(HOME_NET)
    events = run(det, sessions(series(40, 30.0, 0.15, rng), rng=rng))
    assert len(events) == 1
    ev = events[0]
    assert ev.name == BEACON and ev.source_ip == HOME and ev.destination_ip == C2
    d = ev.detail
    assert d["ip"] == C2 and d["dst"] == C2 and d["src"] == HOME and d["port"] == 443
    assert d["interval"] == pytest.approx(30.0, rel=0.1)
    assert d["count"] >= 20 and d["score"] >= 0.8 and d["jitter"] < 0.15
    assert {t.id for t in ev.techniques} >= {"T1071", "T1573"}


def test_random_polling_is_not_a_beacon() -> None:
    rng = random.Random(11)
    starts, t = [], 0.0
    for _ in range(60):
        starts.append(t)
        t += rng.expovariate(1 / 20.0)
    assert run(BeaconDetector(HOME_NET), sessions(starts)) == []


def test_strobe_is_not_a_beacon() -> None:
    det = BeaconDetector(HOME_NET)
    assert run(det, sessions(series(100, 0.4, 0.05, random.Random(12)))) == []
    assert det.stats["strobe"] > 0


def test_failed_handshake_retries_are_not_a_beacon() -> None:
    det = BeaconDetector(HOME_NET)
    starts = series(60, 3.0, 0.0, random.Random(13))
    assert run(det, sessions(starts, answered=False)) == []
    assert det.stats["failed-handshake"] == 60


def test_allowlisted_destination_and_inbound_traffic_are_ignored() -> None:
    rng = random.Random(14)
    starts = series(40, 30.0, 0.05, rng)
    import ipaddress

    det = BeaconDetector(HOME_NET, allowlist=[ipaddress.ip_network("203.0.113.0/24")])
    assert run(det, sessions(starts)) == []
    inbound: list[Packet] = []
    for i, t in enumerate(starts):  # an outside client polling our server: not our beacon
        inbound += tcp_session(1000.0 + t, OUTSIDE, HOME, 50000 + i, 8080)
    assert run(BeaconDetector(HOME_NET), inbound) == []


def test_udp_beacon_with_new_source_ports() -> None:
    rng = random.Random(15)
    packets: list[Packet] = []
    for i, t in enumerate(series(40, 45.0, 0.1, rng)):
        packets.append(udp(1000.0 + t, HOME, C2, 30000 + i, 9999, b"x" * 48))
        packets.append(udp(1000.0 + t + 0.01, C2, HOME, 9999, 30000 + i, b"y" * 16))
    events = run(BeaconDetector(HOME_NET), packets)
    assert len(events) == 1 and events[0].transport == "udp"
    assert "T1571" in {t.id for t in events[0].techniques}


def test_connection_state_is_bounded() -> None:
    det = BeaconDetector(HOME_NET, max_conns=100)
    for i in range(1000):
        det.observe(tcp_session(float(i), HOME, f"203.0.113.{i % 250}", 1024 + i, 443)[0])
    assert len(det._conns) <= 100


def test_long_udp_stream_is_one_flow_not_a_beacon() -> None:
    """A continuous UDP stream on one port pair (a VPN, QUIC) must not be chopped into
    regular pieces that look periodic."""
    det = BeaconDetector(HOME_NET)
    packets = [udp(1000.0 + 0.5 * i, HOME, C2, 51820, 51820, b"x" * 100) for i in range(20_000)]
    assert run(det, packets) == []
    assert len(det._series) <= 1
