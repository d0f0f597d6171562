"""Connection sensor: the kernel's socket tables, joined to the processes that own the sockets.

Reads ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}`` once per network namespace (one process of each
namespace stands for it), and maps socket inodes to processes through ``/proc/<pid>/fd``. Inodes
are unique across namespaces, so one fd scan serves them all. The fd scan is the expensive part,
so it only runs when a socket appears whose owner is not yet known, and stops as soon as every
wanted inode is found.

Each flow seen for the first time becomes one :class:`Connection` observation (fed to the
detectors: exfil uses them to name the process behind a byte count) and, from the second poll
on, one ``new-connection`` event. Flows present at the first poll are fed but not announced, so
starting Garrison on a busy host does not log every open socket as new.

Addresses: the kernel prints each 32-bit word of an address with ``%08X`` of the word as it sits
in memory, i.e. in host byte order. On a little-endian machine every 4-byte group is reversed;
IPv6 is four such words.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import pwd
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

from garrison.events import NEW_CONNECTION, Event, Severity

if TYPE_CHECKING:
    from garrison.engine import Garrison

log = logging.getLogger("garrison.sensors.connections")

TCP_STATES: Final = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}
LISTEN: Final = 10
# States of a flow worth reporting: TIME_WAIT and friends are the end of one already seen, but
# CLOSE_WAIT is a half-closed flow that can still send everything it wants (an upload to a
# receiver that shut its own side at once looks exactly like that).
_LIVE_TCP: Final = frozenset({1, 2, 3, 8})
TABLES: Final = (("tcp", 4), ("tcp6", 6), ("udp", 4), ("udp6", 6))
MAX_CMDLINE: Final = 1024  # characters of a command line kept


class ProcTableError(ValueError):
    """A line of a /proc/net table could not be parsed."""


class SocketEntry(NamedTuple):
    """One row of /proc/net/{tcp,tcp6,udp,udp6}. ``state`` is the kernel's TCP state number
    (UDP sockets report 7, CLOSE, or 1 when connected); ``uid`` the socket owner's user id."""

    proto: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    state: int
    uid: int
    inode: int


class ProcessInfo(NamedTuple):
    """The process that owns a socket."""

    pid: int
    ppid: int
    name: str
    command_line: str
    user: str
    exe: str


class Connection(NamedTuple):
    """A flow seen in the socket tables for the first time (an observation; ``ts`` seconds
    since the epoch, taken when the poll ran). Process fields are empty/-1 when the owner could
    not be found (a socket without a process, or one that exited between two reads).
    ``direction`` is 'inbound' when the local port is listening in the same namespace."""

    ts: float
    proto: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    state: str
    direction: str
    netns: str
    inode: int
    uid: int
    pid: int = -1
    ppid: int = -1
    process_name: str = ""
    command_line: str = ""
    user: str = ""
    exe: str = ""


class FlowBytes(NamedTuple):
    """Bytes one established TCP flow moved since the previous poll, from the kernel's
    counters (an observation; ``ts`` seconds since the epoch). ``bytes_out``: sent and
    acknowledged by the peer; ``bytes_in``: received (tcp_info ``bytes_acked`` and
    ``bytes_received`` differences, in bytes). A flow new since the previous poll reports all
    it moved; flows that existed before the sensor's first poll only count from then on."""

    ts: float
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    bytes_out: int
    bytes_in: int
    netns: str
    inode: int


_LITTLE = sys.byteorder == "little"


def parse_address(text: str) -> tuple[str, int]:
    """``'0100007F:0016'`` -> ``('127.0.0.1', 22)``; 32 hex digits for IPv6."""
    addr, _, port = text.partition(":")
    try:
        raw = bytes.fromhex(addr)
        portnum = int(port, 16)
    except ValueError:
        raise ProcTableError(f"bad address {text!r}") from None
    if len(raw) not in (4, 16) or not port:
        raise ProcTableError(f"bad address {text!r}")
    if _LITTLE:
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw)
    else:
        ip = ipaddress.IPv6Address(raw)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a v4 peer on a dual-stack socket: report it as v4
    return str(ip), portnum


