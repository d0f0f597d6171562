"""The scan detector on synthetic packets, scan type by scan type, and its edge cases."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from garrison.config import ScannerConfig
from garrison.detect.homenet import HomeNet
from garrison.detect.scan import MAX_CONTACTS, ScanDetector
from garrison.events import Event, Severity
from garrison.observations import ACK, FIN, ICMP, PSH, RST, SYN, TCP, UDP, URG, Packet

HOME = "198.51.100.1"
HOME6 = "2001:db8:1::1"
ATTACKER = "203.0.113.50"


def tcp(ts: float, src: str, dst: str, sport: int, dport: int, flags: int,
        payload: int = 0) -> Packet:
    v = 6 if ":" in src else 4
    return Packet(ts, src, dst, TCP, sport, dport, flags, 40 + payload, payload, 1024, b"", v)


def udp(ts: float, src: str, dst: str, sport: int, dport: int) -> Packet:
    return Packet(ts, src, dst, UDP, sport, dport, 0, 28, 0, 0, b"", 6 if ":" in src else 4)


def icmp_port_unreachable(ts: float, home: str, attacker: str, dport: int) -> Packet:
    quoted = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, UDP, 0, 0])
    quoted += bytes(int(x) for x in attacker.split(".")) + bytes(int(x) for x in home.split("."))
    quoted += (40000).to_bytes(2, "big") + dport.to_bytes(2, "big") + b"\x00\x08\x00\x00"
    return Packet(ts, home, attacker, ICMP, 3, 3, 0, 56, 28, 0, quoted, 4)


def detector(home: Iterable[str] = (f"{HOME}/32", f"{HOME6}/128"), **cfg: object) -> ScanDetector:
    return ScanDetector(ScannerConfig(**cfg), HomeNet(list(home)))  # type: ignore[arg-type]


def run(det: ScanDetector, packets: Iterable[Packet]) -> list[Event]:
    out: list[Event] = []
    for p in packets:
        out += det.observe(p)
    out += det.finish()
    return out


def episodes(events: list[Event]) -> dict[str, Event]:
    """Latest event per episode."""
    latest: dict[str, Event] = {}
    for ev in events:
        assert ev.episode is not None
        latest[ev.episode] = ev
    return latest


def probe_closed(ts: float, port: int, flags: int, src: str = ATTACKER,
                 dst: str = HOME) -> list[Packet]:
    """A probe of a closed port and the host's RST."""
    return [tcp(ts, src, dst, 40000, port, flags),
            tcp(ts + 0.0005, dst, src, port, 40000, RST | ACK)]


def syn_scan(n: int, start: float = 1000.0, gap: float = 0.01, src: str = ATTACKER,
             dst: str = HOME, open_ports: Iterable[int] = ()) -> list[Packet]:
    opened = set(open_ports)
    pkts: list[Packet] = []
    for i in range(n):
        port, ts = 1 + i, start + i * gap
        if port in opened:
            pkts += [tcp(ts, src, dst, 40000, port, SYN),
                     tcp(ts + 0.0005, dst, src, port, 40000, SYN | ACK),
                     tcp(ts + 0.001, src, dst, 40000, port, RST)]
        else:
            pkts += probe_closed(ts, port, SYN, src, dst)
    return pkts


@pytest.mark.parametrize(
    ("flags", "kind"),
    [(0, "null"), (FIN, "fin"), (FIN | PSH | URG, "xmas")],
)
def test_stealth_scans_are_classified(flags: int, kind: str) -> None:
    pkts = [p for i in range(50) for p in probe_closed(1000 + i * 0.01, 1 + i, flags)]
    eps = episodes(run(detector(), pkts))
    assert len(eps) == 1
    ev = next(iter(eps.values()))
    assert ev.detail["type"] == kind
    assert ev.detail["ip"] == ATTACKER
    assert ev.detail["port_count"] == 50
    assert ev.detail["verified"] is False


