"""The DNS wire parser: well-formed messages, hostile ones, and a little fuzzing."""

from __future__ import annotations

import random
import struct

import pytest

from garrison.sensors.dns import (
    NULL,
    TXT,
    DnsParseError,
    parse_message,
    parse_tcp_segment,
    type_name,
    visible_labels,
)
from tests.analytics.synth import dns_name, dns_query, dns_response


def test_query_and_response_parse() -> None:
    q = parse_message(dns_query("WwW.Example.COM", TXT, ident=7))
    assert q.id == 7 and not q.is_response
    assert q.questions[0].name == "www.example.com"
    assert q.questions[0].raw_labels == ("WwW", "Example", "COM")
    assert q.questions[0].qtype == TXT
    r = parse_message(dns_response("example.com"))
    assert r.is_response
    assert r.answers[0].name == "example.com"  # via the compression pointer
    assert r.answers[0].rdlength == 4


def test_binary_labels_are_kept_byte_for_byte() -> None:
    label = bytes(range(0x80, 0xBF))  # 63 bytes, the longest label
    q = parse_message(dns_query(label + b".t.tun.test", NULL))
    first = q.questions[0].labels[0]
    assert first.encode("latin-1") == label  # Latin-1 is a one-to-one byte map
    assert type_name(NULL) == "NULL" and type_name(999) == "TYPE999"


def test_tcp_length_prefix() -> None:
    msg = dns_query("a.example.org")
    assert parse_tcp_segment(struct.pack("!H", len(msg)) + msg).questions[0].name == "a.example.org"
    with pytest.raises(DnsParseError) as err:
        parse_tcp_segment(struct.pack("!H", len(msg) + 10) + msg)
    assert err.value.reason == "truncated"


def _with_question_name(raw_name: bytes) -> bytes:
    return struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + raw_name + b"\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xc0\x0c", "bad-pointer"),  # points at itself: a loop
        (b"\xc0\x20", "bad-pointer"),  # points forward
        (b"\x03abc\xc0\x0c", "bad-pointer"),  # back to its own start: a loop
        (b"\x80abc\x00", "bad-label"),  # reserved label type
        (b"\x3fabc", "truncated"),  # label longer than the buffer
        (b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00", "long-name"),
    ],
)
def test_hostile_names_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(DnsParseError) as err:
        parse_message(_with_question_name(raw))
    assert err.value.reason == reason


def test_truncated_records_and_headers() -> None:
    with pytest.raises(DnsParseError, match="header"):
        parse_message(b"\x00\x01\x00")
    full = dns_response("example.com")
    for cut in range(12, len(full)):
        with pytest.raises(DnsParseError):
            parse_message(full[:cut])
    bomb = struct.pack("!HHHHHH", 1, 0, 60000, 60000, 0, 0)
    with pytest.raises(DnsParseError) as err:
        parse_message(bomb)
    assert err.value.reason == "too-many-records"


def test_pointer_chain_is_bounded() -> None:
    # Answer i's owner name is a pointer to answer i-1's name: every pointer points backwards
    # (legal on its own), but the chain gets longer than MAX_POINTERS jumps.
    count = 24
    msg = struct.pack("!HHHHHH", 1, 0x8180, 1, count, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
    prev = 12
    for _ in range(count):
        here = len(msg)
        msg += struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 0, 0)
        prev = here
    with pytest.raises(DnsParseError) as err:
        parse_message(msg)
    assert err.value.reason == "bad-pointer"
    assert len(parse_message(msg[: 12 + 7 + 12 * 10].replace(
        struct.pack("!HHHHHH", 1, 0x8180, 1, count, 0, 0),
        struct.pack("!HHHHHH", 1, 0x8180, 1, 10, 0, 0), 1)).answers) == 10


def test_fuzzed_messages_only_raise_parse_errors() -> None:
    rng = random.Random(20261122)
    seeds = [
        dns_query("mail.example.com"),
        dns_response("cdn.example.net", TXT, b"\x05hello"),
        dns_query(b"\xff\x00\x10binary.t.tun.test", NULL),
    ]
    parsed = refused = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.75 and data:
                del data[rng.randrange(len(data)):]
            else:
                data[rng.randrange(len(data) + 1):0] = bytes([0xC0, rng.randrange(256)])
        try:
            parse_message(bytes(data))
            parsed += 1
        except DnsParseError:
            refused += 1
    assert parsed > 0 and refused > 0


def test_name_helper_round_trip() -> None:
    assert dns_name("") == b"\x00"


def test_visible_labels_of_a_query_cut_by_the_snap_length() -> None:
    full = dns_query("aaaa.bbbbbbbb.cccc.t.tun.test", NULL)
    seen = visible_labels(full[:12 + 5 + 9 + 2])  # header, 'aaaa', 'bbbbbbbb', half of 'cccc'
    assert seen is not None
    q, whole = seen
    assert q.labels == ("aaaa", "bbbbbbbb") and not whole and q.qtype == 0
    q2, whole2 = visible_labels(full[:-2])  # type: ignore[misc]  # only the class cut
    assert whole2 and q2.name == "aaaa.bbbbbbbb.cccc.t.tun.test"
    assert visible_labels(dns_response("x.example")[:20]) is None  # a response
    assert visible_labels(full[:13]) is None
