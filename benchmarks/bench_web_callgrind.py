"""Web middleware cost counted by callgrind: instructions and simulated cache misses per request.

The throughput benchmarks (``bench_web.py``, ``bench_web_paired.py``) time real servers on a
shared virtual machine, whose speed and cache pressure drift from one minute to the next. This
one counts instead: the bare app and the middleware (``memory://``, or with ``--store redis`` a
real redis-server) each run in uvicorn under
``valgrind --tool=callgrind`` with a simulated cache (L1i 32 KB, L1d 48 KB, last level 1 MB, the
size of one core's L2 on common server CPUs), are warmed uninstrumented with the same 10,000
clients as the other benchmarks (each ``min_requests`` times), then instrumented for a fixed
stretch of wrk load. Reported per request: instructions, L1 instruction misses, L1 data misses
and last-level misses, for both, and their difference: what the middleware adds. The counts do
not move with the machine's load; what a miss costs in time does, so no ratio is claimed here.
Written to ``docs/benchmarks/web-callgrind.md``.

``--against DIR`` counts a third server, the middleware imported from another build (``DIR``
first on its ``PYTHONPATH``, made as for ``bench_web_alternating.py --against``), and reports
this checkout's counts against it: a build-to-build comparison that the machine's noise cannot
blur (the three servers run side by side). ``--server`` and ``--clients`` are those of the
other web benchmarks.

Run: ``.venv/bin/python benchmarks/bench_web_callgrind.py [--seconds 20]`` (needs valgrind and
wrk; about five minutes, the servers side by side).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_web import (
    ROOT,
    WARM_PASSES,
    add_clients_option,
    add_server_option,
    add_traffic_option,
    clients_flag,
    compiled,
    counters,
    free_port,
    prepare,
    require_server,
    server_args,
    server_flag,
    server_text,
    traffic_flag,
    wait_port,
)
from machine import cpu_model, write_report

CACHE = ["--I1=32768,8,64", "--D1=49152,12,64", "--LL=1048576,16,64"]
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")


def run(variant: str, workdir: Path, seconds: int, store: str = "memory://",
        stack: str = "h11", src: str = "") -> None:
    """Start one server under callgrind, warm it, count ``seconds`` of load, stop it: writes
    ``<variant>.out`` (callgrind's counts), ``<variant>.n`` (requests counted) and, for the
    middleware, ``<variant>.paths`` (of the counted requests: seen, checked in full, sent to
    Redis, from its /metrics). ``variant`` is ``bare`` or a name for the middleware (``src``:
    a folder to import garrison from first)."""
    port = free_port()
    env = {**os.environ, "BENCH_VARIANT": "bare" if variant == "bare" else "garrison",
           "BENCH_STORE": store, "BENCH_FRAMEWORK": "asgi"}
    env.pop("GARRISON_PURE", None)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    out = workdir / f"{variant}.out"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", *CACHE,
         f"--callgrind-out-file={out}", sys.executable, "-W", "ignore", "-m", "uvicorn",
         "benchapp:app", "--app-dir", str(workdir), "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning", "--no-proxy-headers", *server_args(stack)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 180)
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["wrk", "-t1", "-c8", "-d1800s", "-s", str(workdir / "warm.lua"), url],
                       check=True, capture_output=True, timeout=1900)
        before = counters(url) if variant != "bare" else {}
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True, timeout=60)
        load = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s",
                               str(workdir / "clients.lua"), url], check=True,
                              capture_output=True, text=True, timeout=seconds + 120)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True, timeout=60)
        if before:  # what the counted requests took: full checks, Redis round trips
            after = counters(url)
            (workdir / f"{variant}.paths").write_text(" ".join(
                str(int(after[k] - before[k])) for k in ("requests", "full", "redis")))
        m = re.search(r"(\d+) requests in", load.stdout)
        if m is None:
            raise ValueError(f"cannot parse wrk output:\n{load.stdout}")
        (workdir / f"{variant}.n").write_text(m.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def per_request(workdir: Path, variant: str) -> dict[str, float]:
    """The totals of ``<variant>.out`` divided by the requests measured."""
    n = int((workdir / f"{variant}.n").read_text())
    text = (workdir / f"{variant}.out").read_text()
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^totals: (.*)$", text, re.M) or re.search(r"^summary: (.*)$", text,
                                                                    re.M)
    if events is None or totals is None:
        raise ValueError(f"no totals in {variant}.out")
    values = dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))
    return ({e: values.get(e, 0) / n for e in EVENTS} | {"requests": float(n)}
            | {"gc_" + e: v / n for e, v in collector(workdir / f"{variant}.out").items()})


def collector(out: Path) -> dict[str, int]:
    """Instructions and last-level read misses inside the cyclic garbage collector (inclusive):
    a full collection that happens to fall in the counted stretch walks every tracked object
    and shows up here, not as the middleware's own cost."""
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=yes",
                           "--threshold=100", str(out)], capture_output=True, text=True,
                          check=True, timeout=300).stdout
    for line in text.splitlines():
        if "gcmodule.c:gc_collect_main" in line:
            nums = [int(x.replace(",", "")) if x != "." else 0
                    for x in re.sub(r"\(\s*[\d.]+%\)", "", line).split()[:9]]
            return {"Ir": nums[0], "DLmr": nums[7]}
    return {"Ir": 0, "DLmr": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="seconds of counted load")
    ap.add_argument("--out", help="the report (default: docs/benchmarks/web-callgrind.md, "
                    "or web-callgrind-redis.md with --store redis)")
    ap.add_argument("--keep", help="a folder to copy callgrind's output files to")
    ap.add_argument("--store", choices=("memory", "redis"), default="memory",
                    help="the middleware's store (redis: a redis-server started here; under "
                         "valgrind most requests then take a round trip, which is what this "
                         "counts)")
    ap.add_argument("--against", metavar="DIR", default="",
                    help="also count the middleware of another build (DIR first on its "
                         "PYTHONPATH) and compare this checkout's counts with it")
    add_traffic_option(ap)
    add_server_option(ap)
    add_clients_option(ap)
    args = ap.parse_args()
    require_server(args.server)
    if args.out is None:
        name = "web-callgrind-redis.md" if args.store == "redis" else "web-callgrind.md"
        args.out = str(ROOT / "docs" / "benchmarks" / name)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (Debian packages valgrind, wrk)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gw-callgrind-") as tmp:
        workdir = Path(tmp)
        # the app, the wrk scripts, a redis-server
        redis_proc, redis_url = prepare(workdir, args.traffic, args.clients)
        store = redis_url if args.store == "redis" else "memory://"
        variants = [("bare", ""), ("garrison", "")]
        if args.against:
            variants.append(("other", args.against))
        try:
            # side by side: each server's counts are its own, whatever the others do
            with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
                for fut in [pool.submit(run, v, workdir, args.seconds, store, args.server, src)
                            for v, src in variants]:
                    fut.result()
        finally:
            redis_proc.kill()
            redis_proc.wait()
        bare, mw = per_request(workdir, "bare"), per_request(workdir, "garrison")
        other = per_request(workdir, "other") if args.against else None
        paths = [int(x) for x in (workdir / "garrison.paths").read_text().split()]
        if args.keep:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
    rows = [("instructions", "Ir"), ("L1 instruction misses", "I1mr"),
            ("L1 data read misses", "D1mr"), ("L1 data write misses", "D1mw"),
            ("last-level misses (instructions)", "ILmr"), ("last-level read misses", "DLmr"),
            ("last-level write misses", "DLmw")]
    lines = [
        "# Web middleware, counted by callgrind",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        f"{'compiled' if compiled() else 'pure Python'} build",
        f"- command: `.venv/bin/python benchmarks/bench_web_callgrind.py --seconds "
        f"{args.seconds}" + (" --store redis" if args.store == "redis" else "")
        + traffic_flag(args.traffic) + server_flag(args.server) + clients_flag(args.clients)
        + (f" --against {args.against}" if args.against else "")
        + f"` ({time.monotonic() - t0:.0f} s)",
        f"- uvicorn ({server_text(args.server)}) under callgrind, simulated caches "
        f"{' '.join(CACHE)}; {args.clients:,} "
        f"clients warmed {WARM_PASSES} times each, then `wrk -c8` counted: "
        f"{bare['requests']:.0f} requests (bare) and {mw['requests']:.0f} (middleware, "
        f"{'redis://' if args.store == 'redis' else 'memory://'}); of the middleware's, "
        f"{paths[1]:,} took the full check and {paths[2]:,} a Redis round trip (its /metrics)",
        "",
        "| per request | bare app | with the middleware | added | added (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in rows:
        b, m = bare[key], mw[key]
        pct = f"{(m - b) / b * 100:+.1f}%" if b else "n/a"
        lines.append(f"| {label} | {b:,.1f} | {m:,.1f} | {m - b:+,.1f} | {pct} |")
    for label, key in (("of which in the cyclic GC: instructions", "gc_Ir"),
                       ("of which in the cyclic GC: last-level read misses", "gc_DLmr")):
        b, m = bare[key], mw[key]
        lines.append(f"| {label} | {b:,.1f} | {m:,.1f} | {m - b:+,.1f} | |")
    for label, key in (("instructions outside the cyclic GC", "Ir"),
                       ("last-level read misses outside the cyclic GC", "DLmr")):
        b, m = bare[key] - bare["gc_" + key], mw[key] - mw["gc_" + key]
        lines.append(f"| {label} | {b:,.1f} | {m:,.1f} | {m - b:+,.1f} | "
                     f"{(m - b) / b * 100:+.1f}% |")
    lines += ["", "A full collection of the cyclic garbage collector walks every tracked object "
              "(the middleware keeps tens of thousands: clients, records). The warm-up creates "
              "them all at once, so the first full collection after it may fall in the counted "
              "stretch, where its misses dominate the last-level rows (how often they come in "
              "steady state is not measured here). The GC rows show it, the last two rows "
              "leave it out.", ""]
    if other is not None:
        lines += [f"Against the middleware of `{args.against}` (its server counted side by side: "
                  f"{other['requests']:.0f} requests): what each adds to the bare app per "
                  "request, and this checkout's share of the other's.", "",
                  "| added per request | this checkout | the other build | this / other |",
                  "|---|---:|---:|---:|"]
        for label, key in rows:
            b, m, o = bare[key], mw[key], other[key]
            share = f"{(m - b) / (o - b):.2f}x" if o - b > 0 else "n/a"
            lines.append(f"| {label} | {m - b:+,.1f} | {o - b:+,.1f} | {share} |")
        lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
