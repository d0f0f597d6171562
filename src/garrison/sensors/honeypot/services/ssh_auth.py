"""SSH decoy with a real SSH library: key exchange done, every login attempt recorded, refused.

Used when :mod:`asyncssh` is installed (the ``honeypot`` extra). The server announces itself
as Debian's OpenSSH and offers only algorithms that OpenSSH 9.2 offers. Authentication always
fails (passwords and public keys are recorded, never accepted), so no channel, shell or
command can ever be opened: nothing a visitor sends reaches anything but the event. After
``MAX_ATTEMPTS`` failures the connection is closed, as ``MaxAuthTries`` does.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Sequence
from typing import Final

import asyncssh

from garrison.sensors.honeypot.services import ssh
from garrison.sensors.honeypot.session import Session, SessionEnd

MAX_ATTEMPTS: Final = 6

# asyncssh logs every connection and user name at INFO: visitor-chosen text in our log lines,
# once per knock. What matters goes into the event instead.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

_KEX: Final = (
    "curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384", "ecdh-sha2-nistp521", "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
_CIPHERS: Final = (
    "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr",
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
)
_MACS: Final = (
    "umac-64-etm@openssh.com", "umac-128-etm@openssh.com", "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com", "hmac-sha1-etm@openssh.com", "umac-64@openssh.com",
    "umac-128@openssh.com", "hmac-sha2-256", "hmac-sha2-512", "hmac-sha1",
)


def _supported(wanted: Sequence[str], have: Sequence[bytes]) -> list[str]:
    names = {h.decode() for h in have}
    return [w for w in wanted if w in names]


@functools.cache
def _algorithms() -> dict[str, list[str]]:
    from asyncssh.encryption import get_encryption_algs
    from asyncssh.kex import get_kex_algs
    from asyncssh.mac import get_mac_algs

    return {
        "kex_algs": _supported(_KEX, get_kex_algs()),
        "encryption_algs": _supported(_CIPHERS, get_encryption_algs()),
        "mac_algs": _supported(_MACS, get_mac_algs()),
        "compression_algs": ["none", "zlib@openssh.com"],
    }


@functools.cache
def host_keys() -> tuple[asyncssh.SSHKey, ...]:
    """This process's host keys (Ed25519 and ECDSA P-256), made once, kept only in memory."""
    return (
        asyncssh.generate_private_key("ssh-ed25519"),
        asyncssh.generate_private_key("ecdsa-sha2-nistp256"),
    )


class _Refuser(asyncssh.SSHServer):
    """Records each attempt on the session; accepts none."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._conn: asyncssh.SSHServerConnection | None = None
        self._attempts = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        if self._conn is not None:  # known once the version exchange is done
            version = self._conn.get_extra_info("client_version")
            if version:
                self._s.note("client_version", str(version))
        self._s.note("username", username)
        return True  # every user "exists" and needs authentication

    def kbdint_auth_supported(self) -> bool:
        return False  # Debian's sshd_config: KbdInteractiveAuthentication no

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        self._s.credential(username, password)
        self._failed()
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        offered = self._s.notes.get("public_keys", [])
        if isinstance(offered, list) and len(offered) < 4:
            fingerprint = f"{key.get_algorithm()} {key.get_fingerprint()}"
            self._s.note("public_keys", [*offered, fingerprint])
        self._s.credential(username, None)
        self._failed()
        return False

    def _failed(self) -> None:
        self._attempts += 1
        if self._attempts >= MAX_ATTEMPTS and self._conn is not None:
            self._conn.close()


async def serve(s: Session) -> None:
    """Hand the connection to asyncssh and wait (under the session's deadline) for it to end."""
    raw = s.take_socket()
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    conn: asyncssh.SSHServerConnection | None = None
    try:
        conn = await asyncssh.run_server(
            sock,
            server_factory=functools.partial(_Refuser, s),
            server_host_keys=list(host_keys()),
            server_version=ssh.IDENT.decode().removeprefix("SSH-2.0-"),
            login_timeout=s.idle_timeout * 3,
            keepalive_interval=0,
            rdns_lookup=False,
            gss_host=None,  # no GSS key exchange or authentication
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            **_algorithms(),
        )
        await conn.wait_closed()
    except (asyncssh.Error, OSError):
        raise SessionEnd("done") from None
    finally:
        if conn is not None:
            conn.abort()
        else:
            sock.close()