def parse_table(text: str, proto: str) -> list[SocketEntry]:
    """Parse the text of one /proc/net table; malformed lines raise :class:`ProcTableError`."""
    out: list[SocketEntry] = []
    lines = text.splitlines()
    for line in lines[1:]:
        f = line.split()
        if len(f) < 10:
            if f:
                raise ProcTableError(f"short line in {proto} table: {line!r}")
            continue
        la, lp = parse_address(f[1])
        ra, rp = parse_address(f[2])
        try:
            state, uid, inode = int(f[3], 16), int(f[7]), int(f[9])
        except ValueError:
            raise ProcTableError(f"bad fields in {proto} table: {line!r}") from None
        out.append(SocketEntry(proto, la, lp, ra, rp, state, uid, inode))
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _pids(proc: str) -> Iterator[int]:
    with os.scandir(proc) as it:
        for entry in it:
            if entry.name.isdigit():
                yield int(entry.name)


_users: dict[int, str] = {}


def user_name(uid: int) -> str:
    """Login name of ``uid`` (cached), or the number as text when it has none."""
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        if len(_users) < 4096:
            _users[uid] = name
    return name


def process_info(pid: int, proc: str = "/proc") -> ProcessInfo | None:
    """Read one process's identity from /proc, or None if it is gone."""
    stat = _read(f"{proc}/{pid}/stat")
    if stat is None:
        return None
    # The name is in parentheses and may itself contain spaces and ')'.
    lpar, rpar = stat.find("("), stat.rfind(")")
    if lpar < 0 or rpar < 0:
        return None
    name = stat[lpar + 1 : rpar]
    rest = stat[rpar + 2 :].split()
    ppid = int(rest[1]) if len(rest) > 1 and rest[1].lstrip("-").isdigit() else -1
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as fh:
            raw = fh.read(MAX_CMDLINE * 4)
        cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        cmdline = ""
    uid = -1
    status = _read(f"{proc}/{pid}/status") or ""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            uid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            break
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        exe = ""
    return ProcessInfo(pid, ppid, name, cmdline[:MAX_CMDLINE], user_name(uid) if uid >= 0 else "",
                       exe)


# -- byte counters: NETLINK_SOCK_DIAG (what `ss -ti` reads) --------------------------------------
NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
INET_DIAG_INFO: Final = 2
CLONE_NEWNET: Final = 0x40000000
_NLMSG = struct.Struct("=IHHII")
_TCPI_BYTES: Final = 120  # offset of tcpi_bytes_acked, then tcpi_bytes_received (u64 each)
# States whose sockets can still carry data: ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK,
# CLOSING (a bitmask of TCP state numbers for the kernel's filter).
_DATA_STATES: Final = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11)


def _diag_request(family: int) -> bytes:
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0,
                      _DATA_STATES) + bytes(48)
    return _NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                       1, 0) + req


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def tcp_counters(sock: socket.socket) -> Iterator[tuple[str, int, str, int, int, int, int]]:
    """(local, lport, remote, rport, bytes_acked, bytes_received, inode) of every TCP socket
    that can carry data, in the namespace ``sock`` (a NETLINK_SOCK_DIAG socket) belongs to.
    Bytes a socket moves between its last poll and its close are not seen."""
    for family in (socket.AF_INET, socket.AF_INET6):
        sock.send(_diag_request(family))
        done = False
        while not done:
            data = sock.recv(1 << 17)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    raise OSError(f"sock_diag: bad netlink length {length}")
                if kind == NLMSG_DONE:
                    done = True
                    break
                if kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, off + _NLMSG.size)
                    raise OSError(-errno, "sock_diag request refused")
                body = data[off + _NLMSG.size : off + length]
                off += (length + 3) & ~3
                if len(body) < 72:
                    continue
                fam = body[0]
                sport, dport = struct.unpack_from("!HH", body, 4)
                inode = struct.unpack_from("=I", body, 68)[0]
                attr = 72
                while attr + 4 <= len(body):
                    alen, atype = struct.unpack_from("=HH", body, attr)
                    if alen < 4:
                        break
                    if atype == INET_DIAG_INFO and alen - 4 >= _TCPI_BYTES + 16:
                        acked, received = struct.unpack_from("=QQ", body, attr + 4 + _TCPI_BYTES)
                        yield (_addr(fam, body[8:24]), sport, _addr(fam, body[24:40]), dport,
                               acked, received, inode)
                        break
                    attr += (alen + 3) & ~3


