"""The DNS tunnel detector: each feature, tunnels it must catch, names it must leave alone."""

from __future__ import annotations

import base64
import random

import pytest

from garrison.detect.dns_tunnel import (
    DnsTunnelDetector,
    normalised_entropy,
    query_features,
    split_name,
)
from garrison.events import DNS_TUNNEL, Event
from garrison.sensors.dns import AAAA, CNAME, NULL, TXT, A
from tests.analytics.synth import DATA, HOME, HOME_NET, OUTSIDE, dns_query, dns_response, udp

RESOLVER = "203.0.113.53"
HEX = "0123456789abcdef"


def feats(name: str, qtype: int = A) -> set[str]:
    labels = tuple(name.lower().split("."))
    sub, _reg = split_name(labels)
    return set(query_features(sub, tuple(name.split("."))[: len(sub)], qtype).reasons)


def rand_label(rng: random.Random, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789"
               ) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def ask(det: DnsTunnelDetector, ts: float, name: str | bytes, qtype: int = A,
        client: str = HOME, server: str = RESOLVER) -> list[Event]:
    return det.observe(udp(ts, client, server, 40000, 53, dns_query(name, qtype)))


# -- features -------------------------------------------------------------------------------------
def test_normalised_entropy_is_bounded_by_length() -> None:
    assert normalised_entropy("aaaaaaaa") == 0.0
    assert normalised_entropy("abcdefgh") == pytest.approx(1.0)
    assert 0.0 < normalised_entropy("connectivity") < 0.9
    assert normalised_entropy("x") == 0.0


def test_registered_domain_uses_the_public_suffix_list() -> None:
    assert split_name(("www", "bbc", "co", "uk"))[1] == ("bbc", "co", "uk")
    assert split_name(("a", "b", "s3", "us-east-1", "amazonaws", "com"))[1] == (
        "b", "s3", "us-east-1", "amazonaws", "com")
    assert split_name(("x", "t", "tun", "test"))[1] == ("tun", "test")


def test_each_feature() -> None:
    rng = random.Random(1)
    assert "hex-labels" in feats(rand_label(rng, 32, "0123456789abcdef") + ".evil.example")
    assert "base32-labels" in feats(
        base64.b32encode(rng.randbytes(20)).decode().rstrip("=").lower() + ".evil.example")
    assert "base64-labels" in feats(
        base64.b64encode(rng.randbytes(24)).decode().replace("/", "-").replace("+", "_")
        .rstrip("=") + ".evil.example")
    assert "binary-labels" in feats("ab\xe9\xff\x01cd.evil.example")
    assert "high-entropy-labels" in feats("q7x2kd9w4mzp.evil.example")
    assert "long-names" in feats("a" * 60 + ".evil.example")
    assert "deep-names" in feats("a.b.c.d.evil.example")
    assert "record-type-TXT" in feats("x.evil.example", TXT)
    assert "record-type-NULL" in feats("x.evil.example", NULL)
    assert "record-type-CNAME" in feats("x.evil.example", CNAME)
    # Protocol words are not data.
    assert feats("selector1._domainkey.example.com", TXT) == {"record-type-TXT"}
    assert feats("_dmarc.example.com", TXT) == {"record-type-TXT"}
    assert feats("www.example.com") == set()
    assert feats("connectivity-check.ubuntu.com") == set()


# -- tunnels --------------------------------------------------------------------------------------
def test_hex_txt_tunnel_is_one_event_per_episode_with_actor() -> None:
    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(2)
    events: list[Event] = []
    for i in range(300):
        hexa, hexb = rand_label(rng, 40, HEX), rand_label(rng, 20, HEX)
        name = f"{hexa}.{hexb}.c2.evil.example"
        events += ask(det, 1000.0 + i, name, TXT)
    assert len(events) == 1
    ev = events[0]
    assert ev.name == DNS_TUNNEL
    d = ev.detail
    assert d["domain"] == "c2.evil.example" and d["registered_domain"] == "evil.example"
    assert d["client"] == HOME and ev.source_ip == HOME and ev.destination_ip == RESOLVER
    # The actor is the client (here ours, the compromised host), never the resolver it asks.
    assert d["ip"] == HOME and d["server"] == RESOLVER
    assert "hex-labels" in d["reasons"] and "record-type-TXT" in d["reasons"]
    assert d["query_count"] >= 10 and len(d["sample"]) >= 1 and 0.7 <= d["score"] <= 1.0
    assert ev.techniques[0].id == "T1071.004"
    assert ev.to_ecs()["garrison"]["domain"] == "c2.evil.example"
    # A new episode after the idle timeout alerts again.
    later = [e for i in range(60) for e in ask(
        det, 5000.0 + i, f"{rand_label(rng, 40, '0123456789abcdef')}.c2.evil.example", TXT)]
    assert len(later) == 1 and later[0].episode != ev.episode


