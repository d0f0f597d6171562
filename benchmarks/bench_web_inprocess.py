"""The web middleware's own CPU per request, in-process: no server, no load generator.

The server benchmarks (``bench_web.py``, ``bench_web_alternating.py``) say what the middleware
costs a real server, but their run-to-run noise (1-3 % per turn on a shared virtual machine) is
as large as most changes. This one drives the engine and the ASGI adapter directly from a loop,
on a simulated clock (9,400 requests/s, as the server runs do), with the same 10,000 clients,
two per session cookie, each request from any client at random: what it measures moves by a few
percent at most between runs, so a change to the request path shows up here even when the
server rows cannot tell it from noise. It measures the middleware's code and the cache misses
of its own data, not what it does to the server's caches (in a server every microsecond here
costs about four).

Reported per request (median of the rounds, each the mean over ``--requests`` requests):

* ``engine``: :meth:`WebEngine.armed` (the fast path's check) and :meth:`WebEngine.after`
  (queueing), with the scoring batches they trigger;
* ``scoring``: the batches alone (from the engine's own ``scoring`` metric);
* ``asgi``: the whole ASGI middleware around a bare app, less the same bare app called
  directly (the scope, fresh header tuples as a server makes them, and the app's two sends
  are in both);
* ``new``: the same for a client never seen before (a new address and session cookie per
  request, ``--requests`` / 4 of them): identification, the full check, new records, what a
  flood from fresh addresses costs per request.

``--against DIR`` measures another build as well (``DIR`` first on ``PYTHONPATH``, e.g. made
with ``git worktree add /tmp/old REV && pip install --no-deps --target /tmp/oldlib /tmp/old``),
in alternating rounds, and reports the ratio. Written to ``docs/benchmarks/web-inprocess.md``.

Run: ``.venv/bin/python benchmarks/bench_web_inprocess.py [--rounds 7] [--against DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, write_report

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 10_000
RATE = 9_400.0
WARM_PASSES = 8


Headers = list[tuple[bytes, bytes]]


def client_headers(i: int, net: int = 0, session: str = "") -> Headers:
    """The headers of client ``i`` as wrk sends them in ``bench_web.py``: ``X-Forwarded-For``
    10.(net + i // 62500).x.y, and a session cookie (``s{i // 2}``, two clients per session,
    unless ``session`` names one)."""
    return [(b"host", b"127.0.0.1:8000"),
            (b"x-forwarded-for",
             f"10.{net + i // 62500}.{i // 250 % 250}.{i % 250 + 1}".encode()),
            (b"cookie", f"session={session or f's{i // 2}'}".encode()), (b"user-agent", b"wrk")]


def http_scope(h: Headers) -> dict[str, Any]:
    """An HTTP scope as uvicorn builds it, behind a proxy at 127.0.0.1, with header objects
    made fresh for the request, as a server parses them."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5555),
            "server": ("127.0.0.1", 8000), "state": {},
            "headers": [(bytes(bytearray(k)), bytes(bytearray(v))) for k, v in h]}


async def bare(scope: Any, receive: Any, send: Any) -> None:
    """The minimal app of the server benchmarks."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def discard(message: object) -> None:
    """A server's ``send`` that sends nothing."""
    return None


async def receive() -> dict[str, object]:
    """A server's ``receive`` for a request without a body."""
    return {"type": "http.request", "body": b"", "more_body": False}