def test_syn_scan_one_episode_growing_severity() -> None:
    events = run(detector(), syn_scan(1200, open_ports=[22, 80]))
    eps = episodes(events)
    assert len(eps) == 1
    final = next(iter(eps.values()))
    assert final.detail["type"] == "syn"
    assert final.detail["port_count"] == 1200
    assert final.severity == Severity.CRITICAL
    severities = [e.severity for e in events]
    assert severities == sorted(severities), "severity only ever grows within an episode"
    assert len(events) <= 6, "updates, not one event per packet"
    assert final.detail["first_seen"] == 1000.0
    assert 22 in final.detail["ports"]


def test_detects_a_clear_scanner_within_a_handful_of_probes() -> None:
    det = detector()
    first_event_after = None
    for i, p in enumerate(syn_scan(30)):
        if det.observe(p):
            first_event_after = i // 2 + 1  # probes sent so far
            break
    assert first_event_after is not None and first_event_after <= 5


def test_connect_scan_completes_handshakes_and_is_verified() -> None:
    pkts: list[Packet] = []
    for i in range(40):
        port, ts = 1 + i, 1000 + i * 0.01
        if port in (22, 25):
            pkts += [tcp(ts, ATTACKER, HOME, 40000 + i, port, SYN),
                     tcp(ts + 0.0005, HOME, ATTACKER, port, 40000 + i, SYN | ACK),
                     tcp(ts + 0.001, ATTACKER, HOME, 40000 + i, port, ACK),
                     tcp(ts + 0.002, ATTACKER, HOME, 40000 + i, port, RST | ACK)]
        else:
            pkts += probe_closed(ts, port, SYN)
    ev = next(iter(episodes(run(detector(), pkts)).values()))
    assert ev.detail["type"] == "connect"
    assert ev.detail["verified"] is True


def test_ack_scan_counts_only_when_the_host_answers_with_rst() -> None:
    # Bare ACKs are what every connection sends; without RSTs they are no evidence.
    quiet = [tcp(1000 + i * 0.01, ATTACKER, HOME, 40000, 1 + i, ACK) for i in range(60)]
    assert run(detector(), quiet) == []
    answered = [p for i in range(60) for p in [
        tcp(1000 + i * 0.01, ATTACKER, HOME, 40000, 1 + i, ACK),
        tcp(1000 + i * 0.01 + 0.0005, HOME, ATTACKER, 1 + i, 40000, RST)]]
    ev = next(iter(episodes(run(detector(), answered)).values()))
    assert ev.detail["type"] == "ack"


def test_maimon_scan() -> None:
    pkts = [p for i in range(30) for p in [
        tcp(1000 + i * 0.01, ATTACKER, HOME, 40000, 1 + i, FIN | ACK),
        tcp(1000 + i * 0.01 + 0.0005, HOME, ATTACKER, 1 + i, 40000, RST)]]
    ev = next(iter(episodes(run(detector(), pkts)).values()))
    assert ev.detail["type"] == "maimon"


def test_udp_scan_with_icmp_unreachables() -> None:
    pkts: list[Packet] = []
    for i in range(30):
        ts = 1000 + i * 0.05
        pkts.append(udp(ts, ATTACKER, HOME, 40000, 1 + i))
        if i % 3 == 0:  # Linux rate-limits ICMP: most probes get no answer
            pkts.append(icmp_port_unreachable(ts + 0.001, HOME, ATTACKER, 1 + i))
    ev = next(iter(episodes(run(detector(), pkts)).values()))
    assert ev.detail["type"] == "udp"
    assert ev.transport == "udp"
    assert ev.detail["answered"]["closed_or_silent"] >= 10


def test_ipv6_syn_scan() -> None:
    src = "2001:db8:2::50"
    ev = next(iter(episodes(run(detector(), syn_scan(40, src=src, dst=HOME6))).values()))
    assert ev.detail["ip"] == src
    assert ev.source_ip == src
    assert ev.detail["type"] == "syn"


def test_private_source_is_detected_too() -> None:
    eps = episodes(run(detector(), syn_scan(40, src="10.1.2.3")))
    assert [e.detail["ip"] for e in eps.values()] == ["10.1.2.3"]