def test_remote_client_is_the_actor() -> None:
    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(3)
    events = [e for i in range(100) for e in ask(
        det, float(i), rand_label(rng, 50) + ".t.tun.test", NULL, client=OUTSIDE, server=HOME)]
    assert len(events) == 1 and events[0].detail["ip"] == OUTSIDE


def test_slow_exfiltration_fills_the_information_budget() -> None:
    """Plain A queries with base32 data, one every 2 minutes for hours: with the unique-name
    count switched off and a strict threshold, the byte budget alone still gets there."""
    det = DnsTunnelDetector(HOME_NET, unique_threshold=1_000_000, threshold=0.9)
    rng = random.Random(4)
    events: list[Event] = []
    for i in range(200):
        chunk = base64.b32encode(rng.randbytes(30)).decode().rstrip("=").lower()
        events += ask(det, 120.0 * i, f"{chunk}.x.slow.example")
        if events:
            break
    assert events, "slow base32 exfiltration was not flagged"
    assert "information-budget" in events[0].detail["reasons"]
    assert events[0].detail["bytes"] >= 0.9 * 4096 and events[0].detail["duration"] > 3600
    assert {t.id for t in events[0].techniques} >= {"T1071.004", "T1048.003"}


def test_allowlist_and_reverse_lookups() -> None:
    det = DnsTunnelDetector(HOME_NET, allowlist=["evil.example"])
    rng = random.Random(5)
    events: list[Event] = []
    for i in range(200):
        events += ask(det, float(i), rand_label(rng, 50, "0123456789abcdef") + ".evil.example", TXT)
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        events += ask(det, float(i), f"{ip}.in-addr.arpa", 12)
    assert events == []
    assert det.stats["allowlisted"] == 400


def test_malformed_and_truncated_packets_are_counted_and_dropped() -> None:
    det = DnsTunnelDetector(HOME_NET)
    assert det.observe(udp(1.0, HOME, RESOLVER, 4000, 53, b"\x00\x01garbage")) == []
    full = dns_query("a" * 60 + ".evil.example")
    assert det.observe(udp(2.0, HOME, RESOLVER, 4000, 53, full[:40], payload_len=len(full))) == []
    assert det.observe(udp(3.0, RESOLVER, HOME, 53, 4000, dns_response("ok.example"))) == []
    assert det.stats["malformed.truncated"] == 1
    assert det.stats["truncated-capture"] == 1
    assert det.stats["responses"] == 1


# -- benign ---------------------------------------------------------------------------------------
def benign_names() -> list[str]:
    lines = (DATA / "benign_hostnames.txt").read_text().splitlines()
    return [x for x in lines if x and not x.startswith("#")]


def test_five_hundred_real_hostnames_do_not_alert() -> None:
    names = benign_names()
    assert len(names) >= 500
    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(6)
    events: list[Event] = []
    ts = 0.0
    for _round in range(3):  # asked again and again, as a busy host does
        for name in rng.sample(names, len(names)):
            ts += rng.uniform(0.05, 2.0)
            events += ask(det, ts, name, rng.choice([A, AAAA, 65]))
    assert events == []
    assert det.stats["queries"] == 3 * len(names)


def test_cdn_hashy_names_in_volume_do_not_alert() -> None:
    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(7)
    events: list[Event] = []
    for i in range(150):
        events += ask(det, float(i), f"d{rand_label(rng, 13)}.cloudfront.net")
        events += ask(det, float(i), f"rr{rng.randrange(1, 9)}---sn-{rand_label(rng, 8)}-"
                      f"{rand_label(rng, 4)}.googlevideo.com")
        events += ask(det, float(i), f"e{rng.randrange(1000, 99999)}.dsc{rand_label(rng, 2)}"
                      ".akamaiedge.net")
    assert events == []


