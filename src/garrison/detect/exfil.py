"""Exfiltration sentinel: how much the defended host sends out, to whom, from which process.

Counts payload bytes of flows the defended host opened (its SYN, its first UDP datagram, or a
:class:`~garrison.sensors.connections.Connection` saying so; flows whose start was not seen
count as outbound when the local port is the higher one, the usual client side). Inbound
flows (someone downloading from our web server) are not uploads.

Alert types, with their severity:

- ``upload-burst`` (low): one flow carried ``burst_bytes`` or more upstream at an average rate
  of at least ``burst_rate`` bytes/s;
- ``asymmetric`` (medium): one flow sent ``asymmetric_bytes`` or more and at least
  ``asymmetric_ratio`` times what it received;
- ``unusual-port`` (medium): an upload burst to a port outside ``common_ports``;
- ``new-destinations`` (medium): one process (or host) sent data to ``new_destinations`` or
  more outside addresses it had not sent to before, within 60 s;
- ``large-upload`` (high): ``upload_bytes_per_min`` bytes or more within 60 s to one
  destination, or from one process to all destinations together;
- ``long-lived`` (low at 1 h, medium at 4 and 8 h, high at 12 h): a flow still carrying
  packets after that long.

One episode per (local address, destination, port): it reports when it first crosses a
threshold and again only when the severity rises. Byte counts come from packets or, for
flows no packet was seen of, from the kernel's per-socket counters (``FlowBytes``: exfil works
without packet capture). Process attribution comes from ``Connection`` observations; an alert
on a flow whose process is not known yet waits up to ``attribution_grace`` seconds
(observation time) for one.

Baselines: each process (its executable, else its name, else the local address) is learned
for ``warmup`` seconds from when it is first seen: its peak bytes per minute, per flow and new
destinations per minute. After warm-up, its thresholds are at least ``learn_factor`` times
those peaks, so a nightly backup or a package upload that was there from the start stops
alerting. Alerts still fire during warm-up (with the defaults): learning never hides a first
upload, and an attacker who was already present during warm-up is the accepted cost.

Memory is bounded: LRU maps for flows, destinations, processes and pending alerts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from garrison.detect.homenet import HomeNet
from garrison.detect.homenet import Network as IPNetwork
from garrison.detect.known_bad import is_local_only
from garrison.events import EXFIL, Event, Severity, Technique
from garrison.observations import ACK, SYN, TCP, UDP, Packet, transport_name
from garrison.sensors.connections import Connection, FlowBytes

T1041: Final = Technique("T1041", "Exfiltration Over C2 Channel", "TA0010", "Exfiltration")
T1048: Final = Technique(
    "T1048", "Exfiltration Over Alternative Protocol", "TA0010", "Exfiltration"
)
T1571: Final = Technique("T1571", "Non-Standard Port", "TA0011", "Command and Control")
T1071: Final = Technique("T1071", "Application Layer Protocol", "TA0011", "Command and Control")
COMMON_PORTS: Final = frozenset(
    {20, 21, 22, 25, 53, 80, 110, 123, 143, 443, 465, 587, 853, 873, 993, 995, 3478, 5222, 8080,
     8443, 9418}
)
LONG_LIVED_BANDS: Final = (
    (12 * 3600.0, Severity.HIGH), (8 * 3600.0, Severity.MEDIUM), (4 * 3600.0, Severity.MEDIUM),
    (3600.0, Severity.LOW),
)
MINUTE: Final = 60.0
_BUCKET: Final = 10.0  # seconds per bucket of a sliding one-minute counter

FlowKey = tuple[str, int, str, int, int]  # local, lport, remote, rport, proto


class _Minute:
    """Bytes within the last 60 s, in 10 s buckets (so at most 7 numbers per counter)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()

    def add(self, ts: float, n: int) -> float:
        start = ts - ts % _BUCKET
        b = self.buckets
        if b and b[-1][0] == start:
            b[-1][1] += n
        else:
            b.append([start, float(n)])
        while b and b[0][0] <= ts - MINUTE - _BUCKET:
            b.popleft()
        return sum(x[1] for x in b if x[0] > ts - MINUTE - _BUCKET)


@dataclass(slots=True)
class _Flow:
    first: float
    last: float
    outbound: bool
    out: int = 0
    inn: int = 0
    band: int = len(LONG_LIVED_BANDS)  # index of the last long-lived band reported
    proc: Connection | None = None
    packets: bool = False  # counted from packets (then kernel counters are ignored)


@dataclass(slots=True)
class _Dest:
    minute: _Minute = field(default_factory=_Minute)
    severity: int = -1  # highest severity reported in this episode
    last: float = 0.0
    first: float = 0.0


