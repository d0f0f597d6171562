"""Choosing ``auto`` ports: commonly probed, free now, and not wanted by anything installed.

A port is wanted by a real service when something listens on it (``/proc/net/tcp`` and
``tcp6``, state LISTEN, in this network namespace), when we cannot bind it, or when the daemon
that normally serves it is installed (it may start at any moment: ``redis-server`` on 6379).
``auto`` never takes a wanted port, and gives a port back when a later re-check finds it wanted.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

#: Daemons whose presence means a port is wanted even while nothing listens on it.
DAEMONS: Final[Mapping[int, tuple[str, ...]]] = {
    21: ("vsftpd", "proftpd", "pure-ftpd", "in.ftpd"),
    23: ("in.telnetd", "telnetd", "utelnetd"),
    2222: ("sshd", "dropbear"),
    2323: ("in.telnetd", "telnetd"),
    3306: ("mysqld", "mariadbd"),
    3389: ("xrdp",),
    5432: ("postgres", "/usr/lib/postgresql/*/bin/postgres"),
    5900: ("Xvnc", "x11vnc", "vncserver", "Xtigervnc"),
    6379: ("redis-server", "keydb-server"),
    8080: ("tomcat", "jenkins"),
    8888: ("jupyter",),
    9200: ("elasticsearch", "/usr/share/elasticsearch/bin/elasticsearch", "opensearch"),
}
_SBIN: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LISTEN: Final = "0A"


def listeners(proc_net: str | Path = "/proc/net") -> dict[int, set[int]]:
    """Port -> socket inodes of TCP sockets in state LISTEN (IPv4 and IPv6), this namespace."""
    found: dict[int, set[int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (Path(proc_net) / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == _LISTEN:
                port = int(parts[1].rsplit(":", 1)[1], 16)
                found.setdefault(port, set()).add(int(parts[9]))
    return found


def listening_ports(proc_net: str | Path = "/proc/net") -> set[int]:
    """TCP ports in state LISTEN on any address (IPv4 and IPv6) in this namespace."""
    return set(listeners(proc_net))


def can_bind(port: int, addresses: Iterable[str] = ("0.0.0.0", "::")) -> bool:
    """True when ``port`` can be bound on every address (a real bind, closed at once).
    An address family this host lacks (no IPv6) does not count against the port."""
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                continue
            return False
        finally:
            sock.close()
    return True


def installed(port: int) -> bool:
    """True when a daemon that normally serves ``port`` is installed on this host."""
    for name in DAEMONS.get(port, ()):
        if name.startswith("/"):
            if any(os.access(p, os.X_OK) for p in glob.glob(name)):
                return True
        elif shutil.which(name, path=_SBIN) is not None:
            return True
    return False


def choose_auto_ports(
    candidates: Iterable[int],
    exclude: Iterable[int],
    *,
    listening: set[int],
    bindable: Callable[[int], bool],
    wanted: Callable[[int], bool] = installed,
) -> list[int]:
    """The candidates not excluded, not listening, bindable and not wanted by a daemon."""
    skip = set(exclude) | listening
    return [p for p in candidates if p not in skip and not wanted(p) and bindable(p)]


def foreign_listeners(ours: Mapping[int, set[int]], proc_net: str | Path = "/proc/net") -> set[int]:
    """Ports where a listening socket that is not one of ``ours`` (port -> inodes) exists."""
    return {
        port for port, inodes in listeners(proc_net).items()
        if port in ours and inodes - ours[port]
    }
