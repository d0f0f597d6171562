"""Typed configuration: ``garrison.toml`` plus ``GARRISON_*`` environment overrides.

Every key has a default that works with no file at all. Unknown keys are errors. An error names
the key, the value it got and what was expected. Durations are seconds (a number) or strings
such as ``"10s"``, ``"5m"``, ``"1h"``, ``"2d"``.

Environment overrides use ``GARRISON_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``GARRISON_SCANNER__PORTS_PER_WINDOW=20``; top-level keys are ``GARRISON_<KEY>``
(``GARRISON_HOME_NET="198.51.100.0/24,2001:db8::/64"``). Values are parsed as TOML values when
they parse (numbers, booleans, arrays), else taken as strings; lists may be comma-separated.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong kind."""


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``"10s"``, ``"1.5m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '10s', '5m', '1h', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"expected a duration like '10s', '5m', '1h', got {value!r}")


def _parse_networks(value: Any) -> Any:
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(",")) if v]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of addresses or CIDRs, got {value!r}")
    nets = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected an address or CIDR string, got {item!r}")
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"expected an address or CIDR, got {item!r}") from None
    return nets


Duration = Annotated[float, BeforeValidator(parse_duration)]
Networks = Annotated[
    list[ipaddress.IPv4Network | ipaddress.IPv6Network], BeforeValidator(_parse_networks)
]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ScannerConfig(Section):
    """Port-scan detection. Times in seconds."""

    enabled: bool = True
    ports_per_window: int = Field(15, ge=2, description="distinct ports within `window` = scan")
    window: Duration = 10.0
    slow_ports: int = Field(25, ge=2, description="distinct ports within `slow_window` = scan")
    slow_window: Duration = 300.0
    idle_timeout: Duration = Field(6 * 3600.0, description="forget a quiet source after this")
    max_sources: int = Field(100_000, ge=16, description="LRU cap on tracked sources")
    sweep_hosts: int = Field(8, ge=2, description="home addresses on one port = sweep")
    distributed_sources: int = Field(8, ge=2, description="sources on one target = distributed")
    distributed_ports: int = Field(
        30, ge=4, description="distinct ports probed by those sources together"
    )
    trw_threshold: float = Field(
        0.99, gt=0.5, lt=1.0, description="TRW: confidence needed to call a source a scanner"
    )


class SensorConfig(Section):
    """Packet capture."""

    interfaces: list[str] = Field(default_factory=list, description="empty: all interfaces")
    snaplen: int = Field(256, ge=64, le=65535)
    ring_blocks: int = Field(64, ge=4)
    stats_interval: Duration = 30.0


def _port_list(value: Any) -> Any:
    """Ports as a list; from the environment a single port or a comma-separated string."""
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


Ports = Annotated[list[Annotated[int, Field(ge=1, le=65535)]], BeforeValidator(_port_list)]

HoneypotService = Literal[
    "ssh", "http", "ftp", "smtp", "telnet", "mysql", "postgresql", "redis", "elasticsearch",
    "vnc", "rdp", "tcp",
]


class HoneypotConfig(Section):
    """Decoy ports: listeners that look like real services; any touch is a high-severity event.

    ``ports`` guesses the service from the port number (2222 -> ssh, 8080 -> http, 2121 -> ftp;
    an unknown port gets a silent ``tcp`` catcher); ``services`` names it (``{2222 = "ssh"}``).
    ``auto`` adds commonly probed ports that nothing on this host uses or would want. Sizes in
    bytes, times in seconds.
    """

    enabled: bool = True
    ports: Ports = Field(default_factory=list)
    services: dict[Annotated[int, Field(ge=1, le=65535)], HoneypotService] = Field(
        default_factory=dict
    )
    auto: bool = False
    exclude: Ports = Field(default_factory=list)
    bind: list[str] = Field(default_factory=lambda: ["0.0.0.0", "::"])
    max_sessions: int = Field(512, ge=1, description="concurrent sessions, all sources")
    max_sessions_per_source: int = Field(
        32, ge=1, description="concurrent sessions per source address (IPv6: per /64)"
    )
    session_timeout: Duration = Field(30.0, description="hard limit on one session")
    idle_timeout: Duration = Field(10.0, description="close a session silent for this long")
    max_capture_bytes: int = Field(4096, ge=64, description="bytes of input kept as the sample")
    max_input_bytes: int = Field(65536, ge=256, description="bytes read before hanging up")
    events_per_source: int = Field(
        20, ge=1, description="events per source per `event_window`; the rest are counted"
    )
    event_window: Duration = 60.0
    max_sources: int = Field(10_000, ge=16, description="LRU cap on per-source bookkeeping")
    recheck_interval: Duration = Field(
        60.0, description="auto: how often to re-check that no real service wants our ports"
    )
    ssh_auth: bool = Field(
        True, description="SSH decoy completes key exchange and records logins (asyncssh)"
    )


