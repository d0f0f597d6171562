"""Configuration: defaults with no file, TOML, environment overrides, clear errors."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from garrison.config import ConfigError, load_config, parse_duration


def test_defaults_work_with_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={})
    assert cfg.scanner.ports_per_window == 15
    assert cfg.scanner.window == 10.0
    assert cfg.scanner.slow_ports == 25
    assert cfg.scanner.slow_window == 300.0
    assert cfg.home_net == []  # empty: the daemon fills in this host's addresses
    assert cfg.db == "garrison.db"


def test_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "garrison.toml"
    f.write_text(
        'home_net = ["198.51.100.0/24", "2001:db8:1::/64"]\n'
        "[scanner]\nports_per_window = 20\nwindow = \"1m\"\n"
    )
    cfg = load_config(f, environ={"GARRISON_SCANNER__SLOW_WINDOW": "2h",
                                  "GARRISON_SCANNER__PORTS_PER_WINDOW": "30"})
    assert cfg.home_net == [ipaddress.ip_network("198.51.100.0/24"),
                            ipaddress.ip_network("2001:db8:1::/64")]
    assert cfg.scanner.window == 60.0
    assert cfg.scanner.ports_per_window == 30  # environment wins over the file
    assert cfg.scanner.slow_window == 7200.0


def test_environment_lists_and_config_path(tmp_path: Path) -> None:
    f = tmp_path / "other.toml"
    f.write_text("[scanner]\nslow_ports = 40\n")
    cfg = load_config(environ={"GARRISON_CONFIG": str(f),
                               "GARRISON_HOME_NET": "198.51.100.1, 2001:db8::1"})
    assert cfg.scanner.slow_ports == 40
    assert [str(n) for n in cfg.home_net] == ["198.51.100.1/32", "2001:db8::1/128"]


@pytest.mark.parametrize(
    ("toml", "needles"),
    [
        ("[scanner]\nwindow = \"ten seconds\"\n", ["scanner.window", "'ten seconds'", "duration"]),
        ("[scanner]\nports_per_window = \"many\"\n", ["scanner.ports_per_window", "'many'",
                                                      "integer"]),
        ("[scanner]\nports_per_window = 1\n", ["scanner.ports_per_window", "1", "greater"]),
        ("home_net = [\"not-an-ip\"]\n", ["home_net", "not-an-ip", "CIDR"]),
        ("[scanner]\nport_per_window = 3\n", ["unknown key", "scanner.port_per_window"]),
        ("bogus = 1\n", ["unknown key", "bogus"]),
        ("[firewall]\nbackend = \"pf\"\n", ["firewall.backend", "'pf'", "nftables"]),
    ],
)
def test_bad_file_names_key_value_and_expectation(
    tmp_path: Path, toml: str, needles: list[str]
) -> None:
    f = tmp_path / "garrison.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    for needle in needles:
        assert needle in str(err.value)
    assert str(f) in str(err.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "garrison.toml"
    f.write_text("[scanner\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_bad_environment_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"environment.*scanner\.window"):
        load_config(environ={"GARRISON_SCANNER__WINDOW": "soon"})


def test_durations() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("1.5m") == 90
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration(5) == 5
    for bad in ("-1s", "s", "10 parsecs", True, -3):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_reports_config_errors_plainly(tmp_path: Path) -> None:
    f = tmp_path / "garrison.toml"
    f.write_text("[scanner]\nwindow = \"x\"\n")
    r = subprocess.run([sys.executable, "-m", "garrison.cli", "replay", "--config", str(f),
                        "/dev/null"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "configuration error" in r.stderr and "scanner.window" in r.stderr
    assert "Traceback" not in r.stderr
