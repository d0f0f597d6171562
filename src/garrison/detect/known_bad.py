"""Known-bad destinations: suspicious ports and blocklisted addresses.

Alerts (``suspicious-connection``):

- the defended host opens a connection (TCP SYN, or a UDP datagram) to a suspicious port on an
  outside address (4444 Metasploit, 6667 IRC C2, 1337/31337 "elite" backdoors, ...);
- the defended host accepts a connection on a suspicious port (it answers a SYN with SYN-ACK:
  something is listening there, a bind shell for instance). A scan's unanswered probes of those
  ports are the scan detector's business, not ours;
- any packet exchanged with an address on a blocklist (a set, or a callable so that the
  correlator's blocklists can be plugged in).

The same checks run on :class:`~garrison.sensors.connections.Connection` observations from the
socket tables, so they work without packet capture and name the process; the shared cooldown
keeps the two paths from reporting one connection twice.

One event per (outside address, port, reason) per ``cooldown`` seconds; state is an LRU of
bounded size.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final

from garrison.detect.homenet import HomeNet
from garrison.detect.homenet import Network as IPNetwork
from garrison.events import SUSPICIOUS_CONNECTION, Event, Severity, Technique
from garrison.observations import ACK, RST, SYN, TCP, UDP, Packet, transport_name
from garrison.sensors.connections import Connection

DEFAULT_SUSPICIOUS_PORTS: Final = frozenset(
    {1337, 31337, 4444, 4445, 5555, 6666, 6667, 6668, 6669, 12345, 27374, 1234, 9001, 50050}
)

_TRANSPORT: Final = {TCP: "tcp", UDP: "udp"}
T1571: Final = Technique("T1571", "Non-Standard Port", "TA0011", "Command and Control")
T1071: Final = Technique("T1071", "Application Layer Protocol", "TA0011", "Command and Control")


Blocklist = Callable[[str], bool] | Collection[str]


def is_local_only(ip: str) -> bool:
    """Loopback, link-local or unspecified: traffic that never leaves the host or link."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return True
    return addr.is_loopback or addr.is_link_local or addr.is_unspecified


