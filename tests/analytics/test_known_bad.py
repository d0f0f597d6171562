"""Known-bad destinations: suspicious ports and blocklisted addresses."""

from __future__ import annotations

from garrison.detect.known_bad import KnownBadDetector
from garrison.events import SUSPICIOUS_CONNECTION
from garrison.observations import ACK, RST, SYN
from garrison.sensors.connections import Connection
from tests.analytics.synth import HOME, HOME_NET, OUTSIDE, tcp, udp


def test_outbound_connection_to_suspicious_port_once_per_cooldown() -> None:
    det = KnownBadDetector(HOME_NET)
    ev = det.observe(tcp(1.0, HOME, OUTSIDE, 40000, 4444, SYN))
    assert len(ev) == 1 and ev[0].name == SUSPICIOUS_CONNECTION
    assert ev[0].detail["ip"] == OUTSIDE and ev[0].detail["reason"] == "suspicious-port"
    assert ev[0].destination_port == 4444 and ev[0].techniques[0].id == "T1571"
    assert det.observe(tcp(2.0, HOME, OUTSIDE, 40001, 4444, SYN)) == []
    assert len(det.observe(tcp(4000.0, HOME, OUTSIDE, 40002, 4444, SYN))) == 1
    assert len(det.observe(udp(5.0, HOME, OUTSIDE, 5000, 6667, b"NICK x"))) == 1
    assert det.observe(tcp(6.0, HOME, OUTSIDE, 40003, 443, SYN)) == []


def test_inbound_probes_are_not_alerts_but_an_accepting_bind_shell_is() -> None:
    det = KnownBadDetector(HOME_NET)
    assert det.observe(tcp(1.0, OUTSIDE, HOME, 50000, 31337, SYN)) == []
    assert det.observe(tcp(1.0, HOME, OUTSIDE, 31337, 50000, RST | ACK)) == []
    ev = det.observe(tcp(2.0, HOME, OUTSIDE, 31337, 50001, SYN | ACK))
    assert len(ev) == 1 and ev[0].detail["reason"] == "suspicious-listening-port"
    assert ev[0].source_ip == OUTSIDE and ev[0].destination_ip == HOME


def test_blocklist_as_set_or_callable() -> None:
    for blocklist in ({OUTSIDE}, lambda ip: ip == OUTSIDE):
        det = KnownBadDetector(HOME_NET, blocklist=blocklist, ports=())
        ev = det.observe(tcp(1.0, OUTSIDE, HOME, 50000, 22, SYN))
        assert len(ev) == 1 and ev[0].detail["reason"] == "blocklisted-address"
        assert ev[0].detail["ip"] == OUTSIDE
        assert det.observe(tcp(1.0, "203.0.113.9", HOME, 50000, 22, SYN)) == []


def test_state_is_bounded() -> None:
    det = KnownBadDetector(HOME_NET, max_keys=10)
    for i in range(100):
        det.observe(tcp(float(i), HOME, f"203.0.113.{i}", 40000, 4444, SYN))
    assert len(det._last) <= 10


def test_blocklisted_inbound_packet_keeps_its_own_direction() -> None:
    det = KnownBadDetector(HOME_NET, blocklist={OUTSIDE}, ports=())
    ev = det.observe(tcp(1.0, OUTSIDE, HOME, 50000, 22, SYN))
    assert (ev[0].source_ip, ev[0].source_port) == (OUTSIDE, 50000)
    assert (ev[0].destination_ip, ev[0].destination_port) == (HOME, 22)


def test_socket_table_flows_are_checked_and_name_the_process() -> None:
    det = KnownBadDetector(HOME_NET)
    out = Connection(1.0, "tcp", HOME, 41000, OUTSIDE, 6667, "ESTABLISHED", "outbound",
                     "net:[1]", 5, 0, 321, 1, "bot", "./bot irc", "nobody", "/tmp/bot")
    ev = det.observe(out)
    assert len(ev) == 1 and ev[0].detail["pid"] == 321 and ev[0].destination_port == 6667
    # The packet path does not report the same connection again.
    assert det.observe(tcp(1.1, HOME, OUTSIDE, 41000, 6667, SYN)) == []
    shell = out._replace(local_port=31337, remote_port=50000, direction="inbound")
    ev = det.observe(shell)
    assert ev[0].detail["reason"] == "suspicious-listening-port"
    assert ev[0].source_ip == OUTSIDE and ev[0].destination_port == 31337


def test_loopback_flows_from_the_socket_table_are_not_destinations() -> None:
    det = KnownBadDetector(HOME_NET)
    local = Connection(1.0, "tcp", "127.0.0.1", 41000, "127.0.0.1", 5555, "ESTABLISHED",
                       "outbound", "net:[1]", 5, 0, 321, 1, "adb", "adb devices", "me", "/adb")
    assert det.observe(local) == []
    assert det.observe(local._replace(local_addr="::1", remote_addr="::1")) == []
