"""SSH decoy: OpenSSH's version line and key-exchange offer, then a hang-up.

What a scanner and a real client see is byte-for-byte what Debian 12's OpenSSH sends before
key exchange: the identification string and a KEXINIT listing its algorithms. We record the
client's identification string and its first key-exchange algorithms (a client fingerprint),
then close: no cryptography is done, so no credentials are ever offered to us.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from garrison.sensors.honeypot.session import Session, SessionEnd

IDENT: Final = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6"
BANNER: Final = "OpenSSH 9.2p1 Debian-2+deb12u6"
MSG_KEXINIT: Final = 20
#: Largest client packet we read (bytes); OpenSSH's own limit is 256 KiB, a KEXINIT is < 2 KiB.
MAX_PACKET: Final = 16384

_OFFER: Final = (
    b"sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,"
    b"ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"
    b"diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,"
    b"diffie-hellman-group18-sha512,diffie-hellman-group14-sha256,kex-strict-s-v00@openssh.com",
    b"rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp256,ssh-ed25519",
    b"chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,"
    b"aes128-gcm@openssh.com,aes256-gcm@openssh.com",
    b"umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,"
    b"hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,"
    b"umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1",
    b"none,zlib@openssh.com",
)


def _name_list(value: bytes) -> bytes:
    return struct.pack("!I", len(value)) + value


def kexinit_packet(cookie: bytes) -> bytes:
    """An unencrypted SSH binary packet (RFC 4253 6) carrying OpenSSH 9.2's KEXINIT."""
    kex, hostkey, ciphers, macs, comp = _OFFER
    payload = (
        bytes([MSG_KEXINIT]) + cookie
        + b"".join(_name_list(x) for x in (kex, hostkey, ciphers, ciphers, macs, macs, comp, comp))
        + _name_list(b"") * 2 + b"\x00" + b"\x00\x00\x00\x00"
    )
    pad = 8 - (len(payload) + 5) % 8
    if pad < 4:
        pad += 8
    return struct.pack("!IB", len(payload) + pad + 1, pad) + payload + bytes(pad)


def first_names(payload: bytes, count: int = 2) -> list[bytes]:
    """The first ``count`` name-lists of a KEXINIT payload (kex, host key), or fewer if it is
    malformed."""
    out: list[bytes] = []
    pos = 17  # message byte + 16-byte cookie
    while len(out) < count and pos + 4 <= len(payload):
        (n,) = struct.unpack_from("!I", payload, pos)
        if pos + 4 + n > len(payload):
            break
        out.append(payload[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


async def serve(s: Session) -> None:
    """Identification exchange (RFC 4253 4.2), our KEXINIT, the client's KEXINIT, hang up."""
    await s.send(IDENT + b"\r\n")
    for _ in range(8):  # a server may precede its version with other lines; so may a client
        line = await s.recv_line(255)
        if line.startswith(b"SSH-"):
            s.note("client_version", line)
            break
    else:
        raise SessionEnd("done")
    await s.send(kexinit_packet(os.urandom(16)))
    header = await s.recv_exact(5)
    length, _pad = struct.unpack("!IB", header)
    if not 5 <= length <= MAX_PACKET:
        raise SessionEnd("done")
    payload = (await s.recv_exact(length - 1))[: length - 1 - _pad]
    if payload[:1] == bytes([MSG_KEXINIT]):
        names = first_names(payload)
        if names:
            s.note("client_kex", names[0][:200])
        if len(names) > 1:
            s.note("client_hostkey_algorithms", names[1][:200])
