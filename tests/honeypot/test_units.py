"""Pure parts of the honeypot: port plans, config, escaping, limits, protocol encoders."""

from __future__ import annotations

import struct
from typing import get_args

import pytest

from garrison.config import ConfigError, HoneypotConfig, HoneypotService, load_config
from garrison.events import HONEYPOT
from garrison.sensors.honeypot.catalog import AUTO_CANDIDATES, guess_service, plan_ports
from garrison.sensors.honeypot.limits import EventBudget, SessionLimiter, source_key
from garrison.sensors.honeypot.ports import choose_auto_ports, listeners
from garrison.sensors.honeypot.report import Visit, honeypot_event
from garrison.sensors.honeypot.services import (
    DECOYS,
    mysql,
    postgresql,
    rdp,
    redis,
    ssh,
    telnet,
)
from garrison.sensors.honeypot.session import Session
from garrison.sensors.honeypot.text import escape


def test_every_configurable_service_has_a_decoy() -> None:
    assert set(get_args(HoneypotService)) == set(DECOYS)


def test_service_guessed_from_port_and_overridden_by_services() -> None:
    assert [guess_service(p) for p in (2222, 8080, 2121, 12345)] == ["ssh", "http", "ftp", "tcp"]
    plan = plan_ports([2222, 8080, 2121, 80], {8081: "http", 2222: "telnet"}, exclude=[80])
    assert plan == {2121: "ftp", 2222: "telnet", 8080: "http", 8081: "http"}


