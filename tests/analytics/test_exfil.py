"""The exfiltration sentinel on synthetic packets and connection records."""

from __future__ import annotations

from garrison.detect.exfil import ExfilDetector
from garrison.events import EXFIL, Event, Severity
from garrison.observations import ACK, SYN, Packet
from garrison.sensors.connections import Connection, FlowBytes
from tests.analytics.synth import HOME, HOME_NET, OUTSIDE, tcp

DEST = "203.0.113.66"


def upload(ts: float, total: int, *, dst: str = DEST, dport: int = 4444, sport: int = 41000,
           seconds: float = 1.0, seg: int = 65_000, handshake: bool = True) -> list[Packet]:
    """An outbound TCP flow carrying ``total`` bytes over ``seconds``, acks coming back."""
    out: list[Packet] = []
    if handshake:
        out += [tcp(ts, HOME, dst, sport, dport, SYN), tcp(ts, dst, HOME, dport, sport, SYN | ACK)]
    n = max(1, total // seg)
    for i in range(n):
        t = ts + seconds * (i + 1) / n
        out.append(tcp(t, HOME, dst, sport, dport, ACK, seg))
        out.append(tcp(t, dst, HOME, dport, sport, ACK, 0))
    return out


def feed(det: ExfilDetector, items: list[Packet | Connection], end: float | None = None
         ) -> list[Event]:
    events: list[Event] = []
    for x in items:
        events += det.observe(x)
    return events + det.flush(end if end is not None else items[-1].ts + 10)


def conn(ts: float, sport: int = 41000, dport: int = 4444, pid: int = 4242,
         exe: str = "/usr/bin/ncat", dst: str = DEST) -> Connection:
    return Connection(ts, "tcp", HOME, sport, dst, dport, "ESTABLISHED", "outbound",
                      "net:[1]", 99, 0, pid, 1, exe.rsplit("/", 1)[-1], f"{exe} {dst} {dport}",
                      "root", exe)


def test_large_upload_to_odd_port_names_the_destination() -> None:
    events = feed(ExfilDetector(HOME_NET), list(upload(0.0, 20_000_000)))
    kinds = [e.detail["type"] for e in events]
    assert kinds == ["unusual-port", "large-upload"]  # one episode, escalating
    big = events[-1]
    assert big.name == EXFIL and big.severity == Severity.HIGH
    assert big.detail["ip"] == DEST and big.detail["remote_addr"] == DEST
    assert big.destination_port == 4444 and big.source_ip == HOME
    assert big.detail["bytes"] >= 10_000_000
    assert {t.id for t in big.techniques} == {"T1048", "T1571"}
    assert len({e.episode for e in events}) == 1


def test_upload_to_https_is_counted_per_minute() -> None:
    det = ExfilDetector(HOME_NET, upload_bytes_per_min=10_000_000)
    # 6 MB in one minute, twice, five minutes apart: never 10 MB within 60 s.
    quiet = feed(det, upload(0.0, 6_000_000, dport=443, seconds=50)
                 + upload(300.0, 6_000_000, dport=443, sport=41001, seconds=50))
    assert all(e.detail["type"] != "large-upload" for e in quiet)
    loud = feed(det, upload(1000.0, 12_000_000, dport=443, sport=41002, seconds=50))
    assert [e.detail["type"] for e in loud][-1] == "large-upload"
    assert {t.id for t in loud[-1].techniques} == {"T1041"}


def test_small_traffic_and_downloads_do_not_alert() -> None:
    det = ExfilDetector(HOME_NET)
    assert feed(det, upload(0.0, 30_000, dport=443, seg=1000)) == []
    # An outside client downloads 50 MB from our web server: inbound flow, not an upload.
    download = [tcp(0.0, OUTSIDE, HOME, 50000, 8080, SYN), tcp(0.0, HOME, OUTSIDE, 8080, 50000,
                                                                 SYN | ACK)]
    download += [tcp(0.1 + i * 0.01, HOME, OUTSIDE, 8080, 50000, ACK, 65_000) for i in range(800)]
    assert feed(det, download) == []


def test_asymmetric_and_burst_on_common_ports() -> None:
    events = feed(ExfilDetector(HOME_NET), upload(0.0, 3_000_000, dport=443, seconds=30))
    assert [e.detail["type"] for e in events] == ["upload-burst", "asymmetric"]  # escalates
    slow = feed(ExfilDetector(HOME_NET), upload(0.0, 200_000, dport=443, seconds=10, seg=1000))
    assert [e.detail["type"] for e in slow] == ["upload-burst"]
    assert slow[0].severity == Severity.LOW


def test_long_lived_bands() -> None:
    det = ExfilDetector(HOME_NET)
    packets = [tcp(0.0, HOME, DEST, 41000, 443, SYN), tcp(0.0, DEST, HOME, 443, 41000, SYN | ACK)]
    packets += [tcp(600.0 * i, HOME, DEST, 41000, 443, ACK, 10) for i in range(1, 13 * 6)]
    events = feed(det, packets)
    bands = [e.detail["band_hours"] for e in events if e.detail["type"] == "long-lived"]
    assert bands == [1.0, 4.0, 8.0, 12.0]
    assert events[-1].severity == Severity.HIGH


def test_burst_of_new_destinations() -> None:
    det = ExfilDetector(HOME_NET, new_destinations=20)
    packets: list[Packet] = []
    for i in range(40):
        dst = f"203.0.113.{i + 10}"
        packets += upload(i * 0.5, 2000, dst=dst, dport=443, sport=42000 + i, seg=1000)
    events = [e for e in feed(det, packets) if e.detail["type"] == "new-destinations"]
    assert len(events) == 1 and events[0].detail["bytes"] >= 20


def test_process_is_attributed_even_when_the_socket_table_is_late() -> None:
    det = ExfilDetector(HOME_NET)
    packets = upload(0.0, 20_000_000)
    events: list[Event] = []
    for p in packets:
        events += det.observe(p)
    assert events == []  # waiting (attribution grace) for the process
    events += det.observe(conn(1.5))
    assert [e.detail["type"] for e in events] == ["unusual-port", "large-upload"]
    assert all(e.detail["pid"] == 4242 and "ncat" in e.detail["command_line"] for e in events)
    # Known beforehand: attributed at once.
    det2 = ExfilDetector(HOME_NET)
    now = feed(det2, [conn(0.0), *upload(0.1, 20_000_000)], end=1.2)
    assert now and now[-1].detail["process_name"] == "ncat"
    # Never known: released without a process after the grace period.
    det3 = ExfilDetector(HOME_NET)
    late = feed(det3, list(upload(0.0, 20_000_000)), end=10.0)
    assert late and late[-1].detail["pid"] == -1


def test_backup_job_learned_in_warmup_stops_alerting() -> None:
    det = ExfilDetector(HOME_NET, warmup=3 * 3600.0)
    backup = "/usr/bin/restic"
    first: list[Event] = []
    for night in range(3):  # hourly 15 MB uploads inside the warm-up: they alert
        t = night * 3600.0
        first += feed(det, [conn(t, sport=43000 + night, dport=443, pid=77, exe=backup),
                            *upload(t + 1, 15_000_000, dport=443, sport=43000 + night,
                                    seconds=40)])
    assert any(e.detail["type"] == "large-upload" for e in first)
    t = 5 * 3600.0
    after = feed(det, [conn(t, sport=43010, dport=443, pid=78, exe=backup),
                       *upload(t + 1, 15_000_000, dport=443, sport=43010, seconds=40)])
    assert after == []
    # Another process doing the same is not covered by the backup's baseline.
    other = feed(det, [conn(t, sport=43011, dport=443, pid=79, exe="/usr/bin/curl"),
                       *upload(t + 1, 15_000_000, dport=443, sport=43011, seconds=40)])
    assert any(e.detail["type"] == "large-upload" for e in other)


def test_state_is_bounded() -> None:
    det = ExfilDetector(HOME_NET, max_flows=100, max_dests=50)
    for i in range(2000):
        det.observe(tcp(float(i), HOME, f"203.0.{i // 250}.{i % 250}", 1024 + i, 443, ACK, 100))
    assert len(det._flows) <= 100 and len(det._dests) <= 50


def flow_bytes(ts: float, sent: int, sport: int = 41000, dport: int = 4444, got: int = 0,
               dst: str = DEST) -> FlowBytes:
    return FlowBytes(ts, HOME, sport, dst, dport, sent, got, "net:[1]", 99)


def test_kernel_byte_counters_alone_raise_an_attributed_exfil() -> None:
    det = ExfilDetector(HOME_NET)
    items: list[Packet | Connection | FlowBytes] = [conn(0.0)]
    items += [flow_bytes(float(t), 4_000_000) for t in range(1, 6)]  # 20 MB in 5 s
    events = feed(det, items)  # type: ignore[arg-type]
    assert [e.detail["type"] for e in events] == ["unusual-port", "large-upload"]
    assert events[-1].detail["pid"] == 4242 and events[-1].detail["bytes"] >= 10_000_000


def test_kernel_counters_do_not_double_count_a_captured_flow() -> None:
    det = ExfilDetector(HOME_NET)
    events = feed(det, upload(0.0, 6_000_000, dport=443, seconds=10))
    later = [e for e in (det.observe(flow_bytes(11.0, 6_000_000, dport=443)) + det.flush(20.0))]
    assert all(e.detail["type"] != "large-upload" for e in events + later)
    # Loopback flows are never uploads.
    local = FlowBytes(30.0, "127.0.0.1", 41000, "127.0.0.1", 5432, 50_000_000, 0, "net:[1]", 7)
    assert det.observe(local) == []