def test_busy_benign_client_is_not_a_scanner() -> None:
    # Thousands of connections to two open services over an hour, some RSTs on close.
    pkts: list[Packet] = []
    client = "203.0.113.77"
    for i in range(3000):
        port = 443 if i % 3 else 80
        ts, sport = 1000 + i * 1.2, 30000 + i % 20000
        pkts += [tcp(ts, client, HOME, sport, port, SYN),
                 tcp(ts + 0.001, HOME, client, port, sport, SYN | ACK),
                 tcp(ts + 0.002, client, HOME, sport, port, ACK),
                 tcp(ts + 0.1, client, HOME, sport, port, FIN | ACK),
                 tcp(ts + 0.101, HOME, client, port, sport, FIN | ACK),
                 tcp(ts + 0.102, client, HOME, sport, port, ACK)]
        if i % 50 == 0:
            pkts.append(tcp(ts + 0.2, client, HOME, sport, port, RST))
    assert run(detector(), pkts) == []


def test_host_retrying_one_closed_port_is_not_a_scanner() -> None:
    pkts = [p for i in range(500) for p in probe_closed(1000 + i * 2.0, 8080, SYN)]
    assert run(detector(), pkts) == []


def test_home_initiated_connections_are_not_probes() -> None:
    # The defended host browses: replies (SYN-ACK, data, ACKs, FINs) from many servers on
    # many ephemeral ports must not look like an ACK/Maimon scan by those servers.
    pkts: list[Packet] = []
    for i in range(200):
        server, ts, eph = f"203.0.113.{10 + i % 40}", 1000 + i * 0.05, 33000 + i
        pkts += [tcp(ts, HOME, server, eph, 443, SYN),
                 tcp(ts + 0.01, server, HOME, 443, eph, SYN | ACK),
                 tcp(ts + 0.02, HOME, server, eph, 443, ACK),
                 tcp(ts + 0.03, server, HOME, 443, eph, ACK),
                 tcp(ts + 0.04, server, HOME, 443, eph, FIN | ACK),
                 udp(ts, HOME, "198.51.100.53", eph, 53),
                 udp(ts + 0.005, "198.51.100.53", HOME, 53, eph)]
    assert run(detector(), pkts) == []


def test_slow_scan_one_probe_per_five_minutes_is_caught() -> None:
    # nmap -T0: 300 s between probes; Zeek's 5-minute epochs miss it, TRW does not.
    pkts = [p for i in range(8) for p in probe_closed(1000 + i * 300.0, 20 + i, SYN)]
    det = detector()
    events = run(det, pkts)
    eps = episodes(events)
    assert len(eps) == 1
    ev = next(iter(eps.values()))
    assert ev.detail["slow"] is True
    assert ev.detail["rule"] == "trw"


def test_slow_scan_t1_fifteen_seconds() -> None:
    pkts = [p for i in range(40) for p in probe_closed(1000 + i * 15.0, 1 + i, SYN)]
    ev = next(iter(episodes(run(detector(), pkts)).values()))
    assert ev.detail["slow"] is True
    assert ev.detail["port_count"] == 40


def test_unanswered_syns_fail_by_timeout() -> None:
    # A firewalled host answers nothing: probes time out and count as failures.
    det = detector()
    events: list[Event] = []
    for i in range(6):
        events += det.observe(tcp(1000 + i * 0.5, ATTACKER, HOME, 40000, 100 + i, SYN))
    events += det.flush(1000 + 20)
    assert len(episodes(events)) == 1


def test_horizontal_sweep_of_one_port() -> None:
    det = detector(home=["198.51.100.0/24"])
    pkts = [p for i in range(20)
            for p in probe_closed(1000 + i * 0.1, 445, SYN, dst=f"198.51.100.{i + 1}")]
    ev = next(iter(episodes(run(det, pkts)).values()))
    assert ev.detail["sweep"] is True
    assert ev.detail["host_count"] == 20
    assert ev.detail["ports"] == [445]
    assert ev.techniques[0].id == "T1595.001"


def test_distributed_scan_each_source_under_threshold() -> None:
    det = detector(slow_ports=1000, ports_per_window=1000, trw_threshold=0.999999)
    pkts: list[Packet] = []
    for s in range(12):
        src = f"203.0.113.{100 + s}"
        # Three probes each: below MIN_PROBES, so no source is a scanner on its own.
        for j in range(3):
            port = 1 + s * 3 + j
            pkts += probe_closed(1000 + s * 1.0 + j * 0.1, port, SYN, src=src)
    events = run(det, pkts)
    assert events
    assert all(e.detail["distributed"] for e in events)
    ev = events[-1]
    assert ev.detail["source_count"] >= 8
    assert ev.detail["target"] == HOME
    assert ev.source_ip is None


