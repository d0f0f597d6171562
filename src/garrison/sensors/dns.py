"""DNS wire-format parser (RFC 1035) for messages seen in packets.

Pure and defensive: every length is checked against the buffer, compression pointers must point
strictly backwards (so loops are impossible) and are limited in number, labels are at most 63
bytes and names at most 255 bytes. Anything else raises :class:`DnsParseError` with the reason,
which callers count and drop.

Label bytes are kept exactly as sent (tunnels put raw 8-bit data in labels) and decoded as
Latin-1, a one-to-one map from bytes to characters, so entropy and length measured on the string
are the same as on the wire. ASCII letters are lower-cased (DNS names are case-insensitive);
:attr:`Question.raw_labels` keeps the original case, which base64 tunnels rely on.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

# Record types (RFC 1035, 3596, 6891 ...).
A: Final = 1
NS: Final = 2
CNAME: Final = 5
SOA: Final = 6
NULL: Final = 10
PTR: Final = 12
MX: Final = 15
TXT: Final = 16
AAAA: Final = 28
SRV: Final = 33
OPT: Final = 41
ANY: Final = 255

TYPE_NAMES: Final = {
    A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", NULL: "NULL", PTR: "PTR", MX: "MX",
    TXT: "TXT", AAAA: "AAAA", SRV: "SRV", OPT: "OPT", 65: "HTTPS", 64: "SVCB", ANY: "ANY",
}

MAX_NAME: Final = 255  # bytes on the wire, RFC 1035 2.3.4
MAX_LABEL: Final = 63
MAX_POINTERS: Final = 16  # compression jumps followed for one name
MAX_RECORDS: Final = 64  # questions + answers parsed per message; more is abuse

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_Q = struct.Struct("!HH")


class DnsParseError(ValueError):
    """The bytes are not a well-formed DNS message; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Question(NamedTuple):
    """One question: ``labels`` lower-cased (Latin-1 decoded), ``raw_labels`` as sent."""

    labels: tuple[str, ...]
    raw_labels: tuple[str, ...]
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        """The name with dots, lower-cased, no trailing dot ('' for the root)."""
        return ".".join(self.labels)


class Record(NamedTuple):
    """One answer record: owner name, type, TTL (seconds) and RDATA length (bytes)."""

    name: str
    rtype: int
    ttl: int
    rdlength: int


class DnsMessage(NamedTuple):
    """A parsed DNS message (header, questions, answers; authority/additional skipped)."""

    id: int
    is_response: bool
    opcode: int
    rcode: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]


def _read_name(buf: bytes, off: int) -> tuple[tuple[bytes, ...], int]:
    """Read a possibly compressed name at ``off``; return its labels and the offset after it."""
    labels: list[bytes] = []
    size = 1  # the root label's length byte
    end = -1  # offset after the name in the original position
    jumps = 0
    pos = off
    n = len(buf)
    while True:
        if pos >= n:
            raise DnsParseError("truncated", f"name runs past end at {pos}")
        length = buf[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise DnsParseError("truncated", "compression pointer cut off")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if end < 0:
                end = pos + 2
            # Only backwards pointers: a forward or self pointer could loop.
            if target >= pos:
                raise DnsParseError("bad-pointer", f"pointer to {target} from {pos}")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DnsParseError("bad-pointer", "too many compression pointers")
            pos = target
            continue
        if length & 0xC0:
            raise DnsParseError("bad-label", f"reserved label type {length:#x} at {pos}")
        if length == 0:
            return tuple(labels), (end if end >= 0 else pos + 1)
        if pos + 1 + length > n:
            raise DnsParseError("truncated", f"label runs past end at {pos}")
        size += length + 1
        if size > MAX_NAME:
            raise DnsParseError("long-name", f"name longer than {MAX_NAME} bytes")
        labels.append(buf[pos + 1 : pos + 1 + length])
        pos += 1 + length


def parse_message(buf: bytes) -> DnsMessage:
    """Parse one DNS message (UDP payload, or a TCP message without its length prefix)."""
    if len(buf) < _HEADER.size:
        raise DnsParseError("truncated", f"{len(buf)} bytes, header needs 12")
    ident, flags, qd, an, _ns, _ar = _HEADER.unpack_from(buf)
    if qd + an > MAX_RECORDS:
        raise DnsParseError("too-many-records", f"{qd} questions, {an} answers")
    off = _HEADER.size
    questions: list[Question] = []
    for _ in range(qd):
        raw, off = _read_name(buf, off)
        if off + _Q.size > len(buf):
            raise DnsParseError("truncated", "question type/class cut off")
        qtype, qclass = _Q.unpack_from(buf, off)
        off += _Q.size
        raw_labels = tuple(label.decode("latin-1") for label in raw)
        labels = tuple(label.lower().decode("latin-1") for label in raw)
        questions.append(Question(labels, raw_labels, qtype, qclass))
    answers: list[Record] = []
    for _ in range(an):
        raw, off = _read_name(buf, off)
        if off + _RR.size > len(buf):
            raise DnsParseError("truncated", "record header cut off")
        rtype, _rclass, ttl, rdlength = _RR.unpack_from(buf, off)
        off += _RR.size + rdlength
        if off > len(buf):
            raise DnsParseError("truncated", "record data cut off")
        name = ".".join(label.lower().decode("latin-1") for label in raw)
        answers.append(Record(name, rtype, ttl, rdlength))
    return DnsMessage(
        id=ident,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        questions=tuple(questions),
        answers=tuple(answers),
    )


def parse_tcp_segment(payload: bytes) -> DnsMessage:
    """Parse the first DNS message of a TCP segment (2-byte length prefix, RFC 1035 4.2.2).

    Messages split across segments are not reassembled: the caller counts them as truncated.
    """
    if len(payload) < 2:
        raise DnsParseError("truncated", "TCP length prefix cut off")
    (length,) = struct.unpack_from("!H", payload)
    if length + 2 > len(payload):
        raise DnsParseError("truncated", f"TCP message of {length} bytes not in one segment")
    return parse_message(payload[2 : 2 + length])


def visible_labels(buf: bytes) -> tuple[Question, bool] | None:
    """What a query cut short by the capture's snap length still shows.

    Returns the first question with the complete labels before the cut (``qtype`` 0: unknown)
    and whether the whole name was visible, or None when the bytes are not a query or show no
    complete label. Used for long tunnel queries, whose names outgrow a 256-byte snap length.
    """
    if len(buf) < _HEADER.size + 2:
        return None
    flags = (buf[2] << 8) | buf[3]
    if flags & 0x8000 or ((buf[4] << 8) | buf[5]) < 1:
        return None
    raw: list[bytes] = []
    pos, n, size = _HEADER.size, len(buf), 1
    whole = False
    while pos < n:
        length = buf[pos]
        if length == 0:
            whole = True
            break
        if length & 0xC0 or pos + 1 + length > n:
            break
        size += length + 1
        if size > MAX_NAME:
            return None
        raw.append(buf[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if not raw:
        return None
    labels = tuple(label.lower().decode("latin-1") for label in raw)
    return Question(labels, tuple(label.decode("latin-1") for label in raw), 0, 1), whole


def type_name(rtype: int) -> str:
    """Mnemonic of a record type ('TYPE99' for unknown ones, as in RFC 3597)."""
    return TYPE_NAMES.get(rtype, f"TYPE{rtype}")
