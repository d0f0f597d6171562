"""Real clients from the outside namespace talk to the decoys and get plausible answers; what
they sent comes back in the ``honeypot`` event."""

from __future__ import annotations

import shutil
import sys
from typing import Any

import pytest

from garrison.sensors.honeypot.services import ssh_auth_available
from tests.honeypot.conftest import Decoys
from tests.support.netns import DEFENDED_V4, DEFENDED_V6, OUTSIDE_V4, OUTSIDE_V6

pytestmark = pytest.mark.root


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (installed by scripts/setup)")


def event_for(decoys: Decoys, port: int, has: str, ip: str = OUTSIDE_V4) -> dict[str, Any]:
    """The honeypot event from ``ip`` on ``port`` whose garrison object mentions ``has``."""
    return decoys.wait_event(
        lambda e: e["event"]["action"] == "honeypot" and e["source"]["ip"] == ip
        and e["destination"]["port"] == port and has in str(e["garrison"])
    )["garrison"]


def test_curl_gets_apache_default_page(decoys: Decoys) -> None:
    need("curl")
    r = decoys.outside(["curl", "-sS", "-i", "-m", "10", "-A", "probe/1.0",
                        f"http://{DEFENDED_V4}/"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200 OK")
    assert "Server: Apache/2.4.62 (Debian)" in r.stdout
    assert "Apache2 Debian Default Page" in r.stdout
    g = event_for(decoys, 80, "probe/1.0")
    assert g["session"]["request"] == "GET / HTTP/1.1"
    assert g["session"]["headers"]["user-agent"] == "probe/1.0"


def test_curl_over_ipv6_gets_404_and_login_failure(decoys: Decoys) -> None:
    need("curl")
    r = decoys.outside(["curl", "-sS", "-i", "-m", "10", f"http://[{DEFENDED_V6}]:8080/.env"])
    assert r.stdout.startswith("HTTP/1.1 404 Not Found") and "<h1>Not Found</h1>" in r.stdout
    r = decoys.outside(["curl", "-sS", "-i", "-m", "10", "-d", "username=admin&password=pw1",
                        f"http://[{DEFENDED_V6}]:8080/admin/"])
    assert r.stdout.startswith("HTTP/1.1 401") and "Invalid username or password" in r.stdout
    g = event_for(decoys, 8080, "pw1", ip=OUTSIDE_V6)
    assert g["credentials"] == [{"username": "admin", "password": "pw1"}]


def test_redis_cli_ping_info_and_config_set(decoys: Decoys) -> None:
    need("redis-cli")
    base = ["redis-cli", "-h", DEFENDED_V4, "-p", "6379"]
    assert decoys.outside([*base, "ping"]).stdout.strip() == "PONG"
    info = decoys.outside([*base, "info", "server"]).stdout
    assert "redis_version:7.0.15" in info
    r = decoys.outside([*base, "config", "set", "dir", "/root/.ssh"])
    assert r.stdout.strip() == "OK"
    g = event_for(decoys, 6379, "/root/.ssh")
    assert "config set dir /root/.ssh" in g["commands"]


def test_ssh_client_sees_openssh_and_is_denied(decoys: Decoys) -> None:
    need("ssh")
    r = decoys.outside(["ssh", "-v", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        f"root@{DEFENDED_V4}", "true"])
    assert r.returncode != 0
    assert "remote software version OpenSSH_9.2p1 Debian-2+deb12u6" in r.stderr
    if ssh_auth_available():  # asyncssh: a full key exchange, then no way in
        assert "Permission denied (publickey,password)" in r.stderr
        g = event_for(decoys, 22, "'username': 'root'")
    else:  # without it the decoy hangs up after the algorithm offer
        assert "SSH2_MSG_KEXINIT received" in r.stderr
        g = event_for(decoys, 22, "client_version")
    assert g["session"]["client_version"].startswith("SSH-2.0-OpenSSH")


SSH_PASSWORD_CLIENT = """
import asyncio, sys, asyncssh
async def main():
    try:
        async with asyncssh.connect(sys.argv[1], 22, username="oracle", password="Welcome1",
                                    known_hosts=None, connect_timeout=10):
            print("logged in")
    except asyncssh.PermissionDenied:
        print("permission denied")
asyncio.run(main())
"""


def test_ssh_password_attempt_is_recorded(decoys: Decoys) -> None:
    if not ssh_auth_available():
        pytest.skip("needs asyncssh (the honeypot extra) for SSH login capture")
    r = decoys.outside([sys.executable, "-c", SSH_PASSWORD_CLIENT, DEFENDED_V4])
    assert r.stdout.strip() == "permission denied", r.stderr
    g = event_for(decoys, 22, "Welcome1")
    assert g["credentials"] == [{"username": "oracle", "password": "Welcome1"}]


def test_mysql_client_is_denied(decoys: Decoys) -> None:
    need("mysql")
    r = decoys.outside(["mysql", "-h", DEFENDED_V4, "-P", "3306", "-u", "backup",
                        "-pS3cret", "--connect-timeout=10", "-e", "select 1"])
    assert r.returncode != 0
    assert f"Access denied for user 'backup'@'{OUTSIDE_V4}' (using password: YES)" in r.stderr
    g = event_for(decoys, 3306, "backup")
    assert g["credentials"] == [{"username": "backup"}]
    assert g["session"]["password_sent"] is True


def test_psql_password_is_refused(decoys: Decoys) -> None:
    need("psql")
    r = decoys.outside(["env", "PGPASSWORD=hunter2", "PGCONNECT_TIMEOUT=10", "psql", "-h",
                        DEFENDED_V4, "-U", "postgres", "-d", "prod", "-c", "select 1"])
    assert r.returncode != 0
    assert 'password authentication failed for user "postgres"' in r.stderr
    g = event_for(decoys, 5432, "hunter2")
    assert g["credentials"] == [{"username": "postgres", "password": "hunter2"}]
    assert g["session"]["database"] == "prod"


def test_ftp_login_fails(decoys: Decoys) -> None:
    need("ftp")
    r = decoys.outside(["ftp", "-n", "-v", DEFENDED_V4], input="user admin ftp123\nquit\n")
    assert "220 (vsFTPd 3.0.3)" in r.stdout
    assert "530 Login incorrect." in r.stdout
    g = event_for(decoys, 21, "ftp123")
    assert {"username": "admin", "password": "ftp123"} in g["credentials"]
    assert "PASS ****" in g["commands"]


def test_telnet_login_fails(decoys: Decoys) -> None:
    need("ncat")
    # ncat speaks raw TCP: answer the option requests by refusing them, then log in.
    r = decoys.outside(
        ["ncat", "-i", "3", DEFENDED_V4, "23"],
        input="\xff\xfc\x18\xff\xfc\x20\xff\xfc\x23\xff\xfc\x27root\r\nadmin123\r\n",
    )
    assert "login:" in r.stdout and "Login incorrect" in r.stdout
    g = event_for(decoys, 23, "admin123")
    assert {"username": "root", "password": "admin123"} in g["credentials"]
    assert "T1110" not in str(g)  # techniques live in threat.*, not garrison.*


def test_telnet_client_gets_login_prompt(decoys: Decoys) -> None:
    need("telnet")
    r = decoys.outside(["sh", "-c", f"(sleep 1; printf 'guest\\r\\n'; sleep 1; "
                        f"printf 'guest\\r\\n'; sleep 1) | telnet {DEFENDED_V4} 23"])
    assert "Debian GNU/Linux 12" in r.stdout and "login:" in r.stdout
    g = event_for(decoys, 23, "guest")
    assert {"username": "guest", "password": "guest"} in g["credentials"]


def test_smtp_dialogue_refuses_relay(decoys: Decoys) -> None:
    need("ncat")
    r = decoys.outside(["ncat", "-i", "3", DEFENDED_V4, "25"], input=(
        "EHLO spam.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<victim@example.org>\r\n"
        "DATA\r\nQUIT\r\n"))
    assert r.stdout.startswith("220 mail.internal ESMTP Postfix (Debian/GNU)")
    assert "554 5.7.1 <unknown>: Relay access denied" in r.stdout
    g = event_for(decoys, 25, "victim@example.org")
    assert g["commands"][:3] == [
        "EHLO spam.example", "MAIL FROM:<a@spam.example>", "RCPT TO:<victim@example.org>",
    ]


def test_elasticsearch_root_and_unknown_index(decoys: Decoys) -> None:
    need("curl")
    r = decoys.outside(["curl", "-sS", "-m", "10", f"http://{DEFENDED_V4}:9200/"])
    assert '"tagline" : "You Know, for Search"' in r.stdout
    r = decoys.outside(["curl", "-sS", "-m", "10", f"http://{DEFENDED_V4}:9200/customers/_search"])
    assert "index_not_found_exception" in r.stdout
    event_for(decoys, 9200, "/customers/_search")


def test_vnc_auth_fails(decoys: Decoys) -> None:
    need("ncat")
    r = decoys.outside(["ncat", "-i", "3", DEFENDED_V4, "5900"],
                       input="RFB 003.008\n\x02" + "A" * 16)
    assert r.stdout.startswith("RFB 003.008\n\x01\x02")
    assert r.stdout.endswith("Authentication failed")
    g = event_for(decoys, 5900, "auth_attempted")
    assert g["session"]["client_version"] == "RFB 003.008"


def test_rdp_connection_request_gets_a_confirm(decoys: Decoys) -> None:
    need("ncat")
    cookie = "Cookie: mstshash=administrator\r\n"
    neg = "\x01\x00\x08\x00\x03\x00\x00\x00"  # RDP_NEG_REQ: TLS | CredSSP
    tpdu = "\xe0\x00\x00\x00\x00\x00" + cookie + neg
    packet = "\x03\x00\x00" + chr(4 + 1 + len(tpdu)) + chr(len(tpdu)) + tpdu
    r = decoys.outside(["ncat", "-i", "2", DEFENDED_V4, "3389"], input=packet)
    # TPKT + X.224 Connection Confirm + RDP_NEG_RSP choosing CredSSP, as Windows answers.
    assert r.stdout == (
        "\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x1f\x08\x00\x02\x00\x00\x00"
    )
    g = event_for(decoys, 3389, "administrator")
    assert g["credentials"] == [{"username": "administrator"}]
    assert g["session"]["requested_protocols"] == 3


def test_hostile_bytes_are_escaped_in_the_event(decoys: Decoys) -> None:
    need("ncat")
    payload = "*1\r\n$20\r\n\x1b[2J\x00$(reboot);`id`\n\r\n"
    decoys.outside(["ncat", "-i", "2", DEFENDED_V4, "6379"], input=payload)
    g = event_for(decoys, 6379, "reboot")
    assert "\\x1b[2J\\x00$(reboot);`id`\\n" in g["commands"][0]
    assert all(ch.isprintable() for ch in g["sample"])
