"""Benchmark of the web middleware: a minimal ASGI app with and without GarrisonMiddleware.

Same server (uvicorn, one worker), same load generator (wrk), same run: the bare app, the
middleware on ``memory://`` and the middleware on a real ``redis-server`` started here on a free
loopback port. wrk sends ``X-Forwarded-For`` from 10,000 client addresses through a trusted proxy
(127.0.0.1), so the limiter, the session binding and the scorer all do their full work. Reports
requests/s, p50/p99 latency and the ratio to the bare app, plus memory per tracked IP and session
(tracemalloc), and writes them to ``docs/benchmarks/web.md``.

Run: ``.venv/bin/python benchmarks/bench_web.py [--duration 10] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (the script's folder)

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("asgi", "starlette")
"""``asgi``: a raw ASGI callable (harshest baseline); ``starlette``: a one-route Starlette app."""
VARIANTS = ("bare", "memory", "redis", "slowapi")
"""``slowapi``: a peer tool for comparison (Starlette only; ``pip install -e '.[bench]'``):
SlowAPI's pure-ASGI middleware limiting each ``X-Forwarded-For`` address in memory, a rate
limiter alone, with no scoring, sessions or hijack detection."""

APP = textwrap.dedent('''
    import os

    async def bare(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    variant = os.environ["BENCH_VARIANT"]
    app = bare
    if os.environ["BENCH_FRAMEWORK"] == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def home(request):
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/", home)])
    if variant == "slowapi":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIASGIMiddleware

        def client_key(request):
            return request.headers.get("x-forwarded-for") or request.client.host

        app.state.limiter = Limiter(key_func=client_key, default_limits=["600/minute"])
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.add_middleware(SlowAPIASGIMiddleware)
    elif variant != "bare":
        from garrison.bus import EventBus
        from garrison.web import GarrisonMiddleware
        app = GarrisonMiddleware(app, store=os.environ["BENCH_STORE"], bus=EventBus(),
                                 trusted_proxies=["127.0.0.1"], store_timeout=0.2)
''')

WRK_SCRIPT = textwrap.dedent('''
    math.randomseed(7)
    request = function()
      -- 10,000 clients; each session cookie stays with its client (two clients per session,
      -- both in the same /24, so no "impossible travel").
      local i = math.random(0, 9999)
      local ip = "10.0." .. math.floor(i / 250) .. "." .. (i % 250 + 1)
      local sess = "session=s" .. math.floor(i / 2)
      return wrk.format("GET", "/", {["X-Forwarded-For"] = ip, ["Cookie"] = sess})
    end
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/s and p50/p99 latency (seconds) from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"cannot parse wrk output:\n{text}")
    return {
        "rps": float(rps.group(1)),
        "p50": _seconds(p50.group(1), p50.group(2)),
        "p99": _seconds(p99.group(1), p99.group(2)),
        "requests": float(total.group(1)),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run_variant(framework: str, variant: str, store: str, workdir: Path, duration: int,
                connections: int) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_STORE": store,
           "BENCH_FRAMEWORK": framework}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchapp:app", "--app-dir", str(workdir),
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
         "warning", "--no-proxy-headers"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        script = workdir / "clients.lua"
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["wrk", "-t1", "-c", str(connections), "-d2s", "-s", str(script), url],
                       check=True, capture_output=True, timeout=60)  # warm-up
        out = subprocess.run(
            ["wrk", "-t1", "-c", str(connections), f"-d{duration}s", "--latency", "-s",
             str(script), url],
            check=True, capture_output=True, text=True, timeout=duration + 60,
        ).stdout
        return parse_wrk(out)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def memory_per_key(n: int = 20_000) -> dict[str, float]:
    """Bytes of engine + store state per tracked IP and per tracked session (tracemalloc)."""
    sys.path.insert(0, str(ROOT / "src"))
    from garrison.bus import EventBus
    from garrison.store.base import CheckRequest
    from garrison.web.engine import WebEngine
    from garrison.web.options import WebOptions

    def build(with_sessions: bool) -> float:
        eng = WebEngine(WebOptions(bus=EventBus(), max_ips=n * 2, max_sessions=n * 2))
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t = 1_800_000_000.0
        for i in range(n):
            ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
            headers = {"cookie": f"session=s{i}"} if with_sessions else {}
            client = eng.identify(ip, headers)
            for k in range(10):
                pre = eng.precheck(client, t + k)
                if isinstance(pre, CheckRequest):
                    eng.decide(client, eng.store.check(pre), t + k)
                eng.after(client, f"/p{k}", 200, 1000, t + k)
        eng.drain()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return used / n

    ip_only = build(False)
    both = build(True)
    return {"ip": ip_only, "session": both - ip_only}


def inprocess_cost(n: int = 30_000) -> dict[str, float]:
    """Microseconds per request the middleware adds on the ASGI path, measured in-process
    (no server, no sockets; memory store): the part of the server's time that is ours."""
    import asyncio
    import random

    sys.path.insert(0, str(ROOT / "src"))
    from garrison.bus import EventBus
    from garrison.web import GarrisonMiddleware

    async def bare(scope: dict[str, object], receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    rng = random.Random(7)
    scopes = []
    for _ in range(n):
        i = rng.randrange(10_000)
        scopes.append({
            "type": "http", "method": "GET", "path": "/", "query_string": b"",
            "client": ("127.0.0.1", 5000),
            "headers": [(b"host", b"bench"), (b"user-agent", b"wrk"),
                        (b"x-forwarded-for", f"10.0.{i // 250}.{i % 250 + 1}".encode()),
                        (b"cookie", f"session=s{i // 2}".encode())],
        })

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        return None

    async def run(app: object) -> float:
        for sc in scopes[: n // 5]:  # warm up: clients already known
            await app(dict(sc), receive, send)  # type: ignore[operator]
        t0 = time.perf_counter()
        for sc in scopes:
            await app(dict(sc), receive, send)  # type: ignore[operator]
        return (time.perf_counter() - t0) / n * 1e6

    base = min(asyncio.run(run(bare)) for _ in range(3))
    with_mw = min(asyncio.run(run(GarrisonMiddleware(bare, bus=EventBus(),
                                                     trusted_proxies=["127.0.0.1"])))
                  for _ in range(3))
    return {"bare": base, "middleware": with_mw - base}


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best is kept)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web.md"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian package wrk)")
    results: dict[str, dict[str, float]] = {}
    try:
        import slowapi  # noqa: F401
        has_slowapi = True
    except ImportError:
        has_slowapi = False
        print("slowapi not installed: no peer-tool row (pip install -e '.[bench]')")
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "benchapp.py").write_text(APP)
        (workdir / "clients.lua").write_text(WRK_SCRIPT)
        redis_proc, redis_url = start_redis(workdir)
        try:
            for _ in range(args.rounds):
                for framework in FRAMEWORKS:
                    for name in VARIANTS:
                        if name == "slowapi" and (framework != "starlette" or not has_slowapi):
                            continue
                        store = redis_url if name == "redis" else "memory://"
                        r = run_variant(framework, name, store, workdir, args.duration,
                                        args.connections)
                        key = f"{framework}/{name}"
                        print(f"{key:18s} {r['rps']:8.0f} req/s  p50 {r['p50'] * 1e3:6.2f} ms"
                              f"  p99 {r['p99'] * 1e3:6.2f} ms  non-2xx {r['non2xx']:.0f}",
                              flush=True)
                        if key not in results or r["rps"] > results[key]["rps"]:
                            results[key] = r
        finally:
            redis_proc.kill()
            redis_proc.wait()
    mem = memory_per_key()
    cost = inprocess_cost()
    lines = [
        "# Web middleware benchmark",
        "",
        f"- machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}",
        f"- Python {platform.python_version()}, uvicorn (h11, one worker), wrk -t1 "
        f"-c{args.connections}, {args.duration} s per run, best of {args.rounds} interleaved "
        "rounds",
        f"- command: `.venv/bin/python benchmarks/bench_web.py --duration {args.duration} "
        f"--rounds {args.rounds}`",
        "- traffic: `X-Forwarded-For` from 10,000 addresses (trusted proxy 127.0.0.1), 5,000 "
        "session cookies; the middleware does its full work (limiter, binding, scoring)",
        "",
        "| app | variant | req/s | ratio to bare | p50 (ms) | p99 (ms) | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for framework in FRAMEWORKS:
        bare = results[f"{framework}/bare"]["rps"]
        for name in VARIANTS:
            if f"{framework}/{name}" not in results:
                continue
            r = results[f"{framework}/{name}"]
            lines.append(
                f"| {framework} | {name} | {r['rps']:.0f} | {r['rps'] / bare:.2f}x | "
                f"{r['p50'] * 1e3:.2f} | {r['p99'] * 1e3:.2f} | {r['non2xx']:.0f} |"
            )
    lines += [
        "",
        "Targets: memory >= 0.9x bare, Redis >= 0.8x bare.",
        "",
        "## Where the time goes",
        "",
        f"- in-process cost of the middleware per request (ASGI path, memory store, 10,000 "
        f"clients, no sockets): {cost['middleware']:.1f} us "
        f"(bare app: {cost['bare']:.1f} us)",
        f"- server time per request of the bare app in the wrk run: "
        f"{1e6 / results['asgi/bare']['rps']:.0f} us (uvicorn + h11 parsing and writing)",
        "- The ratio is the middleware's pure-Python work (address lookup, session hash, GCRA "
        "for IP and session, session binding, fused verdict, history update and scoring) "
        "against a request that does nothing. On a real application handler that takes a "
        "millisecond the same per-request cost is a few percent.",
        "- Split of the steady-state cost (every client already known), by disabling parts: "
        "scoring after the response about 45% (two history updates, and a feature pass over "
        "the 32-request ring when a key reaches `min_requests` and every 8th request after), "
        "the store check about 30% (GCRA for IP and session, the session binding), the rest "
        "about 25% (ASGI wrapper, identify, precheck, verdict). With 10,000 addresses and "
        "5,000 sessions most of it is cache misses: each request touches six per-key tables "
        "(engine IP and session histories, ban map, store state for IP and session, bindings). "
        "The 0.9x floor needs about 12 us; reaching it needs one shared per-key record for "
        "engine and store and incremental scoring, not further trimming.",
        "- Redis: each request is one EVALSHA round trip (pipelined across concurrent requests "
        "on one connection); the redis-server process shares the same 2 cores with wrk and "
        "uvicorn.",
        "",
        "## Memory per tracked key (tracemalloc, 20,000 keys, 10 requests each)",
        "",
        f"- per IP (scoring history + limiter state + ban/report maps): {mem['ip']:.0f} bytes",
        f"- per session (history + limiter state + binding): {mem['session']:.0f} bytes",
        "",
    ]
    text = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
