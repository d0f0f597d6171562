"""``garrison run`` with a ``[honeypot]`` section starts the decoys; their visitors appear in
the NDJSON log as ``event.action = "honeypot"`` with ``source.ip``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.honeypot.conftest import complete_lines, wait_for
from tests.support.netns import DEFENDED_V4, OUTSIDE_V4, require_root_tools, topology

pytestmark = pytest.mark.root

CONFIG = """
log = "{log}"
db = ""
[honeypot]
ports = [2222, 8080]
services = {{ 8081 = "redis" }}
exclude = [80, 443]
[firewall]
backend = "none"
"""


def test_garrison_run_serves_decoys_and_logs_hits(tmp_path: Path) -> None:
    require_root_tools("curl")
    garrison = shutil.which("garrison", path=str(Path(sys.executable).parent))
    if garrison is None:
        pytest.skip("the garrison command is not installed in this environment")
    log = tmp_path / "events.ndjson"
    cfg = tmp_path / "garrison.toml"
    cfg.write_text(CONFIG.format(log=log))
    with topology(prefix="gh") as topo, open(tmp_path / "err", "wb") as err:
        proc = topo.popen(topo.defended, [garrison, "run", "--config", str(cfg)],
                          stdout=subprocess.DEVNULL, stderr=err)
        try:
            def answered() -> bool:
                if proc.poll() is not None:
                    raise AssertionError((tmp_path / "err").read_text())
                r = topo.run(topo.outside, ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w",
                                            "%{http_code}", f"http://{DEFENDED_V4}:8080/"],
                             check=False)
                return r.stdout == "200"

            wait_for(answered, 30.0, "the http decoy of garrison run")

            def logged() -> list[dict[str, object]]:
                if not log.exists():
                    return []
                docs = complete_lines(log.read_text())
                return [d for d in docs if d["event"]["action"] == "honeypot"]  # type: ignore[index]

            events = wait_for(logged, 15.0, "a honeypot event in the log")
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    event = events[0]
    assert event["source"]["ip"] == OUTSIDE_V4
    assert event["garrison"]["service"] == "http" and event["garrison"]["port"] == 8080
