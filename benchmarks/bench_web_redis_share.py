"""How often the Redis store is asked: the share of requests that take a round trip.

With ``redis://`` a returning client is admitted from its local lease (at most ``lease_max``
requests or ``lease_ttl`` seconds) and its session from a binding confirmed for a lease TTL
(Redis hearing of it by a batched call, not counted here, every eighth of ``travel_window``);
when either runs out the request is checked in full, through Redis. How
often that happens depends on how many clients share the traffic, so the Redis rows of the
server benchmarks move with ``--clients`` and the request rate more than with the code. This
drives the ASGI middleware in-process (on uvloop, as ``uvicorn[standard]`` serves, else
asyncio) against a real ``redis-server`` started here on a free loopback port, on a simulated
clock, each request from any client at random, lets ``--settle`` requests go by uncounted
(right after the warm-up every lease runs out at once, a transient, not the steady state a
server meets) and counts the store's answers for the next ``--requests``, for each (clients,
rate) pair. Written to ``docs/benchmarks/web-redis-share.md``.

Run: ``.venv/bin/python benchmarks/bench_web_redis_share.py [--requests 400000] [--settle
400000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_web import ROOT, WARM_PASSES, start_redis
from bench_web_inprocess import bare, client_headers, discard, http_scope, receive
from machine import cpu_model, write_report

CASES = ((10_000, 10_000.0), (120_000, 10_000.0), (120_000, 20_000.0), (120_000, 40_000.0))
"""(clients, requests per second): the h11 benchmarks' traffic, the same rate over the
httptools benchmarks' clients, the rate the httptools Redis rows reach, and the bare httptools
app's rate."""


async def count(url: str, clients: int, rate: float, requests: int, settle: int,
                start: float) -> dict[str, float]:
    """Warm ``clients`` (two per session) with :data:`WARM_PASSES` requests each, send
    ``settle`` requests from clients at random uncounted, then ``requests`` counted, the clock
    starting at ``start`` (each case far from the last, so what Redis keeps of one has expired
    for the next); the store's answers and full checks per counted request, and the tells
    (batched calls confirming sessions) per simulated second."""
    from garrison.bus import EventBus
    from garrison.web import GarrisonMiddleware

    clock = [start]
    mw = GarrisonMiddleware(bare, store=url, bus=EventBus(), trusted_proxies=["127.0.0.1"],
                            clock=lambda: clock[0])
    eng = mw.engine

    async def one(i: int) -> None:
        clock[0] += 1.0 / rate
        await mw(http_scope(client_headers(i)), receive, discard)

    for _ in range(WARM_PASSES):
        for i in range(clients):
            await one(i)
    rng = random.Random(1)
    for _ in range(settle):
        await one(rng.randrange(clients))
    store: Any = eng.store
    before, full0 = dict(eng.metrics.answers()), eng.metrics.full_checks
    blocked0 = sum(eng.metrics.blocked.values())
    tells0, t0 = getattr(store, "tells", 0), clock[0]
    for _ in range(requests):
        await one(rng.randrange(clients))
    after = dict(eng.metrics.answers())
    tells = (getattr(store, "tells", 0) - tells0) / (clock[0] - t0)
    await store.aclose()
    return {"redis": (after.get("redis", 0) - before.get("redis", 0)) / requests,
            "full": (eng.metrics.full_checks - full0) / requests, "tells": tells,
            "blocked": (sum(eng.metrics.blocked.values()) - blocked0) / requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400_000, help="counted per case")
    ap.add_argument("--settle", type=int, default=400_000,
                    help="sent uncounted per case after the warm-up")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web-redis-share.md"))
    args = ap.parse_args()
    try:
        import uvloop

        run: Any = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        run, loop_name = asyncio.run, "asyncio"
    t0 = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gw-share-") as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            for k, (clients, rate) in enumerate(CASES):
                r = run(count(url, clients, rate, args.requests, args.settle,
                              1.7e9 + 1e5 * k))
                rows.append((clients, rate, r))
                print(f"{clients:,} clients at {rate:,.0f} req/s: {r['redis']:.1%} ask Redis",
                      flush=True)
        finally:
            proc.kill()
            proc.wait()
    lines = [
        "# Web middleware, how often Redis is asked",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        f"{loop_name}",
        f"- command: `.venv/bin/python benchmarks/bench_web_redis_share.py --requests "
        f"{args.requests} --settle {args.settle}` ({time.monotonic() - t0:.0f} s)",
        f"- the ASGI middleware in-process on `redis://` (a redis-server started here, default "
        f"leases: 12 requests or 60 s, session bindings confirmed as long), clients two per "
        f"session, each warmed with {WARM_PASSES} requests, then {args.settle:,} requests "
        f"from clients at random uncounted and {args.requests:,} counted, on a simulated clock",
        "- asked Redis: requests that waited on a round trip; tells: the batched calls a second "
        "that confirm sessions answered locally (no request waits on them); refused: requests "
        "the middleware answered 429 (every request here is from one path at a steady rate, "
        "so a client fast enough is judged a bot once it has the history; those requests are "
        "checked in full and answered from local memory)",
        "",
        "| clients | requests/s | per address (req/min) | asked Redis | checked in full "
        "| tells/s | refused |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, rate, r in rows:
        lines.append(f"| {clients:,} | {rate:,.0f} | {rate / clients * 60:.0f} | "
                     f"{r['redis']:.1%} | {r['full']:.1%} | {r['tells']:.2f} | "
                     f"{r['blocked']:.1%} |")
    lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