class FirewallConfig(Section):
    """Blocking: which backend, for how long, and which addresses are never touched.

    Durations in seconds. Auto-blocks need evidence an off-path attacker cannot forge (a
    completed TCP handshake) unless ``block_unverified`` is set.
    """

    backend: Literal["nftables", "iptables", "none"] = "nftables"
    auto_block: bool = True
    block_duration: Duration = 3600.0
    allowlist: Networks = Field(default_factory=list)
    dry_run: bool = False
    block_unverified: bool = False
    set_only: bool = False
    table: str = Field("garrison", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
    auto_block_severity: Literal["low", "medium", "high", "critical"] = Field(
        "critical", description="an event at or above this severity blocks its actor"
    )
    auto_block_score: float = Field(
        0.15, ge=0.0, le=1.0, description="reputation at or below this (0..1) blocks the actor"
    )
    escalation: float = Field(
        4.0, ge=1.0, description="each repeat offence multiplies the duration by this"
    )
    max_block_duration: Duration = Field(7 * 86400.0, description="cap on escalated durations")
    never_block: Networks = Field(
        default_factory=list, description="gateway, DNS servers, partners: never blocked"
    )
    protect_system: bool = Field(
        True, description="also protect the default gateways and resolv.conf DNS servers"
    )
    priority: int = Field(-10, description="nftables hook priority (filter is 0: we go first)")


class ReputationConfig(Section):
    """Per-IP reputation: a score in 0..1 (0.5 unknown, lower is worse)."""

    half_life: Duration = 3600.0
    blocklists: list[str] = Field(default_factory=list)
    allowlist: Networks = Field(default_factory=list)
    max_ips: int = Field(100_000, ge=16)
    weights: dict[str, float] = Field(
        default_factory=dict, description="penalty per event kind (0..1), overrides built-ins"
    )
    blocklisted_score: float = Field(0.1, ge=0.0, le=1.0, description="score of a listed IP")
    history: int = Field(50, ge=1, le=10_000, description="events kept per IP in memory")
    campaign_window: Duration = Field(
        24 * 3600.0, description="kill-chain stages count only within this window"
    )


class AlertRule(Section):
    """Overrides for one event kind in the alert pipeline (unset keys use the defaults)."""

    enabled: bool = True
    cooldown: Duration | None = None
    min_severity: Literal["info", "low", "medium", "high", "critical"] | None = None
    webhook: bool = True


class AlertsConfig(Section):
    """Alert pipeline: dedupe, severity filter, handlers, signed webhooks."""

    cooldown: Duration = 10.0
    min_severity: Literal["info", "low", "medium", "high", "critical"] = "low"
    webhooks: list[str] = Field(default_factory=list)
    webhook_secret: str = ""
    webhook_timeout: Duration = 5.0
    webhook_retries: int = Field(8, ge=0, le=100, description="attempts after the first")
    webhook_backoff: Duration = Field(0.5, description="first retry delay; doubles each time")
    webhook_max_backoff: Duration = Field(60.0, description="cap on one retry delay")
    queue_size: int = Field(10_000, ge=1, description="pending alerts per handler before drops")
    max_keys: int = Field(100_000, ge=16, description="LRU cap on (kind, ip) cooldown keys")
    kinds: dict[str, AlertRule] = Field(default_factory=dict)


class ConnectionsConfig(Section):
    """Socket tables and known-bad destinations (network analytics)."""

    enabled: bool = True
    interval: Duration = Field(1.0, gt=0, description="seconds between socket-table polls")
    all_namespaces: bool = Field(True, description="read every network namespace's tables")
    announce: bool = Field(
        True, description="emit new-connection events (the flows feed the detectors either way)"
    )
    byte_counts: bool = Field(
        True, description="read per-socket byte counters (sock_diag) for exfil without capture"
    )
    known_bad: bool = Field(True, description="alert on suspicious ports and blocklisted IPs")
    suspicious_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, description="empty: the built-in list (4444, 5555, 6667, 31337, ...)"
    )