class KnownBadDetector:
    """Alerts on traffic with suspicious ports or blocklisted addresses (see module doc)."""

    name = "known-bad"
    accepts: tuple[type, ...] = (Packet, Connection)
    packet_filter = "all"

    def __init__(
        self,
        home_net: HomeNet | Iterable[IPNetwork | str],
        *,
        ports: Iterable[int] = DEFAULT_SUSPICIOUS_PORTS,
        blocklist: Blocklist | None = None,
        cooldown: float = 3600.0,
        max_keys: int = 10_000,
    ) -> None:
        self.home = home_net if isinstance(home_net, HomeNet) else HomeNet(home_net)
        self.ports = frozenset(ports)
        self._lookup: Callable[[str], bool] | None
        if blocklist is None:
            self._lookup = None
        elif callable(blocklist):
            self._lookup = blocklist
        else:
            self._lookup = frozenset(blocklist).__contains__
        self._verdicts: dict[str, bool] = {}  # bounded cache of blocklist answers
        self.cooldown = cooldown
        self.max_keys = max_keys
        self._last: OrderedDict[tuple[str, int, str], float] = OrderedDict()

    def _blocked(self, ip: str) -> bool:
        if self._lookup is None:
            return False
        hit = self._verdicts.get(ip)
        if hit is None:
            hit = bool(self._lookup(ip))
            if len(self._verdicts) >= 65_536:
                self._verdicts.clear()
            self._verdicts[ip] = hit
        return hit

    def observe(self, obs: Packet | Connection) -> list[Event]:
        if isinstance(obs, Connection):
            return self._connection(obs)
        home = self.home  # home[ip]: a dict lookup once the address was seen (hot path)
        src_home = home[obs.src]
        if src_home == home[obs.dst]:
            return []
        local, remote = (obs.src, obs.dst) if src_home else (obs.dst, obs.src)
        ports = self.ports
        if not (src_home and (obs.dport in ports or obs.sport in ports)) and \
                not self._blocked(remote):
            return []  # the common case: nothing to check further, nothing built
        # As seen in the packet, which is not always the direction of the connection.
        flow = (obs.src, obs.sport, obs.dst, obs.dport)
        back = (obs.dst, obs.dport, obs.src, obs.sport)
        proto = _TRANSPORT.get(obs.proto) or transport_name(obs.proto)
        out: list[Event] = []
        if self._blocked(remote):
            rport = obs.dport if src_home else obs.sport
            out += self._alert(obs.ts, proto, "blocklisted-address", local, remote, rport, flow,
                               outbound=src_home)
        if obs.proto == TCP:
            syn_only = obs.flags & (SYN | ACK | RST) == SYN
            syn_ack = obs.flags & (SYN | ACK | RST) == SYN | ACK
            if src_home and syn_only and obs.dport in self.ports:
                out += self._alert(obs.ts, proto, "suspicious-port", local, remote, obs.dport,
                                   flow, outbound=True)
            elif src_home and syn_ack and obs.sport in self.ports:
                # Our SYN-ACK answers their SYN: the connection goes remote -> us.
                out += self._alert(obs.ts, proto, "suspicious-listening-port", local, remote,
                                   obs.sport, back, outbound=False)
        elif obs.proto == UDP and src_home and obs.dport in self.ports:
            out += self._alert(obs.ts, proto, "suspicious-port", local, remote, obs.dport, flow,
                               outbound=True)
        return out

    def _connection(self, c: Connection) -> list[Event]:
        """The same checks on a socket-table flow (works without packet capture, and names
        the process)."""
        if c.remote_addr in self.home or is_local_only(c.remote_addr):
            return []
        local, remote = c.local_addr, c.remote_addr
        outbound = c.direction == "outbound"
        flow = ((local, c.local_port, remote, c.remote_port) if outbound
                else (remote, c.remote_port, local, c.local_port))
        proc = {"pid": c.pid, "process_name": c.process_name, "command_line": c.command_line,
                "user": c.user}
        out: list[Event] = []
        if self._blocked(remote):
            out += self._alert(c.ts, c.proto, "blocklisted-address", local, remote,
                               c.remote_port, flow, outbound=outbound, proc=proc)
        if outbound and c.remote_port in self.ports:
            out += self._alert(c.ts, c.proto, "suspicious-port", local, remote, c.remote_port,
                               flow, outbound=True, proc=proc)
        elif not outbound and c.local_port in self.ports:
            out += self._alert(c.ts, c.proto, "suspicious-listening-port", local, remote,
                               c.local_port, flow, outbound=False, proc=proc)
        return out

    def flush(self, now: float) -> list[Event]:
        while self._last and next(iter(self._last.values())) < now - self.cooldown:
            self._last.popitem(last=False)
        return []

    def _alert(
        self, ts: float, proto: str, reason: str, local: str, remote: str, port: int,
        flow: tuple[str, int, str, int], *, outbound: bool, proc: dict[str, Any] | None = None,
    ) -> list[Event]:
        """One event unless (remote, port, reason) alerted within ``cooldown`` seconds.
        ``flow`` is (source ip, source port, destination ip, destination port) of the
        connection, initiator first."""
        key = (remote, port, reason)
        last = self._last.get(key)
        if last is not None and ts - last < self.cooldown:
            return []
        self._last[key] = ts
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        blocklisted = reason == "blocklisted-address"
        severity = Severity.HIGH if blocklisted or port in (4444, 31337) else Severity.MEDIUM
        what = {
            "suspicious-port": f"connection from {local} to suspicious port {remote}:{port}",
            "suspicious-listening-port": f"{local} accepted a connection on suspicious port "
            f"{port} from {remote}",
            "blocklisted-address": f"traffic between {local} and blocklisted {remote}",
        }[reason]
        detail: dict[str, Any] = {
            "ip": remote,
            "reason": reason,
            "remote_addr": remote,
            "remote_port": port,
            "local_addr": local,
            "direction": "outbound" if outbound else "inbound",
        }
        if proc:
            detail.update(proc)
        return [Event(
            name=SUSPICIOUS_CONNECTION,
            ts=ts,
            severity=severity,
            source_ip=flow[0],
            source_port=flow[1],
            destination_ip=flow[2],
            destination_port=flow[3],
            transport=proto,
            detail=detail,
            techniques=(T1071,) if blocklisted else (T1571,),
            episode=f"{SUSPICIOUS_CONNECTION}:{reason}:{remote}:{port}:{ts:.3f}",
            message=what,
        )]