def worker(requests: int) -> dict[str, float]:
    """One round in this process: per-request microseconds of each measured path."""
    import gc
    import random

    from garrison.bus import EventBus
    from garrison.web import GarrisonMiddleware

    clock = [1.7e9]

    def tick() -> float:
        clock[0] += 1.0 / RATE
        return clock[0]

    headers = [client_headers(i) for i in range(CLIENTS)]
    scope = http_scope
    send = discard

    def drive(app: Any, h: list[tuple[bytes, bytes]]) -> None:
        coro = app(scope(h), receive, send)
        with contextlib.suppress(StopIteration):  # the app never waits: one step runs it
            coro.send(None)

    mw = GarrisonMiddleware(bare, store="memory://", bus=EventBus(),
                            trusted_proxies=["127.0.0.1"], clock=tick)
    eng = mw.engine
    for _ in range(WARM_PASSES):  # every client known and armed
        for h in headers:
            drive(mw, h)
    clients = [mw._client(scope(h)) for h in headers]
    armed = getattr(eng, "armed", None)
    rng = random.Random(1)
    gc.collect()
    out: dict[str, float] = {}

    order = [rng.randrange(CLIENTS) for _ in range(requests)]
    m0, s0 = eng.metrics.scoring_seconds, eng.metrics.scored
    t0 = time.perf_counter()
    for k in order:
        c = clients[k]
        now = tick()
        ok = armed(c, now) if armed is not None else eng.fast(c, now) is not None
        if not ok:
            pre: Any = eng.precheck(c, now)  # memory://: always a decision
            ok = bool(pre.allowed)
        if ok:
            eng.after(c, "/", 200, 2, now)
    out["engine"] = (time.perf_counter() - t0) / requests * 1e6
    out["scoring"] = ((eng.metrics.scoring_seconds - m0)
                      / max(eng.metrics.scored - s0, 1) * 1e6)

    order = [rng.randrange(CLIENTS) for _ in range(requests)]
    t0 = time.perf_counter()
    for k in order:
        drive(bare, headers[k])
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in order:
        drive(mw, headers[k])
    out["asgi"] = (time.perf_counter() - t0 - plain) / requests * 1e6

    # clients never seen before, one request each, as a flood from new addresses sends them
    # (addresses 10.16.0.1 and up, past the warmed ones; a new session cookie each)
    n = max(requests // 4, 1)
    fresh = [client_headers(i, net=16, session=f"n{i}") for i in range(n)]
    t0 = time.perf_counter()
    for h in fresh:
        drive(bare, h)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in fresh:
        drive(mw, h)
    out["new"] = (time.perf_counter() - t0 - plain) / n * 1e6
    return out


def run_worker(src: str, requests: int) -> dict[str, float]:
    """A round in a fresh interpreter, importing garrison from ``src`` ("" for this
    checkout)."""
    env = dict(os.environ)
    env.pop("GARRISON_PURE", None)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, __file__, "--worker", "--requests", str(requests)],
                          env=env, capture_output=True, text=True, timeout=900, check=True)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=200_000, help="measured per round and path")
    ap.add_argument("--against", metavar="DIR", default="",
                    help="also measure garrison imported from DIR (another build)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web-inprocess.md"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.requests)))
        return
    builds = {"this checkout": ""} | ({f"`{args.against}`": args.against} if args.against
                                      else {})
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    t0 = time.monotonic()
    for k in range(args.rounds):
        for name, src in (builds.items() if k % 2 == 0 else reversed(builds.items())):
            rounds[name].append(run_worker(src, args.requests))
            print(f"round {k + 1} {name}: {rounds[name][-1]}", flush=True)
    compiled = subprocess.run([sys.executable, "-c",
                               "import garrison._native as n; print(n.COMPILED)"],
                              capture_output=True, text=True, check=True).stdout.strip()
    paths = ("engine", "scoring", "asgi", "new")
    lines = [
        "# Web middleware, in-process CPU per request",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        f"this checkout {'compiled' if compiled == 'True' else 'pure Python'}",
        f"- command: `.venv/bin/python benchmarks/bench_web_inprocess.py --rounds {args.rounds}"
        f" --requests {args.requests}" + (f" --against {args.against}" if args.against else "")
        + f"` ({time.monotonic() - t0:.0f} s)",
        f"- {CLIENTS:,} clients (two per session cookie) warmed with {WARM_PASSES} requests "
        f"each, then each request from any client at random on a simulated clock at "
        f"{RATE:,.0f} requests/s; each round a fresh interpreter"
        + ("; builds measured in alternating order" if args.against else ""),
        "",
        "| build | " + " | ".join(f"{p} (us, median)" for p in paths) + " | "
        + " | ".join(f"{p} (min-max)" for p in paths) + " |",
        "|---|" + "---:|" * (2 * len(paths)),
    ]
    medians: dict[str, dict[str, float]] = {}
    for name, rs in rounds.items():
        medians[name] = {p: statistics.median(r[p] for r in rs) for p in paths}
        lines.append(f"| {name} | " + " | ".join(f"{medians[name][p]:.3f}" for p in paths)
                     + " | " + " | ".join(f"{min(r[p] for r in rs):.3f}-"
                                          f"{max(r[p] for r in rs):.3f}" for p in paths) + " |")
    if args.against:
        this, other = medians["this checkout"], medians[f"`{args.against}`"]
        lines += ["", "This checkout's time as a share of the other build's: " + ", ".join(
            f"{p} {this[p] / other[p]:.2f}x" for p in paths) + "."]
    lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