class DnsConfig(Section):
    """DNS tunnel detection. Scores are 0..1, sizes bytes, times seconds."""

    enabled: bool = True
    allowlist: list[str] = Field(default_factory=list, description="domains never scored")
    threshold: float = Field(0.7, gt=0, le=1, description="score that raises an alert")
    min_unique: int = Field(10, ge=1, description="unique names needed before any alert")
    unique_threshold: int = Field(50, ge=1, description="unique names per domain = full volume")
    budget_bytes: int = Field(4096, ge=64, description="bytes of unique names per domain")
    volume_threshold: int = Field(1000, ge=1, description="queries per domain = full volume")
    episode_timeout: Duration = Field(600.0, description="idle time that ends an episode")
    warmup: Duration = Field(3600.0, description="per-client baseline learning time")
    max_flows: int = Field(50_000, ge=16, description="LRU cap on (client, domain) pairs")


class ExfilConfig(Section):
    """Exfiltration sentinel. Sizes in bytes, rates bytes/s, times seconds."""

    enabled: bool = True
    upload_bytes_per_min: int = Field(10_000_000, ge=1024)
    burst_bytes: int = Field(65_536, ge=1024, description="one flow's upload that is a burst")
    burst_rate: float = Field(4096.0, gt=0, description="average upstream rate of a burst")
    asymmetric_bytes: int = Field(1_000_000, ge=1024)
    asymmetric_ratio: float = Field(20.0, gt=1)
    new_destinations: int = Field(50, ge=2, description="new destinations per minute")
    common_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, description="empty: the built-in list (80, 443, 22, ...)"
    )
    allowlist: Networks = Field(default_factory=list)
    warmup: Duration = Field(86_400.0, description="per-process baseline learning time")
    learn_factor: float = Field(1.5, ge=1.0, description="thresholds >= factor x learned peak")


class BeaconConfig(Section):
    """Beacon detection. Scores 0..1, times seconds."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, le=1)
    min_timing: float = Field(0.8, ge=0, le=1, description="timing regularity needed")
    min_connections: int = Field(20, ge=4)
    min_interval: Duration = Field(1.0, description="median interval below this = strobe")
    window: Duration = Field(3600.0, gt=0, description="observation span for coverage")
    allowlist: Networks = Field(default_factory=list)


class GarrisonConfig(Section):
    """The whole configuration."""

    home_net: Networks = Field(
        default_factory=list, description="defended addresses; empty: this host's own"
    )
    log: str = Field("garrison.ndjson", description="NDJSON event log path; '-' = stdout")
    db: str = Field("garrison.db", description="SQLite database path; '' disables persistence")
    scanner: ScannerConfig = Field(default_factory=ScannerConfig)
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    honeypot: HoneypotConfig = Field(default_factory=HoneypotConfig)
    firewall: FirewallConfig = Field(default_factory=FirewallConfig)
    reputation: ReputationConfig = Field(default_factory=ReputationConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    exfil: ExfilConfig = Field(default_factory=ExfilConfig)
    beacon: BeaconConfig = Field(default_factory=BeaconConfig)


def _format_errors(err: ValidationError, data: Mapping[str, Any], origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key {key!r} (value {e['input']!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{origin}: {key} = {e['input']!r}: {msg}")
    return "\n".join(lines)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("GARRISON_") or name in ("GARRISON_CONFIG",):
            continue
        path = [p.lower() for p in name[len("GARRISON_") :].split("__")]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(raw)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> GarrisonConfig:
    """Load the configuration.

    ``path`` None means ``$GARRISON_CONFIG`` or ``./garrison.toml`` when it exists, else
    defaults only. An explicit path that does not exist is an error.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is None and env.get("GARRISON_CONFIG"):
        path = env["GARRISON_CONFIG"]
    if path is None and Path("garrison.toml").is_file():
        path = "garrison.toml"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read: {exc}") from None
    overrides = _env_overrides(env)
    if overrides:
        origin = f"{origin} + environment"
    merged = _merge(data, overrides)
    try:
        return GarrisonConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, merged, origin)) from None
