"""Known-bad destinations: suspicious ports and blocklisted addresses.

Alerts (``suspicious-connection``):

- the defended host opens a connection (TCP SYN, or a UDP datagram) to a suspicious port on an
  outside address (4444 Metasploit, 6667 IRC C2, 1337/31337 "elite" backdoors, ...);
- the defended host accepts a connection on a suspicious port (it answers a SYN with SYN-ACK:
  something is listening there, a bind shell for instance). A scan's unanswered probes of those
  ports are the scan detector's business, not ours;
- any packet exchanged with an address on a blocklist (a set, or a callable so that the
  correlator's blocklists can be plugged in).

One event per (outside address, port, reason) per ``cooldown`` seconds; state is an LRU of
bounded size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Final

from garrison.detect.homenet import HomeNet
from garrison.detect.homenet import Network as IPNetwork
from garrison.events import SUSPICIOUS_CONNECTION, Event, Severity, Technique
from garrison.observations import ACK, RST, SYN, TCP, UDP, Packet, transport_name

DEFAULT_SUSPICIOUS_PORTS: Final = frozenset(
    {1337, 31337, 4444, 4445, 5555, 6666, 6667, 6668, 6669, 12345, 27374, 1234, 9001, 50050}
)

T1571: Final = Technique("T1571", "Non-Standard Port", "TA0011", "Command and Control")
T1071: Final = Technique("T1071", "Application Layer Protocol", "TA0011", "Command and Control")


Blocklist = Callable[[str], bool] | Collection[str]


class KnownBadDetector:
    """Alerts on traffic with suspicious ports or blocklisted addresses (see module doc)."""

    name = "known-bad"
    accepts: tuple[type, ...] = (Packet,)
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

    def observe(self, obs: Packet) -> list[Event]:
        home = self.home
        src_home = obs.src in home
        dst_home = obs.dst in home
        if src_home == dst_home:
            return []
        local, remote = (obs.src, obs.dst) if src_home else (obs.dst, obs.src)
        out: list[Event] = []
        if self._blocked(remote):
            rport = obs.dport if src_home else obs.sport
            ev = self._alert(obs, "blocklisted-address", local, remote, rport, outbound=src_home)
            if ev is not None:
                out.append(ev)
        if obs.proto == TCP:
            syn_only = obs.flags & (SYN | ACK | RST) == SYN
            syn_ack = obs.flags & (SYN | ACK | RST) == SYN | ACK
            if src_home and syn_only and obs.dport in self.ports:
                ev = self._alert(obs, "suspicious-port", local, remote, obs.dport, outbound=True)
                if ev is not None:
                    out.append(ev)
            elif src_home and syn_ack and obs.sport in self.ports:
                ev = self._alert(
                    obs, "suspicious-listening-port", local, remote, obs.sport, outbound=False
                )
                if ev is not None:
                    out.append(ev)
        elif obs.proto == UDP and src_home and obs.dport in self.ports:
            ev = self._alert(obs, "suspicious-port", local, remote, obs.dport, outbound=True)
            if ev is not None:
                out.append(ev)
        return out

    def flush(self, now: float) -> list[Event]:
        while self._last and next(iter(self._last.values())) < now - self.cooldown:
            self._last.popitem(last=False)
        return []

    def _alert(
        self, obs: Packet, reason: str, local: str, remote: str, port: int, *, outbound: bool
    ) -> Event | None:
        key = (remote, port, reason)
        last = self._last.get(key)
        if last is not None and obs.ts - last < self.cooldown:
            return None
        self._last[key] = obs.ts
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        blocklisted = reason == "blocklisted-address"
        severity = Severity.HIGH if blocklisted or port in (4444, 31337) else Severity.MEDIUM
        if outbound:
            sip, sport, dip, dport = local, obs.sport, remote, obs.dport
        else:
            sip, sport, dip, dport = remote, obs.dport, local, obs.sport
        what = {
            "suspicious-port": f"connection from {local} to suspicious port {remote}:{port}",
            "suspicious-listening-port": f"{local} accepted a connection on suspicious port "
            f"{port} from {remote}",
            "blocklisted-address": f"traffic between {local} and blocklisted {remote}",
        }[reason]
        return Event(
            name=SUSPICIOUS_CONNECTION,
            ts=obs.ts,
            severity=severity,
            source_ip=sip,
            source_port=sport,
            destination_ip=dip,
            destination_port=dport,
            transport=transport_name(obs.proto),
            detail={
                "ip": remote,
                "reason": reason,
                "remote_addr": remote,
                "remote_port": port,
                "local_addr": local,
                "direction": "outbound" if outbound else "inbound",
            },
            techniques=(T1071,) if blocklisted else (T1571,),
            episode=f"{SUSPICIOUS_CONNECTION}:{reason}:{remote}:{port}:{obs.ts:.3f}",
            message=what,
        )