@dataclass(slots=True)
class _Proc:
    """Per-process counters and learned peaks (bytes/min, bytes/flow, new destinations/min)."""

    first: float
    minute: _Minute = field(default_factory=_Minute)
    new_dests: deque[float] = field(default_factory=deque)
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)
    peak_minute: float = 0.0
    peak_flow: float = 0.0
    peak_new: int = 0
    new_alerted: float = -1e18


@dataclass(slots=True)
class _Pending:
    deadline: float
    key: FlowKey
    event: Event


class ExfilDetector:
    """Byte counting per flow, destination and process (see module doc)."""

    name = "exfil"
    accepts: tuple[type, ...] = (Packet, Connection, FlowBytes)
    packet_filter = "all"

    def __init__(
        self,
        home_net: HomeNet | Iterable[IPNetwork | str],
        *,
        upload_bytes_per_min: int = 10_000_000,
        burst_bytes: int = 65_536,
        burst_rate: float = 4096.0,
        asymmetric_bytes: int = 1_000_000,
        asymmetric_ratio: float = 20.0,
        new_destinations: int = 50,
        common_ports: Iterable[int] = COMMON_PORTS,
        allowlist: Iterable[IPNetwork] = (),
        warmup: float = 86_400.0,
        learn_factor: float = 1.5,
        flow_timeout: float = 7200.0,
        episode_timeout: float = 300.0,
        attribution_grace: float = 2.0,
        max_flows: int = 65_536,
        max_dests: int = 65_536,
        max_procs: int = 1024,
        max_known_dests: int = 2048,
    ) -> None:
        self.home = home_net if isinstance(home_net, HomeNet) else HomeNet(home_net)
        allowed = list(allowlist)
        # An empty HomeNet means 'everything'; an empty allowlist must mean nothing.
        self.allow = HomeNet(allowed) if allowed else None
        self.upload_bytes_per_min = upload_bytes_per_min
        self.burst_bytes = burst_bytes
        self.burst_rate = burst_rate
        self.asymmetric_bytes = asymmetric_bytes
        self.asymmetric_ratio = asymmetric_ratio
        self.new_destinations = new_destinations
        self.common_ports = frozenset(common_ports)
        self.warmup = warmup
        self.learn_factor = learn_factor
        self.flow_timeout = flow_timeout
        self.episode_timeout = episode_timeout
        self.attribution_grace = attribution_grace
        self.max_flows = max_flows
        self.max_dests = max_dests
        self.max_procs = max_procs
        self.max_known_dests = max_known_dests
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._dests: OrderedDict[tuple[str, str, int], _Dest] = OrderedDict()
        self._procs: OrderedDict[str, _Proc] = OrderedDict()
        self._owners: OrderedDict[FlowKey, Connection] = OrderedDict()
        self._pending: deque[_Pending] = deque()
        self._local_only: dict[str, bool] = {}
        self.stats: Counter[str] = Counter()

    # -- input ----------------------------------------------------------------------------------
    def observe(self, obs: Packet | Connection | FlowBytes) -> list[Event]:
        if isinstance(obs, Connection):
            return self._connection(obs)
        if isinstance(obs, FlowBytes):
            return self._flow_bytes(obs)
        return self._packet(obs)

    def flush(self, now: float) -> list[Event]:
        out = self._release(now)
        flows = self._flows
        while flows and now - next(iter(flows.values())).last > self.flow_timeout:
            flows.popitem(last=False)
        return out

    # -- process attribution --------------------------------------------------------------------
    def _connection(self, c: Connection) -> list[Event]:
        proto = TCP if c.proto == "tcp" else UDP
        key = (c.local_addr, c.local_port, c.remote_addr, c.remote_port, proto)
        self._owners[key] = c
        self._owners.move_to_end(key)
        while len(self._owners) > self.max_flows:
            self._owners.popitem(last=False)
        flow = self._flows.get(key)
        if flow is not None:
            flow.proc = c
            if c.direction == "outbound":
                flow.outbound = True
        out: list[Event] = []
        for p in [p for p in self._pending if p.key == key]:
            self._pending.remove(p)
            out.append(self._attributed(p.event, c))
        return out + self._release(c.ts)

    def _release(self, now: float) -> list[Event]:
        out: list[Event] = []
        while self._pending and self._pending[0].deadline <= now:
            out.append(self._pending.popleft().event)
        return out

    @staticmethod
    def _attributed(event: Event, c: Connection) -> Event:
        detail = dict(event.detail)
        detail.update(
            pid=c.pid, ppid=c.ppid, process_name=c.process_name, command_line=c.command_line,
            user=c.user, exe=c.exe,
        )
        return dataclasses.replace(event, detail=detail)

    # -- bytes ----------------------------------------------------------------------------------
    def _packet(self, p: Packet) -> list[Event]:
        proto = p.proto
        if proto != TCP and proto != UDP:
            return []
        home = self.home  # home[ip]: a dict lookup once the address was seen (hot path)
        src_home = home[p.src]
        if src_home == home[p.dst]:
            return []
        out = self._release(p.ts) if self._pending else []
        if src_home:
            key: FlowKey = (p.src, p.sport, p.dst, p.dport, proto)
        else:
            key = (p.dst, p.dport, p.src, p.sport, proto)
        flow = self._flows.get(key)
        if flow is None:
            if self.allow is not None and key[2] in self.allow:
                return out
            if proto == TCP and p.flags & (SYN | ACK) == SYN:
                outbound = src_home
            elif proto == TCP and p.flags & (SYN | ACK) == SYN | ACK:
                outbound = not src_home
            elif proto == UDP and key[3] in self.common_ports and key[1] not in self.common_ports:
                outbound = True
            else:
                owner = self._owners.get(key)
                outbound = owner.direction == "outbound" if owner else key[1] > key[3]
                if proto == UDP and owner is None:
                    outbound = src_home  # the first datagram seen opens the flow
            flow = _Flow(p.ts, p.ts, outbound, proc=self._owners.get(key))
            self._flows[key] = flow
            while len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
        else:
            self._flows.move_to_end(key)
        flow.last = p.ts
        flow.packets = True
        n = p.payload_len
        if not src_home:
            flow.inn += n
        elif n:
            flow.out += n
            if flow.outbound:
                out.extend(self._upload(p.ts, key, flow, n))
        if flow.outbound and p.ts - flow.first >= LONG_LIVED_BANDS[-1][0] and flow.band > 0:
            out.extend(self._long_lived(p.ts, key, flow))
        return out

    def _flow_bytes(self, b: FlowBytes) -> list[Event]:
        """Kernel byte counters of a TCP flow: the same accounting as packets, for hosts or
        flows without packet capture. Ignored for flows already counted from packets."""
        remote = b.remote_addr
        if remote in self.home or (self.allow is not None and remote in self.allow):
            return []
        local_only = self._local_only.get(remote)
        if local_only is None:
            local_only = is_local_only(remote)
            if len(self._local_only) >= 4096:
                self._local_only.clear()
            self._local_only[remote] = local_only
        if local_only:  # loopback: a local database, not an upload
            return []
        key: FlowKey = (b.local_addr, b.local_port, b.remote_addr, b.remote_port, TCP)
        out = self._release(b.ts) if self._pending else []
        flow = self._flows.get(key)
        if flow is None:
            owner = self._owners.get(key)
            outbound = owner.direction == "outbound" if owner else key[1] > key[3]
            flow = _Flow(b.ts, b.ts, outbound, proc=owner)
            self._flows[key] = flow
            while len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
        elif flow.packets:
            return out
        else:
            self._flows.move_to_end(key)
        flow.last = b.ts
        flow.inn += b.bytes_in
        if b.bytes_out:
            flow.out += b.bytes_out
            if flow.outbound:
                out.extend(self._upload(b.ts, key, flow, b.bytes_out))
        if flow.outbound and b.ts - flow.first >= LONG_LIVED_BANDS[-1][0] and flow.band > 0:
            out.extend(self._long_lived(b.ts, key, flow))
        return out

    def _proc_key(self, key: FlowKey, flow: _Flow) -> str:
        c = flow.proc
        if c is not None and c.pid >= 0:
            return c.exe or c.process_name or f"pid:{c.pid}"
        return f"host:{key[0]}"

    def _proc(self, name: str, ts: float) -> _Proc:
        st = self._procs.get(name)
        if st is None:
            st = _Proc(ts)
            self._procs[name] = st
            while len(self._procs) > self.max_procs:
                self._procs.popitem(last=False)
        else:
            self._procs.move_to_end(name)
        return st

    def _limit(self, default: float, peak: float, st: _Proc, ts: float) -> float:
        if ts - st.first <= self.warmup:
            return default
        return max(default, self.learn_factor * peak)

    def _upload(self, ts: float, key: FlowKey, flow: _Flow, n: int) -> list[Event]:
        local, _lport, remote, rport, _proto = key
        dkey = (local, remote, rport)
        dest = self._dests.get(dkey)
        if dest is None or ts - dest.last > self.episode_timeout:
            dest = _Dest(first=ts)
            self._dests[dkey] = dest
            while len(self._dests) > self.max_dests:
                self._dests.popitem(last=False)
        else:
            self._dests.move_to_end(dkey)
        dest.last = ts
        per_dest = dest.minute.add(ts, n)
        st = self._proc(self._proc_key(key, flow), ts)
        per_proc = st.minute.add(ts, n)
        learning = ts - st.first <= self.warmup
        if learning:
            st.peak_minute = max(st.peak_minute, per_dest, per_proc)
            st.peak_flow = max(st.peak_flow, flow.out)
        out: list[Event] = []
        # New destinations per process within a minute.
        if remote not in st.known:
            st.known[remote] = None
            while len(st.known) > self.max_known_dests:
                st.known.popitem(last=False)
            st.new_dests.append(ts)
            while st.new_dests and st.new_dests[0] < ts - MINUTE:
                st.new_dests.popleft()
            if learning:
                st.peak_new = max(st.peak_new, len(st.new_dests))
            limit = self._limit(self.new_destinations, st.peak_new, st, ts)
            if len(st.new_dests) >= limit and ts - st.new_alerted > MINUTE:
                st.new_alerted = ts
                out.extend(self._alert(ts, key, flow, "new-destinations", Severity.MEDIUM,
                                       len(st.new_dests), dest=None))
        kind: str | None = None
        severity = Severity.INFO
        amount = flow.out
        large = self._limit(self.upload_bytes_per_min, st.peak_minute, st, ts)
        burst = self._limit(self.burst_bytes, st.peak_flow, st, ts)
        if per_dest >= large or per_proc >= large:
            kind, severity, amount = "large-upload", Severity.HIGH, int(max(per_dest, per_proc))
        elif flow.out >= burst:
            asym = self._limit(self.asymmetric_bytes, st.peak_flow, st, ts)
            if rport not in self.common_ports:
                kind, severity = "unusual-port", Severity.MEDIUM
            elif flow.out >= asym and flow.out >= self.asymmetric_ratio * max(1, flow.inn):
                kind, severity = "asymmetric", Severity.MEDIUM
            elif flow.out / max(1.0, ts - flow.first) >= self.burst_rate:
                kind, severity = "upload-burst", Severity.LOW
        if kind is not None and severity > dest.severity:
            dest.severity = severity
            out.extend(self._alert(ts, key, flow, kind, severity, amount, dest=dest))
        return out

    def _long_lived(self, ts: float, key: FlowKey, flow: _Flow) -> list[Event]:
        age = ts - flow.first
        for i, (band, severity) in enumerate(LONG_LIVED_BANDS):
            if i >= flow.band:
                break
            if age >= band:
                flow.band = i
                return self._alert(ts, key, flow, "long-lived", severity, flow.out, dest=None,
                                   extra={"duration": round(age, 1), "band_hours": band / 3600})
        return []

    def _alert(
        self, ts: float, key: FlowKey, flow: _Flow, kind: str, severity: Severity, amount: int,
        *, dest: _Dest | None, extra: dict[str, Any] | None = None,
    ) -> list[Event]:
        local, lport, remote, rport, proto = key
        self.stats[kind] += 1
        unusual = rport not in self.common_ports
        if kind == "long-lived":
            techniques: tuple[Technique, ...] = (T1071,)
        elif unusual:
            techniques = (T1048, T1571)
        else:
            techniques = (T1041,)
        detail: dict[str, Any] = {
            "ip": remote,
            "type": kind,
            "severity": severity.label,
            "remote_addr": remote,
            "remote_port": rport,
            "local_addr": local,
            "local_port": lport,
            "bytes": amount,
            "flow_bytes_out": flow.out,
            "flow_bytes_in": flow.inn,
            "pid": -1,
            "process_name": "",
            "command_line": "",
        }
        if extra:
            detail.update(extra)
        episode = (
            f"{EXFIL}:{local}:{remote}:{rport}:{dest.first:.3f}" if dest is not None
            else f"{EXFIL}:{kind}:{local}:{lport}:{remote}:{rport}:{flow.first:.3f}"
        )
        event = Event(
            name=EXFIL,
            ts=ts,
            severity=severity,
            source_ip=local,
            source_port=lport,
            destination_ip=remote,
            destination_port=rport,
            transport=transport_name(proto),
            detail=detail,
            techniques=techniques,
            episode=episode,
            message=f"{kind}: {local} sent {amount} bytes to {remote}:{rport}",
        )
        owner = flow.proc or self._owners.get(key)
        if owner is not None:
            flow.proc = owner
            return [self._attributed(event, owner)]
        if self.attribution_grace > 0:
            self._pending.append(_Pending(ts + self.attribution_grace, key, event))
            if len(self._pending) > 1024:  # bounded: release the oldest unattributed
                return [self._pending.popleft().event]
            return []
        return [event]
