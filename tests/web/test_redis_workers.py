"""Two uvicorn worker processes sharing one real Redis; Redis killed mid-run and brought back.

Real time and real processes here (no simulated clock): this is the end-to-end proof that state
is shared across workers, that a dead store means requests pass (fail open), and that
protection resumes by itself when the store returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import RedisServer, free_port, wait_for

APP = textwrap.dedent('''
    import os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from garrison.web import GarrisonMiddleware

    async def pid(request):
        return PlainTextResponse(str(os.getpid()))

    app = Starlette(routes=[Route("/pid", pid)])
    app.add_middleware(GarrisonMiddleware, store=os.environ["GARRISON_TEST_REDIS"],
                       trusted_proxies=["127.0.0.1"], rate=1.0, burst=10.0,
                       store_timeout=0.05)
''')


@pytest.fixture(params=["asyncio", "uvloop"])
def workers(request: pytest.FixtureRequest, redis_server: RedisServer,
            tmp_path: Path) -> Iterator[str]:
    """Two uvicorn workers on the event loop of the param: asyncio, and uvloop, which
    uvicorn[standard] installs (the Redis store once failed open on every request there)."""
    pytest.importorskip("uvicorn")
    loop = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    (tmp_path / "redisapp.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "GARRISON_TEST_REDIS": redis_server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "redisapp:app", "--app-dir", str(tmp_path),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-proxy-headers",
         "--no-access-log", "--log-level", "warning", "--loop", loop],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/pid", headers={"x-forwarded-for": "192.0.2.250"},
                             timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, what="uvicorn workers")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _get(base: str, ip: str) -> httpx.Response:
    # a fresh connection per request, so the kernel spreads them over both workers
    return httpx.get(base + "/pid", headers={"x-forwarded-for": ip, "connection": "close"},
                     timeout=5)


def test_two_workers_share_state_and_survive_redis_outage(workers: str,
                                                          redis_server: RedisServer) -> None:
    base = workers
    pids: set[str] = set()
    for i in range(200):
        pids.add(_get(base, f"198.51.100.{i % 250 + 1}").text)
        if len(pids) == 2:
            break
    assert len(pids) == 2, "both workers should serve requests"

    # One client floods; the limit (burst 10) holds across both workers, then escalates.
    codes = [_get(base, "203.0.113.50").status_code for _ in range(40)]
    allowed = codes.count(200)
    assert 10 <= allowed <= 13, codes  # unshared state would allow ~20
    after = [_get(base, "203.0.113.50") for _ in range(20)]
    assert all(r.status_code == 429 for r in after)
    assert {r.json()["reason"] for r in after} <= {"backoff", "throttle"}

    # Redis dies: everyone else keeps being served (fail open), quickly and without errors.
    redis_server.stop()
    outage = [_get(base, f"192.0.2.{i + 1}").status_code for i in range(30)]
    assert set(outage) == {200}

    # Redis returns (empty): protection resumes by itself.
    redis_server.start()
    deadline = time.monotonic() + 30
    resumed = False
    n = 0
    while time.monotonic() < deadline and not resumed:
        n += 1
        burst = [_get(base, f"203.0.113.{100 + n % 100}").status_code for _ in range(15)]
        resumed = 429 in burst
        if not resumed:
            time.sleep(0.5)
    assert resumed, "rate limiting never resumed after Redis came back"
