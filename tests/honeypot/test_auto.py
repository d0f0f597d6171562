"""``auto = true`` in a namespace: commonly probed ports that are free are taken; ports a real
service listens on (IPv4 or IPv6 only), excluded ports and ports whose daemon is installed on
this host are left alone, and the real services keep answering."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from garrison.sensors.honeypot import AUTO_CANDIDATES
from garrison.sensors.honeypot.ports import installed
from tests.honeypot.conftest import Decoys, start_decoys, stop_decoys, wait_for
from tests.support.netns import DEFENDED_V4, DEFENDED_V6, require_root_tools, topology

pytestmark = pytest.mark.root

REAL_SERVICE = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"real service\\n")
    c.close()
"""


@pytest.fixture(scope="module")
def auto_decoys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decoys]:
    require_root_tools("ncat")
    workdir = tmp_path_factory.mktemp("honeypot-auto")
    with topology(prefix="gh") as topo:
        real = []
        for addr, port in (("0.0.0.0", 2222), ("::", 8080)):
            p = topo.popen(topo.defended, [sys.executable, "-c", REAL_SERVICE, addr, str(port)],
                           stdout=subprocess.PIPE)
            assert p.stdout is not None and p.stdout.readline() == b"listening\n"
            real.append(p)
        d = start_decoys(topo, {"auto": True, "exclude": [21], "recheck_interval": 0}, workdir)
        try:
            yield d
        finally:
            stop_decoys(d)
            for p in real:
                p.kill()
                p.wait(timeout=10)


def test_auto_takes_only_free_unwanted_ports(auto_decoys: Decoys) -> None:
    expected = [p for p in AUTO_CANDIDATES if p not in (21, 2222, 8080) and not installed(p)]
    assert expected, "every candidate is wanted on this host: nothing to check"
    assert sorted(auto_decoys.services) == expected


def test_real_services_keep_their_ports(auto_decoys: Decoys) -> None:
    r = auto_decoys.outside(["ncat", "-i", "2", DEFENDED_V4, "2222"])
    assert r.stdout == "real service\n"
    r = auto_decoys.outside(["ncat", "-i", "2", DEFENDED_V6, "8080"])
    assert r.stdout == "real service\n"


def test_auto_decoys_answer_over_both_families(auto_decoys: Decoys) -> None:
    port = next(p for p, s in auto_decoys.services.items() if s in ("telnet", "ftp", "mysql",
                                                                   "vnc"))
    for target in (DEFENDED_V4, DEFENDED_V6):
        r = auto_decoys.outside(["ncat", "-i", "2", target, str(port)], input="")
        assert r.stdout, f"no greeting from auto decoy on [{target}]:{port}"
    wait_for(lambda: len([e for e in auto_decoys.events()
                          if e["destination"]["port"] == port]) >= 2, 15, "two events")
