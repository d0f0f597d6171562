"""Port-scan detection: one ``scan`` event per scan episode, updated as it grows.

How a source becomes a scanner
------------------------------
Every *first contact* of a source with a home ``(address, port, protocol)`` is a probe; repeats
of the same contact (retries, a busy client) are not new evidence. Each probe gets an outcome
from the defended host's answer: SYN-ACK or a UDP reply is a success; RST, ICMP port
unreachable, or no answer to a SYN within ``PROBE_TIMEOUT`` seconds is a failure.

* **Threshold Random Walk** (Jung et al., 2004): a sequential likelihood-ratio test on those
  outcomes (benign sources mostly succeed, scanners mostly fail) that calls a clear scanner
  after ~4 failed first contacts, however slowly they come: the state lives for hours
  (``idle_timeout``), LRU-capped, so nmap -T1/-T0 is caught.
* **Windows**: ``ports_per_window`` first contacts within ``window`` seconds, or ``slow_ports``
  within ``slow_window`` (the defaults users of psad-like tools know: 15 in 10 s, 25 in 300 s).
* **Sweeps**: one port on ``sweep_hosts`` home addresses (only when home has several).
* **Distributed**: ``distributed_sources`` sources, none a scanner on its own, together probing
  ``distributed_ports`` ports of one home address within ``slow_window``.

Probe kinds come from the TCP flags: SYN, FIN, NULL, XMAS (FIN+PSH+URG), ACK, Maimon (FIN+ACK),
UDP; a SYN probe whose handshake the source completes makes a *connect* scan (and makes the
episode ``verified``: a spoofed source cannot complete a handshake). Bare ACK and FIN+ACK
packets are also what ordinary connections send, so they count only once the host answers
them with a RST (the signature of an unsolicited segment). nmap's window scan (``-sW``) sends
exactly the ACK-scan probes; on the wire the two cannot be told apart and are reported as
``ack``. Scanners from private addresses are detected like any other: trust affects blocking,
never detection.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from garrison.config import ScannerConfig
from garrison.detect.homenet import HomeNet
from garrison.events import SCAN, Event, Severity, Technique
from garrison.observations import ICMP, ICMPV6, TCP, UDP, Packet

PROBE_TIMEOUT: Final = 5.0  # seconds without an answer to a SYN before it counts as failed
MIN_PROBES: Final = 4  # first contacts needed before any verdict
MAX_CONTACTS: Final = 4096  # per source; beyond it contacts are counted, not remembered
MAX_FLOWS: Final = 65536  # home-initiated flows remembered to recognise their replies
MAX_TARGETS: Final = 4096  # home addresses tracked for distributed scans
PORT_SAMPLE: Final = 32
SLOW_INTERVAL: Final = 5.0  # mean seconds between probes at or above which a scan is "slow"
THETA_BENIGN: Final = 0.8  # P(first contact succeeds | benign), Jung et al.
THETA_SCANNER: Final = 0.2  # P(first contact succeeds | scanner)

ABORT_WINDOW: Final = 2.0  # seconds: a connect scan tears a completed handshake down at once

# Contact states.
PENDING, SUCCESS, FAILED, NEUTRAL, CANDIDATE, COMPLETED, ABORTED = range(7)

# TCP flags.
_FIN, _SYN, _RST, _PSH, _ACK, _URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

TECHNIQUES: Final = (
    Technique("T1046", "Network Service Discovery", "TA0007", "Discovery"),
    Technique("T1595", "Active Scanning", "TA0043", "Reconnaissance"),
)
SWEEP_TECHNIQUES: Final = (
    Technique("T1595.001", "Scanning IP Blocks", "TA0043", "Reconnaissance"),
    Technique("T1046", "Network Service Discovery", "TA0007", "Discovery"),
)

# Probe kind of an inbound TCP segment without SYN+ACK/RST, by flags & 0x3F.
_STEALTH_KIND: Final = {0x00: "null", _FIN: "fin", _FIN | _PSH | _URG: "xmas"}


def severity_for(port_count: int, threshold: int) -> Severity:
    """Severity of a scan by its breadth (distinct contacts)."""
    if port_count >= 1000:
        return Severity.CRITICAL
    if port_count >= 100:
        return Severity.HIGH
    if port_count >= threshold:
        return Severity.MEDIUM
    return Severity.LOW


@dataclass(slots=True)
class _Contact:
    ts: float
    kind: str
    state: int


@dataclass(slots=True)
class _Episode:
    id: str
    rule: str
    reported: Severity
    reported_count: int
    first_seen: float
    verified: bool = False


@dataclass(slots=True)
class _Source:
    """Everything known about one source address. Bounded: see MAX_CONTACTS."""

    ip: str
    first_seen: float
    last_seen: float
    contacts: dict[tuple[str, int, int], _Contact] = field(default_factory=dict)
    overflow: int = 0
    probes: int = 0  # counted first contacts
    first_probe: float = 0.0
    last_probe: float = 0.0
    fast: deque[float] = field(default_factory=deque)
    slow: deque[float] = field(default_factory=deque)
    pending: deque[tuple[float, tuple[str, int, int]]] = field(default_factory=deque)
    kinds: dict[str, int] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    sweep: dict[int, set[str]] = field(default_factory=dict)
    successes: int = 0
    failures: int = 0
    completed: int = 0  # handshakes the source completed
    aborted: int = 0  # ... and tore down with a RST at once (connect-scan style)
    llr: float = 0.0
    episode: _Episode | None = None


@dataclass(slots=True)
class _Target:
    """Recent first contacts on one home address, for distributed scans."""

    recent: deque[tuple[float, str, int, str]] = field(default_factory=deque)
    by_source: dict[str, int] = field(default_factory=dict)
    by_port: dict[int, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    episode: _Episode | None = None
    last_seen: float = 0.0


class ScanDetector:
    """The port-scan detector (see the module docstring). Pure: packets in, events out."""

    name = "scan"
    accepts = (Packet,)
    packet_filter = "scan"

    def __init__(self, config: ScannerConfig | None = None, home: HomeNet | None = None) -> None:
        self.cfg = config or ScannerConfig()
        self.home = home if home is not None else HomeNet()
        self.sources: OrderedDict[str, _Source] = OrderedDict()
        self.targets: OrderedDict[str, _Target] = OrderedDict()
        self.flows: dict[tuple[str, int, str, int], None] = {}
        self.evicted = 0
        p_d = self.cfg.trw_threshold
        p_f = 1.0 - p_d
        self._upper = math.log(p_d / p_f)
        self._lower = math.log((1 - p_d) / (1 - p_f))
        self._step_fail = math.log((1 - THETA_SCANNER) / (1 - THETA_BENIGN))
        self._step_ok = math.log(THETA_SCANNER / THETA_BENIGN)
        self._sweeps = self.home.address_count > 1
        self._episodes = 0

    # -- packets ----------------------------------------------------------------------------
    def observe(self, obs: Packet) -> list[Event]:
        out: list[Event] = []
        home = self.home  # home[ip] is a dict lookup once the address has been seen
        if home[obs.dst] and obs.src != obs.dst:
            self._inbound(obs, out)
        if home[obs.src]:
            self._outbound(obs, out)
        return out

    def _inbound(self, p: Packet, out: list[Event]) -> None:
        proto = p.proto
        if proto == TCP:
            flags = p.flags & 0x3F
            if flags & (_SYN | _ACK | _RST) == _SYN:
                self._probe(p, "syn", True, out)
                return
            if flags & _RST:
                self._teardown(p, out)
                return
            if flags & _SYN:
                return  # SYN+ACK: an answer, not a probe
            if flags & _ACK:
                if (p.src, p.sport, p.dst, p.dport) in self.flows:
                    return  # a home-initiated connection
                st = self.sources.get(p.src)
                if st is not None:
                    c = st.contacts.get((p.dst, p.dport, TCP))
                    if c is not None:
                        if c.state == SUCCESS and not flags & _FIN:
                            c.state = COMPLETED
                            c.ts = p.ts
                            st.completed += 1
                        return
                if flags == _ACK and p.payload_len == 0:
                    self._probe(p, "ack", False, out)
                elif flags == _FIN | _ACK and p.payload_len == 0:
                    self._probe(p, "maimon", False, out)
                return
            self._probe(p, _STEALTH_KIND.get(flags, "other"), True, out)
        elif proto == UDP:
            if (p.src, p.sport, p.dst, p.dport) in self.flows:
                return  # the answer to a home-initiated exchange
            self._probe(p, "udp", True, out)

    def _teardown(self, p: Packet, out: list[Event]) -> None:
        """A RST from a source. Right after it completed a handshake, with nothing in between,
        it is how a connect() scanner closes: evidence a spoofed address cannot produce."""
        st = self.sources.get(p.src)
        if st is None:
            return
        c = st.contacts.get((p.dst, p.dport, TCP))
        if c is not None and c.state == COMPLETED and p.ts - c.ts <= ABORT_WINDOW:
            c.state = ABORTED
            st.aborted += 1
            self._maybe_update(st, p.ts, out)

    def _outbound(self, p: Packet, out: list[Event]) -> None:
        proto = p.proto
        if proto == TCP:
            flags = p.flags & 0x3F
            if flags & (_SYN | _ACK) == _SYN:
                self._remember_flow(p)
                return
            if flags & _SYN:  # SYN+ACK: the port is open
                self._outcome(p.dst, p.src, p.sport, TCP, True, p.ts, out)
            elif flags & _RST:
                self._outcome(p.dst, p.src, p.sport, TCP, False, p.ts, out)
        elif proto == UDP:
            st = self.sources.get(p.dst)
            if st is not None and (p.src, p.sport, UDP) in st.contacts:
                self._outcome(p.dst, p.src, p.sport, UDP, True, p.ts, out)
            else:
                self._remember_flow(p)
        elif proto in (ICMP, ICMPV6):
            unreachable = (proto == ICMP and p.sport == 3) or (proto == ICMPV6 and p.sport == 1)
            if unreachable:
                quoted = _quoted_probe(p.payload, 4 if proto == ICMP else 6)
                if quoted is not None:
                    src, dst, qproto, dport = quoted
                    self._outcome(src, dst, dport, qproto, False, p.ts, out)

    def _remember_flow(self, p: Packet) -> None:
        flows = self.flows
        if len(flows) >= MAX_FLOWS:
            # Drop the oldest half (dicts keep insertion order): bounded, amortised O(1).
            for key in list(flows)[: MAX_FLOWS // 2]:
                del flows[key]
        flows[(p.dst, p.dport, p.src, p.sport)] = None

    # -- probes and outcomes ------------------------------------------------------------------
    def _source(self, ip: str, ts: float) -> _Source:
        st = self.sources.get(ip)
        if st is None:
            if len(self.sources) >= self.cfg.max_sources:
                self.sources.popitem(last=False)
                self.evicted += 1
            st = self.sources[ip] = _Source(ip, ts, ts)
        else:
            self.sources.move_to_end(ip)
        st.last_seen = ts
        return st

    def _probe(self, p: Packet, kind: str, counted: bool, out: list[Event]) -> None:
        st = self._source(p.src, p.ts)
        key = (p.dst, p.dport, p.proto)
        contacts = st.contacts
        if key in contacts:
            return  # a repeat: no new evidence
        if len(contacts) >= MAX_CONTACTS:
            st.overflow += 1
            if counted:
                st.probes += 1
            return
        contacts[key] = _Contact(p.ts, kind, PENDING if counted else CANDIDATE)
        if counted:
            if kind == "syn":
                st.pending.append((p.ts, key))
            self._count(st, p.ts, key, kind, out)
        self._expire_pending(st, p.ts, out)

    def _count(
        self, st: _Source, ts: float, key: tuple[str, int, int], kind: str, out: list[Event]
    ) -> None:
        """Record a first contact as evidence and re-evaluate the source."""
        dst, port, _ = key
        st.probes += 1
        if st.probes == 1:
            st.first_probe = ts
        st.last_probe = ts
        st.kinds[kind] = st.kinds.get(kind, 0) + 1
        if len(st.ports) < 65536:
            st.ports.add(port)
        if len(st.hosts) < 4096:
            st.hosts.add(dst)
        cfg = self.cfg
        fast, slow = st.fast, st.slow
        fast.append(ts)
        slow.append(ts)
        while fast and fast[0] < ts - cfg.window:
            fast.popleft()
        while slow and slow[0] < ts - cfg.slow_window:
            slow.popleft()
        # Once past the thresholds the exact count no longer matters: keep the deques bounded.
        while len(fast) > cfg.ports_per_window * 2:
            fast.popleft()
        while len(slow) > cfg.slow_ports * 2:
            slow.popleft()
        if self._sweeps and len(st.sweep) < 1024:
            hosts = st.sweep.setdefault(port, set())
            if len(hosts) < 256:
                hosts.add(dst)
        if st.episode is None:
            self._distributed(st, ts, dst, port, kind, out)
        self._evaluate(st, ts, out)

    def _outcome(
        self, src: str, dst: str, port: int, proto: int, ok: bool, ts: float, out: list[Event]
    ) -> None:
        """The home host answered ``src``'s contact with ``dst:port``: success or failure."""
        st = self.sources.get(src)
        if st is None:
            return
        c = st.contacts.get((dst, port, proto))
        if c is None:
            return
        if c.state == CANDIDATE:
            if ok:
                return
            # An unsolicited ACK / FIN+ACK drew a RST: it was a probe after all.
            c.state = FAILED
            self._count(st, ts, (dst, port, proto), c.kind, out)
            self._walk(st, False, ts, out)
            return
        if c.state != PENDING:
            return
        c.state = SUCCESS if ok else FAILED
        self._walk(st, ok, ts, out)

    def _walk(self, st: _Source, ok: bool, ts: float, out: list[Event]) -> None:
        """One step of the Threshold Random Walk."""
        if ok:
            st.successes += 1
            st.llr += self._step_ok
            if st.llr <= self._lower:
                st.llr = 0.0  # benign so far: start the test afresh (Jung et al.)
        else:
            st.failures += 1
            st.llr += self._step_fail
        self._evaluate(st, ts, out)

    def _expire_pending(self, st: _Source, now: float, out: list[Event]) -> None:
        pending = st.pending
        while pending and pending[0][0] + PROBE_TIMEOUT <= now:
            _, key = pending.popleft()
            c = st.contacts.get(key)
            if c is not None and c.state == PENDING:
                c.state = FAILED
                self._walk(st, False, now, out)
        while len(pending) > 1024:
            pending.popleft()

    # -- verdicts ---------------------------------------------------------------------------
    def _evaluate(self, st: _Source, ts: float, out: list[Event]) -> None:
        if st.episode is not None:
            self._maybe_update(st, ts, out)
            return
        if st.probes < MIN_PROBES:
            return
        cfg = self.cfg
        rule = None
        if len(st.fast) >= cfg.ports_per_window and st.llr > self._lower:
            rule = "window"
        elif len(st.slow) >= cfg.slow_ports and st.llr > self._lower:
            rule = "slow-window"
        elif st.llr >= self._upper:
            rule = "trw"
        elif self._sweeps and any(len(h) >= cfg.sweep_hosts for h in st.sweep.values()):
            rule = "sweep"
        if rule is None:
            return
        self._episodes += 1
        sev = severity_for(self._port_count(st), cfg.ports_per_window)
        st.episode = _Episode(
            f"scan-{self._episodes}-{st.ip}-{st.first_probe:.0f}", rule, sev,
            self._port_count(st), st.first_probe, self.verified(st),
        )
        out.append(self._event(st, ts))

    def _maybe_update(self, st: _Source, ts: float, out: list[Event]) -> None:
        ep = st.episode
        if ep is None:
            return
        sev = severity_for(self._port_count(st), self.cfg.ports_per_window)
        verified = self.verified(st)
        if sev > ep.reported or (verified and not ep.verified):
            # Report growth, and the moment the source proves it is not spoofed.
            ep.reported = max(sev, ep.reported)
            ep.reported_count = self._port_count(st)
            ep.verified = verified
            out.append(self._event(st, ts))

    @staticmethod
    def _port_count(st: _Source) -> int:
        return len(st.contacts) + st.overflow if st.overflow else st.probes

    @staticmethod
    def verified(st: _Source) -> bool:
        """Whether the source's own probes prove it is not spoofed: most of the open ports it
        probed were connected to and torn down at once (a connect scan). An ordinary
        connection the address also made (a bystander framed by spoofed SYNs) does not count."""
        return st.aborted > 0 and st.aborted * 2 >= st.successes

    def scan_type(self, st: _Source) -> str:
        """The episode's scan type: the dominant probe kind; SYN probes whose handshakes the
        source completed and aborted make a ``connect`` scan."""
        if not st.kinds:
            return "unknown"
        kind = max(st.kinds.items(), key=lambda kv: kv[1])[0]
        if kind == "syn" and self.verified(st):
            return "connect"
        return kind

    def _event(self, st: _Source, ts: float) -> Event:
        ep = st.episode
        assert ep is not None
        count = self._port_count(st)
        duration = max(st.last_probe - st.first_probe, 0.0)
        slow = st.probes > 1 and duration / (st.probes - 1) >= SLOW_INTERVAL
        hosts = len(st.hosts)
        sweep = hosts >= self.cfg.sweep_hosts and len(st.ports) < hosts
        ports = sorted(st.ports)[:PORT_SAMPLE]
        scan_type = self.scan_type(st)
        detail = {
            "ip": st.ip,
            "type": scan_type,
            "severity": ep.reported.label,
            "port_count": count,
            "ports": ports,
            "host_count": hosts,
            "hosts": sorted(st.hosts)[:8],
            "probe_count": st.probes + st.overflow,
            "first_seen": st.first_probe,
            "last_seen": st.last_probe,
            "slow": slow,
            "sweep": sweep,
            "distributed": False,
            "verified": self.verified(st),
            "handshakes": {"completed": st.completed, "aborted": st.aborted},
            "rule": ep.rule,
            "kinds": dict(st.kinds),
            "answered": {"open": st.successes, "closed_or_silent": st.failures},
            "trw_llr": round(st.llr, 3),
        }
        dst = next(iter(st.hosts)) if hosts == 1 else None
        return Event(
            SCAN, ts, ep.reported, source_ip=st.ip, destination_ip=dst,
            transport="udp" if scan_type == "udp" else "tcp", detail=detail,
            techniques=SWEEP_TECHNIQUES if sweep else TECHNIQUES, episode=ep.id,
            message=(
                f"{'slow ' if slow else ''}{scan_type} scan from {st.ip}: {count} "
                + (f"contacts on {hosts} hosts" if hosts > 1 else "ports")
            ),
        )

    # -- distributed scans ------------------------------------------------------------------
    def _distributed(
        self, st: _Source, ts: float, dst: str, port: int, kind: str, out: list[Event]
    ) -> None:
        cfg = self.cfg
        tg = self.targets.get(dst)
        if tg is None:
            if len(self.targets) >= MAX_TARGETS:
                self.targets.popitem(last=False)
            tg = self.targets[dst] = _Target()
        else:
            self.targets.move_to_end(dst)
        tg.last_seen = ts
        tg.recent.append((ts, st.ip, port, kind))
        tg.by_source[st.ip] = tg.by_source.get(st.ip, 0) + 1
        tg.by_port[port] = tg.by_port.get(port, 0) + 1
        tg.kinds[kind] = tg.kinds.get(kind, 0) + 1
        while tg.recent and (tg.recent[0][0] < ts - cfg.slow_window or len(tg.recent) > 20000):
            _, old_src, old_port, old_kind = tg.recent.popleft()
            _decrement(tg.by_source, old_src)
            _decrement(tg.by_port, old_port)
            _decrement(tg.kinds, old_kind)
        if len(tg.by_source) < cfg.distributed_sources or len(tg.by_port) < cfg.distributed_ports:
            return
        # Only sources that are not scanners on their own make a distributed scan.
        quiet = [s for s in tg.by_source if (x := self.sources.get(s)) is None or x.episode is None]
        if len(quiet) < cfg.distributed_sources:
            return
        kind_top = max(tg.kinds.items(), key=lambda kv: kv[1])[0]
        count = len(tg.by_port)
        sev = severity_for(count, cfg.ports_per_window)
        if tg.episode is None:
            self._episodes += 1
            tg.episode = _Episode(f"scan-{self._episodes}-dist-{dst}-{ts:.0f}", "distributed",
                                  sev, count, tg.recent[0][0])
        elif sev <= tg.episode.reported:
            return
        tg.episode.reported = sev
        tg.episode.reported_count = count
        out.append(Event(
            SCAN, ts, sev, destination_ip=dst, transport="udp" if kind_top == "udp" else "tcp",
            detail={
                "ip": None, "type": kind_top, "severity": sev.label, "port_count": count,
                "ports": sorted(tg.by_port)[:PORT_SAMPLE], "first_seen": tg.episode.first_seen,
                "last_seen": ts, "slow": False, "sweep": False, "distributed": True,
                "verified": False, "rule": "distributed", "target": dst,
                "source_count": len(quiet), "sources": sorted(quiet)[:16],
            },
            techniques=TECHNIQUES, episode=tg.episode.id,
            message=f"distributed {kind_top} scan of {dst}: {len(quiet)} sources, {count} ports",
        ))

    # -- time passing -------------------------------------------------------------------------
    def flush(self, now: float) -> list[Event]:
        """Fail unanswered SYNs, close quiet episodes, forget sources idle past the timeout."""
        out: list[Event] = []
        gap = max(self.cfg.slow_window * 6, 1800.0)
        idle = self.cfg.idle_timeout
        for ip in list(self.sources):
            st = self.sources[ip]
            if st.pending:
                self._expire_pending(st, now, out)
            ep = st.episode
            if ep is not None and now - st.last_seen > gap:
                if self._port_count(st) != ep.reported_count:
                    ep.reported_count = self._port_count(st)
                    out.append(self._event(st, st.last_seen))
                del self.sources[ip]
            elif ep is None and now - st.last_seen > idle:
                del self.sources[ip]
        for dst in list(self.targets):
            if now - self.targets[dst].last_seen > idle:
                del self.targets[dst]
        return out

    def finish(self) -> list[Event]:
        """End of a replay: fail what is still unanswered and report every open episode's
        final state."""
        out: list[Event] = []
        for st in self.sources.values():
            self._expire_pending(st, st.last_seen + PROBE_TIMEOUT, out)
            ep = st.episode
            if ep is not None and self._port_count(st) != ep.reported_count:
                ep.reported_count = self._port_count(st)
                out.append(self._event(st, st.last_seen))
        return out


def _decrement(counter: dict[Any, int], key: Any) -> None:
    n = counter[key] - 1
    if n:
        counter[key] = n
    else:
        del counter[key]


def _quoted_probe(quoted: bytes, version: int) -> tuple[str, str, int, int] | None:
    """(src, dst, proto, dport) of the datagram quoted in an ICMP unreachable, if readable."""
    try:
        if version == 4:
            ihl = (quoted[0] & 15) * 4
            proto = quoted[9]
            src = str(ipaddress.IPv4Address(quoted[12:16]))
            dst = str(ipaddress.IPv4Address(quoted[16:20]))
            off = ihl
        else:
            proto = quoted[6]
            src = str(ipaddress.IPv6Address(quoted[8:24]))
            dst = str(ipaddress.IPv6Address(quoted[24:40]))
            off = 40
        if proto not in (TCP, UDP) or len(quoted) < off + 4:
            return None
        dport = int.from_bytes(quoted[off + 2:off + 4], "big")
        return src, dst, proto, dport
    except (IndexError, ValueError):
        return None