def test_learned_busy_domain_stops_alerting_after_warmup() -> None:
    """A client that always asks ~30 TXT names of one domain per episode: learned in warm-up,
    a bigger day later no longer alerts; the same day on a fresh detector does."""
    rng = random.Random(8)

    def episode(det: DnsTunnelDetector, start: float, n: int) -> list[Event]:
        return [e for i in range(n) for e in ask(
            det, start + i, f"{rand_label(rng, 16)}.keys.busy.example", TXT)]

    learned = DnsTunnelDetector(HOME_NET, warmup=3600.0)
    for k in range(3):  # three quiet episodes inside the warm-up
        assert episode(learned, 1000.0 * k, 30) == []
    assert episode(learned, 10_000.0, 60) == []
    fresh = DnsTunnelDetector(HOME_NET, warmup=3600.0)
    assert len(episode(fresh, 10_000.0, 60)) == 1


def test_state_is_bounded() -> None:
    det = DnsTunnelDetector(HOME_NET, max_flows=100, max_clients=50)
    for i in range(1000):
        ask(det, float(i), f"www.site{i}.example", client=f"198.51.100.{i % 200 + 2}")
    assert len(det._flows) <= 100 and len(det._baselines) <= 50
    capped = DnsTunnelDetector(HOME_NET, max_names=500)
    for i in range(2000):
        ask(capped, float(i), f"n{i}.many.example", client=f"198.51.100.{i % 7 + 2}")
    assert capped._tracked <= 500
    assert capped._tracked == sum(len(f.names) for f in capped._flows.values())


def test_dns_over_tcp_is_analysed() -> None:
    import struct

    from garrison.observations import ACK, TCP, Packet

    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(9)
    events: list[Event] = []
    for i in range(100):
        msg = dns_query(rand_label(rng, 60, HEX) + ".tcp.evil.example", TXT)
        payload = struct.pack("!H", len(msg)) + msg
        events += det.observe(Packet(float(i), HOME, RESOLVER, TCP, 50000 + i, 53, ACK,
                                     len(payload) + 52, len(payload), 1000, payload, 4))
    assert len(events) == 1 and events[0].transport == "tcp"


def test_reputation_lookups_with_hashed_labels_are_allowlisted() -> None:
    det = DnsTunnelDetector(HOME_NET)
    rng = random.Random(10)
    events: list[Event] = []
    for i in range(300):
        digest = rand_label(rng, 52, "abcdefghijklmnopqrstuvwxyz234567")
        events += ask(det, float(i), f"{digest}._email.hbl.dq.spamhaus.net", TXT)
    assert events == []


def test_queries_cut_by_the_snap_length_count_for_the_clients_last_domain() -> None:
    """A tunnel's long queries outgrow a 256-byte capture: their domain is lost, but they
    follow the client's short queries to the same zone."""
    rng = random.Random(11)
    det = DnsTunnelDetector(HOME_NET)
    assert ask(det, 0.0, "hello.t.tun.test", NULL) == []
    events: list[Event] = []
    for i in range(1, 60):
        labels = ".".join(rand_label(rng, 63) for _ in range(3))
        full = dns_query(f"{labels}.t.tun.test", NULL)
        cut = full[:150]  # what a short snap length leaves of it
        events += det.observe(udp(float(i), HOME, RESOLVER, 40000, 53, cut, len(full)))
    assert len(events) == 1 and events[0].detail["domain"] == "t.tun.test"
    assert det.stats["truncated-attributed"] >= 10
    # With no earlier query from that client, a cut query is only counted.
    fresh = DnsTunnelDetector(HOME_NET)
    full = dns_query("a" * 63 + "." + "b" * 63 + ".x.example", TXT)
    assert fresh.observe(udp(1.0, HOME, RESOLVER, 40000, 53, full[:100], len(full))) == []
    assert fresh.stats["truncated-unattributed"] == 1
