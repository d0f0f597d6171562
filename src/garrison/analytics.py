"""Network analytics, wired into an engine: DNS tunnels, exfiltration, beacons, known-bad
destinations, and the connection sensor that names the process behind a flow.

``install(engine)`` reads ``engine.config`` (sections ``dns``, ``exfil``, ``beacon``,
``connections`` and ``home_net``) and adds the detectors and the sensor. The packet detectors
say which packets they need in ``packet_filter`` (``"dns"`` or ``"all"``); the live packet
sensor compiles its BPF filter from those. In a replay components are not started, so only the
detectors run.

Actors (``detail["ip"]``, what reputation and the kill chain attribute an alert to): for DNS
tunnels the client (an outside client using our server as its tunnel end, or one of our hosts,
then the compromised party: the resolver it asks is not the adversary and must not be blocked);
for exfil, beacons and known-bad destinations the remote address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from garrison.detect.beacon import BeaconDetector
from garrison.detect.dns_tunnel import DnsTunnelDetector
from garrison.detect.exfil import COMMON_PORTS, ExfilDetector
from garrison.detect.homenet import HomeNet
from garrison.detect.known_bad import DEFAULT_SUSPICIOUS_PORTS, Blocklist, KnownBadDetector
from garrison.engine import Garrison
from garrison.sensors.connections import ConnectionSensor, SocketTable

log = logging.getLogger("garrison.analytics")


def _blocklist(engine: Garrison) -> Blocklist | None:
    """The engine's blocklists: a ``services["blocklists"]`` object (a container of address
    strings, a callable, or the correlator's ``Blocklists``), else ``reputation.blocklists``
    files loaded here. None when there are none."""
    svc: Any = engine.services.get("blocklists")
    if svc is None and engine.config.reputation.blocklists:
        try:
            from garrison.correlate.blocklist import Blocklists

            svc = Blocklists.from_files(engine.config.reputation.blocklists)
        except (ImportError, OSError, ValueError) as exc:
            log.error("cannot load blocklists for known-bad destinations: %s", exc)
            return None
    if svc is None:
        return None
    match: Callable[[Any], Any] | None = getattr(svc, "match", None)
    if match is not None:
        def listed(ip: str) -> bool:
            try:
                return bool(match(ipaddress.ip_address(ip)))
            except ValueError:
                return False

        return listed
    return svc  # type: ignore[no-any-return]  # a callable or a container of addresses


def install(engine: Garrison) -> None:
    """Add the network analytics to ``engine`` according to its configuration."""
    cfg = engine.config
    home = HomeNet(cfg.home_net)
    if cfg.dns.enabled:
        d = cfg.dns
        engine.add_detector(DnsTunnelDetector(
            home, allowlist=d.allowlist, threshold=d.threshold, min_unique=d.min_unique,
            unique_threshold=d.unique_threshold, budget_bytes=d.budget_bytes,
            volume_threshold=d.volume_threshold, episode_timeout=d.episode_timeout,
            warmup=d.warmup, max_flows=d.max_flows,
        ))
    if cfg.exfil.enabled:
        x = cfg.exfil
        engine.add_detector(ExfilDetector(
            home, upload_bytes_per_min=x.upload_bytes_per_min, burst_bytes=x.burst_bytes,
            burst_rate=x.burst_rate, asymmetric_bytes=x.asymmetric_bytes,
            asymmetric_ratio=x.asymmetric_ratio, new_destinations=x.new_destinations,
            common_ports=x.common_ports or COMMON_PORTS, allowlist=x.allowlist,
            warmup=x.warmup, learn_factor=x.learn_factor,
        ))
    if cfg.beacon.enabled:
        b = cfg.beacon
        engine.add_detector(BeaconDetector(
            home, allowlist=b.allowlist, threshold=b.threshold, min_timing=b.min_timing,
            min_connections=b.min_connections, min_interval=b.min_interval, window=b.window,
        ))
    c = cfg.connections
    if c.known_bad:
        engine.add_detector(KnownBadDetector(
            home, ports=c.suspicious_ports or DEFAULT_SUSPICIOUS_PORTS,
            blocklist=_blocklist(engine),
        ))
    if c.enabled:
        engine.add_component(ConnectionSensor(
            c.interval, SocketTable(all_namespaces=c.all_namespaces), announce=c.announce,
            byte_counts=c.byte_counts,
        ))
