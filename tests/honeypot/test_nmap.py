"""``nmap -sV`` from the outside namespace names every decoy as the service it pretends to be.

One nmap run per address family (shared by the parametrised tests) keeps CI time down.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.honeypot.conftest import Decoys
from tests.support.netns import DEFENDED_V4, DEFENDED_V6, OUTSIDE_V4

pytestmark = pytest.mark.root

#: port -> (nmap service name, nmap product) a real server of that kind gets.
EXPECTED = {
    21: ("ftp", "vsftpd"),
    22: ("ssh", "OpenSSH"),
    23: ("telnet", "Linux telnetd"),
    25: ("smtp", "Postfix smtpd"),
    80: ("http", "Apache httpd"),
    3306: ("mysql", "MySQL"),
    3389: ("ms-wbt-server", "Microsoft Terminal Services"),
    5432: ("postgresql", "PostgreSQL DB"),
    5900: ("vnc", "VNC"),
    6379: ("redis", "Redis key-value store"),
    9200: ("http", "Elasticsearch REST API"),
    2222: ("ssh", "OpenSSH"),
    8080: ("http", "Apache httpd"),
}
V6_PORTS = (22, 80, 3306, 6379)


def scan(decoys: Decoys, target: str, ports: list[int], *extra: str) -> dict[int, dict[str, str]]:
    if shutil.which("nmap") is None:
        pytest.skip("needs nmap (installed by scripts/setup)")
    r = decoys.outside(
        ["nmap", "-sV", "-Pn", "-n", "-T4", *extra, "-p", ",".join(map(str, ports)),
         "-oX", "-", target],
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    found: dict[int, dict[str, str]] = {}
    for port in ET.fromstring(r.stdout).iter("port"):
        state = port.find("state")
        service = port.find("service")
        found[int(port.get("portid", "0"))] = {
            "state": state.get("state", "") if state is not None else "",
            "name": service.get("name", "") if service is not None else "",
            "product": service.get("product", "") if service is not None else "",
            "version": service.get("version", "") if service is not None else "",
        }
    return found


@pytest.fixture(scope="module")
def nmap_v4(decoys: Decoys) -> dict[int, dict[str, str]]:
    return scan(decoys, DEFENDED_V4, sorted(EXPECTED))


@pytest.fixture(scope="module")
def nmap_v6(decoys: Decoys) -> dict[int, dict[str, str]]:
    return scan(decoys, DEFENDED_V6, list(V6_PORTS), "-6")


@pytest.mark.parametrize("port", sorted(EXPECTED))
def test_nmap_names_the_decoy(nmap_v4: dict[int, dict[str, Any]], port: int) -> None:
    name, product = EXPECTED[port]
    got = nmap_v4[port]
    assert got["state"] == "open"
    assert (got["name"], got["product"]) == (name, product), got


@pytest.mark.parametrize("port", V6_PORTS)
def test_nmap_over_ipv6(nmap_v6: dict[int, dict[str, Any]], port: int) -> None:
    name, product = EXPECTED[port]
    assert (nmap_v6[port]["name"], nmap_v6[port]["product"]) == (name, product)


def test_scan_becomes_honeypot_events(decoys: Decoys, nmap_v4: dict[int, Any]) -> None:
    """Every probed decoy reported the scanner, with the ECS fields the log promises."""
    seen = {
        e["destination"]["port"]
        for e in decoys.events()
        if e["event"]["action"] == "honeypot" and e["source"]["ip"] == OUTSIDE_V4
    }
    assert set(EXPECTED) <= seen
    event = decoys.wait_event(lambda e: e["destination"]["port"] == 3306)
    assert event["event"]["severity"] == 73  # HIGH
    assert event["network"]["transport"] == "tcp"
    assert "T1046" in event["threat"]["technique"]["id"]
    g = event["garrison"]
    assert g["service"] == "mysql" and g["ip"] == OUTSIDE_V4 and g["verified"] is True
    assert g["banner"] == "MySQL 8.0.36" and isinstance(g["sample"], str)