def test_config_from_toml(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "garrison.toml"  # type: ignore[operator]
    path.write_text('[honeypot]\nports = [2222, 8080]\nservices = { 8081 = "http" }\n'
                    "auto = true\nexclude = [80, 443]\n")
    cfg = load_config(path, environ={}).honeypot
    assert cfg.ports == [2222, 8080] and cfg.services == {8081: "http"}
    assert cfg.auto and cfg.exclude == [80, 443]


@pytest.mark.parametrize("bad", ['services = { 2222 = "gopher" }', "ports = [0]",
                                 "ports = [70000]", 'services = { ssh = "ssh" }'])
def test_config_rejects_bad_values(tmp_path: pytest.TempPathFactory, bad: str) -> None:
    path = tmp_path / "garrison.toml"  # type: ignore[operator]
    path.write_text(f"[honeypot]\n{bad}\n")
    with pytest.raises(ConfigError, match="honeypot"):
        load_config(path, environ={})


def test_escape_makes_any_bytes_printable_and_bounded() -> None:
    assert escape(b"GET /\r\n\x00\x1b[31m\\") == "GET /\\r\\n\\x00\\x1b[31m\\\\"
    assert escape(bytes(range(256))).isprintable()
    assert escape(b"a" * 300, limit=10) == "a" * 10 + "..."


def test_source_key_groups_ipv6_by_64() -> None:
    assert source_key("203.0.113.5") == "203.0.113.5"
    assert source_key("2001:db8:2::1") == source_key("2001:db8:2::ffff") == "2001:db8:2::/64"
    assert source_key("::ffff:203.0.113.5") == "203.0.113.5"


def test_session_limiter_caps_per_source_and_total() -> None:
    lim = SessionLimiter(total=3, per_source=2)
    assert lim.acquire("a") == lim.acquire("a") == (True, None)
    assert lim.acquire("a") == (False, None)  # per-source cap
    assert lim.acquire("b") == (True, None)
    assert lim.acquire("b") == (False, None)  # total cap, and b would not be lighter than a
    lim.release("a")
    assert lim.acquire("c") == (True, None)
    assert lim.rejected == 2 and lim.active == 3 and lim.sources() == 3


def test_session_limiter_evicts_the_heaviest_source_for_a_newcomer() -> None:
    lim = SessionLimiter(total=4, per_source=4)
    for _ in range(4):
        assert lim.acquire("flood") == (True, None)
    assert lim.acquire("new") == (True, "flood")  # full, but flood holds more than its share
    assert lim.acquire("new2") == (True, "flood")
    lim.release("flood", evicted=True)
    lim.release("flood", evicted=True)
    assert lim.active == 4 and lim.evicted == 2
    assert lim.acquire("new") == (False, None)  # 2 vs 2: no one is heavier than new would be


def test_event_budget_counts_what_it_suppresses() -> None:
    budget = EventBudget(limit=2, window=60.0, max_sources=16)
    assert budget.admit("x", 0.0) == (True, 0)
    assert budget.admit("x", 1.0) == (True, 0)
    assert budget.admit("x", 2.0) == (False, 0)
    assert budget.admit("x", 3.0) == (False, 0)
    assert budget.admit("x", 61.0) == (True, 2)  # next window reports the two suppressed
    assert budget.suppressed_total == 2


def test_event_budget_memory_is_bounded() -> None:
    budget = EventBudget(limit=1, window=60.0, max_sources=16)
    for i in range(1000):
        budget.admit(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(budget) == 16


def test_proc_net_listeners_are_parsed(tmp_path: pytest.TempPathFactory) -> None:
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"  # noqa: E501
    (tmp_path / "tcp").write_text(head + (  # type: ignore[operator]
        "   0: 00000000:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000   0 0 111 1\n"
        "   1: 0100007F:0050 0200007F:D431 01 00000000:00000000 00:00000000 00000000   0 0 222 1\n"
    ))
    (tmp_path / "tcp6").write_text(head + (  # type: ignore[operator]
        "   0: 00000000000000000000000000000000:0CEA 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000   0 0 333 1\n"
    ))
    assert listeners(tmp_path) == {6379: {111}, 3306: {333}}  # port 80 is not LISTEN


def test_auto_skips_excluded_listening_wanted_and_unbindable_ports() -> None:
    chosen = choose_auto_ports(
        AUTO_CANDIDATES, exclude=[21], listening={23},
        bindable=lambda p: p != 2222, wanted=lambda p: p == 6379,
    )
    assert chosen == [p for p in AUTO_CANDIDATES if p not in (21, 23, 2222, 6379)]


def test_ssh_kexinit_is_a_well_formed_packet() -> None:
    pkt = ssh.kexinit_packet(bytes(16))
    length, pad = struct.unpack_from("!IB", pkt)
    assert len(pkt) == length + 4 and len(pkt) % 8 == 0 and pad >= 4
    payload = pkt[5 : 4 + length - pad]
    assert payload[0] == ssh.MSG_KEXINIT
    kex, hostkey = ssh.first_names(payload)
    assert kex.startswith(b"sntrup761x25519") and b"ssh-ed25519" in hostkey


def test_mysql_greeting_and_handshake_response() -> None:
    greeting = mysql.greeting(42, bytes(range(20)))
    assert int.from_bytes(greeting[:3], "little") == len(greeting) - 4
    assert greeting[4] == 10 and greeting[5:12] == b"8.0.36\x00"
    caps = struct.unpack_from("<H", greeting, 4 + 1 + 7 + 4 + 9)[0]
    assert not caps & 0x800  # no TLS offered
    body = (struct.pack("<IIB", 0x000FA68D, 1 << 24, 33) + bytes(23) + b"scott\x00"
            + bytes([20]) + bytes(20) + b"hr\x00")
    assert mysql.parse_response(body) == (b"scott", True, b"hr")
    denied = mysql.access_denied(b"sc'ott\x00", "203.0.113.9", True, 2)
    assert b"Access denied for user 'scott'@'203.0.113.9' (using password: YES)" in denied


def test_postgresql_messages() -> None:
    err = postgresql.unsupported_protocol(0xFF534D42)
    assert err[:1] == b"E" and struct.unpack_from("!I", err, 1)[0] == len(err) - 1
    assert b"unsupported frontend protocol 65363.19778" in err and b"L2194\x00" in err
    params = postgresql.startup_params(b"user\x00bob\x00database\x00db\x00\x00")
    assert params == {b"user": b"bob", b"database": b"db"}


def test_rdp_request_and_confirm() -> None:
    tpdu = b"\x2a\xe0\x00\x00\x00\x00\x00Cookie: mstshash=bob\r\n\x01\x00\x08\x00\x0b\x00\x00\x00"
    assert rdp.parse_request(tpdu) == (b"bob", 0x0B)
    assert rdp.parse_request(b"\x06\xe0\x00\x00\x00\x00\x00") == (None, None)
    with pytest.raises(ValueError):
        rdp.parse_request(b"\x02\xf0\x80\x00\x00\x00\x00")
    confirm = rdp.connection_confirm(1)
    assert confirm[:4] == b"\x03\x00\x00\x13" and confirm[-4:] == b"\x01\x00\x00\x00"
    assert rdp.connection_confirm(None) == b"\x03\x00\x00\x0b\x06\xd0\x00\x00\x12\x34\x00"


def test_telnet_options_are_stripped() -> None:
    assert telnet.strip_telnet(b"\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0ro\x00ot\xff\xff") == (
        b"root\xff"
    )


def test_redis_answers_like_redis() -> None:
    s = Session(None, None, service="redis", max_capture=64, max_input=64,  # type: ignore[arg-type]
                idle_timeout=1.0)
    assert redis.reply([b"PING"], s) == b"+PONG\r\n"
    assert redis.reply([b"GET", b"/", b"HTTP/1.0"], s) == (
        b"-ERR wrong number of arguments for 'get' command\r\n"
    )
    assert redis.reply([b"AUTH", b"pw"], s) is not None and s.credentials == [
        {"username": "default", "password": "pw"}
    ]
    assert redis.reply([b"QUIT"], s) is None
    assert redis.reply([b"FOO'\r\n"], s) == (
        b"-ERR unknown command 'FOO', with args beginning with: \r\n"
    )


def test_event_carries_the_contract_fields() -> None:
    s = Session(None, None, service="ftp", max_capture=64, max_input=64,  # type: ignore[arg-type]
                idle_timeout=1.0)
    s.banner = "vsftpd 3.0.3"
    s.sample += b"USER root\r\n"
    s.credential(b"root", b"toor")
    event = honeypot_event(
        Visit("203.0.113.7", 40000, "198.51.100.1", 21, 1700000000.5, 1.25, "eof", "hp-x-1"), s
    )
    doc = event.to_ecs()
    assert doc["event"]["action"] == HONEYPOT and doc["source"]["ip"] == "203.0.113.7"
    assert doc["destination"] == {"ip": "198.51.100.1", "port": 21}
    assert doc["network"]["transport"] == "tcp" and doc["log"]["level"] == "high"
    g = doc["garrison"]
    assert {k: g[k] for k in ("ip", "port", "service", "banner", "ts", "sample", "verified")} == {
        "ip": "203.0.113.7", "port": 21, "service": "ftp", "banner": "vsftpd 3.0.3",
        "ts": 1700000000.5, "sample": "USER root\\r\\n", "verified": True,
    }
    assert doc["threat"]["technique"]["id"] == ["T1046", "T1595", "T1110"]
    assert event.actor == "203.0.113.7"


def test_default_config_installs_nothing() -> None:
    from garrison.bus import EventBus
    from garrison.engine import Garrison
    from garrison.sensors.honeypot import install

    engine = Garrison(bus=EventBus())
    install(engine)
    assert engine.components == []
    engine.config.honeypot = HoneypotConfig(ports=[2222])
    install(engine)
    assert [c.name for c in engine.components] == ["honeypot"]


def test_ports_from_the_environment(tmp_path: pytest.TempPathFactory) -> None:
    empty = tmp_path / "garrison.toml"  # type: ignore[operator]
    empty.write_text("")
    env = {"GARRISON_HONEYPOT__PORTS": "2222,8080", "GARRISON_HONEYPOT__EXCLUDE": "80",
           "GARRISON_HONEYPOT__AUTO": "true"}
    cfg = load_config(empty, environ=env).honeypot
    assert (cfg.ports, cfg.exclude, cfg.auto) == ([2222, 8080], [80], True)