def _diag_socket(ns_path: str | None) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the namespace at ``ns_path`` (None: our own). A socket
    stays in the namespace it was made in, so it is made in a short-lived thread that enters
    that namespace (setns affects the calling thread only; needs CAP_SYS_ADMIN)."""
    if ns_path is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
                result.append(
                    socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
                )
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller's thread below
            result.append(exc)

    worker = threading.Thread(target=enter, name="garrison-setns", daemon=True)
    worker.start()
    worker.join(10)
    if not result:
        raise OSError(f"setns({ns_path}) did not finish")
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


class SocketTable:
    """Polls the socket tables of every network namespace and reports new flows.

    ``poll(now)`` returns a :class:`Connection` per flow not present at the previous poll.
    Memory is bounded by the sockets that exist (at most ``max_flows`` are remembered).
    """

    def __init__(
        self, proc: str = "/proc", *, all_namespaces: bool = True, max_flows: int = 262_144
    ) -> None:
        self.proc = proc
        self.all_namespaces = all_namespaces
        self.max_flows = max_flows
        self._seen: set[tuple[str, str, str, str]] = set()  # (ns, proto, local, remote) hex
        self._owners: dict[int, int] = {}  # socket inode -> pid
        self._diag: dict[str, socket.socket] = {}  # namespace id -> sock_diag socket
        self._diag_failed: set[str] = set()
        self._bytes: dict[tuple[str, int], tuple[int, int]] = {}  # (ns, inode) -> last counts
        self._bytes_primed = False
        self.polls = 0
        self.fd_scans = 0
        self.errors = 0

    def namespaces(self) -> dict[str, str]:
        """Network namespace id -> a /proc directory whose ``net/`` shows that namespace."""
        spaces: dict[str, str] = {}
        try:
            own = os.readlink(f"{self.proc}/self/ns/net")
        except OSError:
            own = "self"
        spaces[own] = f"{self.proc}/self"
        if not self.all_namespaces:
            return spaces
        for pid in _pids(self.proc):
            try:
                ns = os.readlink(f"{self.proc}/{pid}/ns/net")
            except OSError:
                continue
            if ns not in spaces:
                spaces[ns] = f"{self.proc}/{pid}"
        return spaces

    def sockets(self) -> Iterator[tuple[str, SocketEntry]]:
        """Every socket of every namespace, with its namespace id."""
        for ns, base in self.namespaces().items():
            for name, _family in TABLES:
                text = _read(f"{base}/net/{name}")
                if text is None:
                    continue
                proto = name.rstrip("6")
                try:
                    entries = parse_table(text, proto)
                except ProcTableError as exc:
                    self.errors += 1
                    log.warning("skipping %s/net/%s: %s", base, name, exc)
                    continue
                for entry in entries:
                    yield ns, entry

    def owners(self, inodes: Iterable[int]) -> dict[int, int]:
        """Socket inode -> pid for ``inodes`` (cached; scans /proc/*/fd for unknown ones)."""
        wanted = {i for i in inodes if i and i not in self._owners}
        if wanted:
            self.fd_scans += 1
            for pid in _pids(self.proc):
                fd_dir = f"{self.proc}/{pid}/fd"
                try:
                    with os.scandir(fd_dir) as it:
                        for entry in it:
                            try:
                                target = os.readlink(entry.path)
                            except OSError:
                                continue
                            if target.startswith("socket:["):
                                inode = int(target[8:-1])
                                if inode in wanted:
                                    self._owners[inode] = pid
                                    wanted.discard(inode)
                except OSError:
                    continue
                if not wanted:
                    break
        return self._owners

    def byte_counts(self, now: float) -> list[FlowBytes]:
        """Counters of established TCP flows that changed since the previous call, from every
        namespace this process may enter (its own without privileges). Memory: one entry per
        established flow."""
        out: list[FlowBytes] = []
        latest: dict[tuple[str, int], tuple[int, int]] = {}
        primed = self._bytes_primed
        spaces = self.namespaces()
        own = next(iter(spaces))
        for ns, base in spaces.items():
            sock = self._diag.get(ns)
            if sock is None:
                if ns in self._diag_failed:
                    continue
                try:
                    sock = _diag_socket(None if ns == own else f"{base}/ns/net")
                except OSError as exc:
                    self._diag_failed.add(ns)
                    log.info("no byte counters for namespace %s: %s", ns, exc)
                    continue
                self._diag[ns] = sock
            try:
                rows = list(tcp_counters(sock))
            except OSError as exc:
                self.errors += 1
                log.warning("sock_diag failed in %s: %s", ns, exc)
                continue
            for la, lp, ra, rp, acked, received, inode in rows:
                key = (ns, inode)
                latest[key] = (acked, received)
                if not primed:
                    continue  # the baseline: what flows moved before we started is not news
                # bytes_acked counts the SYN's sequence number too.
                prev = self._bytes.get(key, (1 if acked else 0, 0))
                sent, got = acked - prev[0], received - prev[1]
                if sent > 0 or got > 0:
                    out.append(FlowBytes(now, la, lp, ra, rp, max(0, sent), max(0, got), ns,
                                         inode))
        for ns in [n for n in self._diag if n not in spaces]:
            self._diag.pop(ns).close()
        self._diag_failed &= set(spaces)
        self._bytes = latest
        self._bytes_primed = True
        return out

    def close(self) -> None:
        """Release the sock_diag sockets."""
        for sock in self._diag.values():
            sock.close()
        self._diag.clear()

    def _rows(self) -> Iterator[tuple[str, str, list[str]]]:
        """(namespace, 'tcp'|'udp', fields) of every table line, unparsed (the fast path: most
        lines are flows already known and only need their raw text as a key)."""
        for ns, base in self.namespaces().items():
            for name, _family in TABLES:
                text = _read(f"{base}/net/{name}")
                if text is None:
                    continue
                proto = name.rstrip("6")
                for line in text.splitlines()[1:]:
                    f = line.split()
                    if len(f) < 10:
                        if f:
                            self.errors += 1
                        continue
                    yield ns, proto, f

    def poll(self, now: float) -> list[Connection]:
        """One pass over the tables; the flows that are new since the last pass."""
        self.polls += 1
        listening: set[tuple[str, str, int]] = set()
        current: set[tuple[str, str, str, str]] = set()
        fresh: list[tuple[str, SocketEntry]] = []
        inodes: set[str] = set()  # of live flows, as printed
        seen = self._seen
        for ns, proto, f in self._rows():
            try:
                state = int(f[3], 16)
                if proto == "tcp":
                    if state == LISTEN:
                        listening.add((ns, proto, int(f[1].rpartition(":")[2], 16)))
                        continue
                    if state not in _LIVE_TCP:
                        continue
                elif f[2].endswith(":0000"):  # unconnected UDP: a server
                    listening.add((ns, proto, int(f[1].rpartition(":")[2], 16)))
                    continue
                key = (ns, proto, f[1], f[2])
                current.add(key)
                inodes.add(f[9])
                if key in seen:
                    continue
                la, lp = parse_address(f[1])
                ra, rp = parse_address(f[2])
                fresh.append((ns, SocketEntry(proto, la, lp, ra, rp, state, int(f[7]),
                                              int(f[9]))))
            except (ValueError, IndexError):  # ProcTableError is a ValueError
                self.errors += 1
                continue
        owners = self.owners(e.inode for _ns, e in fresh) if fresh else self._owners
        out: list[Connection] = []
        infos: dict[int, ProcessInfo | None] = {}
        for ns, e in fresh:
            pid = owners.get(e.inode, -1)
            info: ProcessInfo | None = None
            if pid >= 0:
                if pid not in infos:
                    infos[pid] = process_info(pid, self.proc)
                info = infos[pid]
            inbound = (ns, e.proto, e.local_port) in listening
            conn = Connection(
                ts=now, proto=e.proto, local_addr=e.local_addr, local_port=e.local_port,
                remote_addr=e.remote_addr, remote_port=e.remote_port,
                state=TCP_STATES.get(e.state, str(e.state)) if e.proto == "tcp" else "",
                direction="inbound" if inbound else "outbound", netns=ns, inode=e.inode,
                uid=e.uid,
            )
            if info is not None:
                conn = conn._replace(
                    pid=info.pid, ppid=info.ppid, process_name=info.name,
                    command_line=info.command_line, user=info.user or user_name(e.uid),
                    exe=info.exe,
                )
            else:
                conn = conn._replace(user=user_name(e.uid))
            out.append(conn)
        if len(current) > self.max_flows:
            current = set(list(current)[: self.max_flows])
        self._seen = current
        if len(self._owners) > 2 * len(inodes) + 1024:
            self._owners = {i: p for i, p in self._owners.items() if str(i) in inodes}
        return out


def new_connection_event(conn: Connection) -> Event:
    """The ``new-connection`` event of a flow (ECS source = the side that opened it)."""
    local, remote = (conn.local_addr, conn.local_port), (conn.remote_addr, conn.remote_port)
    (src, sport), (dst, dport) = (remote, local) if conn.direction == "inbound" else (local, remote)
    who = f"{conn.process_name}[{conn.pid}]" if conn.pid >= 0 else "unknown process"
    return Event(
        name=NEW_CONNECTION,
        ts=conn.ts,
        severity=Severity.INFO,
        source_ip=src,
        source_port=sport,
        destination_ip=dst,
        destination_port=dport,
        transport=conn.proto,
        detail={
            "ip": conn.remote_addr,
            "remote_addr": conn.remote_addr,
            "remote_port": conn.remote_port,
            "local_addr": conn.local_addr,
            "local_port": conn.local_port,
            "direction": conn.direction,
            "state": conn.state,
            "pid": conn.pid,
            "ppid": conn.ppid,
            "process_name": conn.process_name,
            "command_line": conn.command_line,
            "exe": conn.exe,
            "user": conn.user,
            "netns": conn.netns,
        },
        message=f"{conn.direction} {conn.proto} {conn.local_addr}:{conn.local_port} <-> "
        f"{conn.remote_addr}:{conn.remote_port} by {who}",
    )


class ConnectionSensor:
    """Component: polls :class:`SocketTable` every ``interval`` seconds in a worker thread,
    feeds each new flow to the engine and (``announce``) emits its ``new-connection`` event.
    A busy host opens many flows a second: ``announce=False`` keeps them out of the log while
    exfil and known-bad still get their process attribution."""

    name = "connections"

    def __init__(
        self, interval: float = 1.0, table: SocketTable | None = None, *, announce: bool = True,
        byte_counts: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"poll interval must be positive seconds, got {interval!r}")
        self.interval = interval
        self.announce = announce
        self.byte_counts = byte_counts
        self.table = table or SocketTable()
        self._task: asyncio.Task[None] | None = None

    async def start(self, engine: Garrison) -> None:
        first = await asyncio.to_thread(self.table.poll, time.time())
        for conn in first:
            engine.feed(conn)
        if self.byte_counts:  # the baseline of the counters
            await asyncio.to_thread(self.table.byte_counts, time.time())
        self._task = asyncio.get_running_loop().create_task(self._loop(engine))

    async def _loop(self, engine: Garrison) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                fresh = await asyncio.to_thread(self.table.poll, time.time())
                counts = (await asyncio.to_thread(self.table.byte_counts, time.time())
                          if self.byte_counts else [])
            except Exception:  # one bad poll must not end the sensor; say so and carry on
                log.exception("socket table poll failed")
                continue
            for conn in fresh:
                engine.feed(conn)
                if self.announce:
                    engine.emit(new_connection_event(conn))
            for flow in counts:
                engine.feed(flow)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.table.close()