def test_memory_is_bounded_under_a_spoofed_flood() -> None:
    det = detector(max_sources=1000)
    for i in range(20000):
        src = f"203.0.{(i >> 8) & 255}.{i & 255}"
        det.observe(tcp(1000 + i * 0.0001, src, HOME, 1234, 80, SYN))
    assert len(det.sources) <= 1000
    assert det.evicted >= 19000


def test_contacts_per_source_are_capped() -> None:
    det = detector()
    run(det, [tcp(1000 + i * 0.0001, ATTACKER, f"198.51.100.{1 + i % 1}", 1, i % 65535 + 1, SYN)
              for i in range(MAX_CONTACTS + 500)])
    st = det.sources[ATTACKER]
    assert len(st.contacts) <= MAX_CONTACTS
    assert st.overflow == 500


def test_episode_closes_after_quiet_gap_and_new_scan_is_new_episode() -> None:
    det = detector()
    events = run(det, syn_scan(40))
    events += det.flush(1000 + 4 * 3600)
    events += run(det, syn_scan(40, start=1000 + 5 * 3600))
    assert len(episodes(events)) == 2


def test_replay_is_deterministic() -> None:
    pkts = syn_scan(300, open_ports=[22])
    a = [e.to_json() for e in run(detector(), pkts)]
    b = [e.to_json() for e in run(detector(), pkts)]
    assert a == b


@pytest.mark.parametrize("flags", [0, FIN | PSH | URG, FIN])
def test_a_single_spoofable_packet_is_never_an_alert(flags: int) -> None:
    # Our predecessor called one NULL or XMAS packet "critical" and blocked on it: anyone
    # could get any address firewalled by spoofing one packet.
    det = detector()
    events = run(det, probe_closed(1000, 80, flags) + probe_closed(1001, 443, flags))
    assert events == []


def test_small_stealth_scan_is_low_severity_and_unverified() -> None:
    pkts = [p for i in range(5) for p in probe_closed(1000 + i * 0.01, 1 + i, FIN | PSH | URG)]
    ev = next(iter(episodes(run(detector(), pkts)).values()))
    assert ev.severity == Severity.LOW
    assert ev.detail["verified"] is False


def test_spoofed_syn_scan_naming_a_real_client_stays_unverified() -> None:
    # The bystander really browses port 80 (handshake, data, graceful close); an attacker
    # spoofs a SYN scan in its name. The handshake proves the address is real, not that it
    # scanned: the episode must stay a forgeable "syn" scan.
    bystander = "203.0.113.99"
    pkts = [tcp(999.0, bystander, HOME, 50000, 80, SYN),
            tcp(999.001, HOME, bystander, 80, 50000, SYN | ACK),
            tcp(999.002, bystander, HOME, 50000, 80, ACK),
            tcp(999.2, bystander, HOME, 50000, 80, ACK, payload=300),
            tcp(1004.0, bystander, HOME, 50000, 80, FIN | ACK)]
    for i in range(60):
        port, ts = 1000 + i, 1000 + i * 0.01
        pkts += probe_closed(ts, port, SYN, src=bystander)
    pkts.append(tcp(1002.9, bystander, HOME, 40000, 22, SYN))  # spoofed probe of an open port
    pkts.append(tcp(1003.0, HOME, bystander, 22, 40000, SYN | ACK))
    pkts.append(tcp(1003.001, bystander, HOME, 40000, 22, RST))  # the real host knows nothing
    ev = next(iter(episodes(run(detector(), sorted(pkts))).values()))
    assert ev.detail["type"] == "syn"
    assert ev.detail["verified"] is False
    assert ev.detail["handshakes"] == {"completed": 1, "aborted": 0}


def test_connect_scan_against_closed_ports_only_is_not_verified() -> None:
    # Nothing open: no handshake can complete, so nothing proves the source is real.
    ev = next(iter(episodes(run(detector(), syn_scan(50))).values()))
    assert ev.detail["verified"] is False
