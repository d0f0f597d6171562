"""Web middleware benchmark in short alternating turns: the bare app and one variant, in turn.

``bench_web.py`` measures every server for several seconds in a row, so on a shared virtual
machine, whose speed moves by 20-50 % within seconds, the bare app and the variant are often
measured in different moods of the machine. ``bench_web_paired.py`` serves both at once on one
CPU, which cancels that drift but makes them evict each other's caches. Here each server has the
CPU to itself while it is measured, in turns of ``--duration`` seconds (2 by default), the bare
app and the variant alternating (bare-variant, then variant-bare, so that a steady drift within
a pair cancels), ``--pairs`` times; the ratio of each pair is taken and the median reported, with
the spread. Same server (uvicorn), same load generator (wrk), same clients and traffic as
``bench_web.py``. Written to ``docs/benchmarks/web-alternating.md``.

Run: ``.venv/bin/python benchmarks/bench_web_alternating.py [--pairs 20] [--duration 2]``.

``--settle SECONDS`` loads each server (the bare app and the variant, one after the other) for
that long after the warm-up, uncounted: the warm-up grants every client its Redis lease within a
minute, so without it the Redis rows are measured while those leases all run out at once (a
transient a long-running server never meets again); a few lease TTLs (60 s by default) reach the
steady state.

``--against DIR`` alternates each variant with the same variant of another build of garrison
instead of the bare app (``DIR`` first on the server's ``PYTHONPATH``; make it with ``git
worktree add /tmp/old REV && pip install --no-deps --target /tmp/oldlib /tmp/old``): the ratio
is then what a change saves or costs, each build with the CPU to itself in its turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_web import (
    PINNED,
    REFERENCES,
    ROOT,
    TRAFFIC_TEXT,
    WARM_PASSES,
    Server,
    Variant,
    add_clients_option,
    add_server_option,
    add_traffic_option,
    clients_flag,
    compiled,
    cpu_split,
    parse_wrk,
    prepare,
    require_server,
    server_flag,
    server_text,
    start,
    stop,
    traffic_flag,
    wrk,
)
from machine import cpu_model, write_report


def turn(server: Server, workdir: Path, seconds: int, connections: int) -> dict[str, float]:
    """One measured turn of ``server``: wrk's figures and the server's CPU per request (all,
    and the kernel's part)."""
    u0, s0 = cpu_split(server.proc.pid)
    r = parse_wrk(wrk(server.url, workdir / "clients.lua", seconds, connections))
    u1, s1 = cpu_split(server.proc.pid)
    n = max(r["requests"], 1.0)
    r["cpu_us"] = (u1 - u0 + s1 - s0) / n * 1e6
    r["sys_us"] = (s1 - s0) / n * 1e6
    return r


def alternate(bare: Server, variant: Server, workdir: Path, pairs: int, seconds: int,
              connections: int, settle: int = 0) -> list[tuple[dict[str, float], dict[str, float]]]:
    """``pairs`` pairs of turns (bare, variant), in alternating order, after ``settle``
    seconds of uncounted load on each."""
    for s in (bare, variant):  # both warm in this phase of the machine: clients re-armed
        wrk(s.url, workdir / "clients.lua", 2, connections)
    done = 0
    while done < settle:  # in turns of up to 30 s, so neither sits idle for long
        step = min(30, settle - done)
        for s in (bare, variant):
            wrk(s.url, workdir / "clients.lua", step, connections)
        done += step
    if settle:
        print(f"settled {settle} s each", flush=True)
    out = []
    for k in range(pairs):
        if k % 2 == 0:
            b = turn(bare, workdir, seconds, connections)
            v = turn(variant, workdir, seconds, connections)
        else:
            v = turn(variant, workdir, seconds, connections)
            b = turn(bare, workdir, seconds, connections)
        out.append((b, v))
        print(f"pair {k + 1:2d} {variant.variant.key:22s} bare {b['rps']:7.0f}  variant "
              f"{v['rps']:7.0f} req/s  ratio {v['rps'] / b['rps']:.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=20, help="pairs of turns per variant")
    ap.add_argument("--duration", type=int, default=2, help="seconds per turn")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--settle", type=int, default=0, metavar="SECONDS",
                    help="uncounted load on each server after the warm-up (steady state)")
    add_traffic_option(ap)
    add_clients_option(ap)
    add_server_option(ap)
    ap.add_argument("--reference", action="store_true",
                    help="also the reference rows (no Garrison): " + "; ".join(
                        f"{name}: {text}" for name, text in REFERENCES.items()))
    ap.add_argument("--against", metavar="DIR", default="",
                    help="alternate with the same variant imported from DIR (another build) "
                    "instead of the bare app")
    ap.add_argument("--only", nargs="+", metavar="APP/VARIANT",
                    help="run only these rows, e.g. asgi/memory")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web-alternating.md"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian package wrk)")
    require_server(args.server)
    is_compiled = compiled()
    if not is_compiled:
        print("no compiled build: the rows are pure Python")
    frameworks = ["asgi", "starlette"] + (["fastapi"] if importlib.util.find_spec("fastapi")
                                          else [])
    chosen = [Variant(fw, name, name) for fw in frameworks for name in ("memory", "redis")]
    if args.reference:
        chosen += [Variant(fw, name, "") for fw in frameworks for name in REFERENCES]
    if args.only:
        unknown = set(args.only) - {v.key for v in chosen}
        if unknown:
            raise SystemExit(f"no such rows: {', '.join(sorted(unknown))}")
        chosen = [v for v in chosen if v.key in args.only]
    results: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gw-alt-") as tmp:
        workdir = Path(tmp)
        redis_proc, redis_url = prepare(workdir, args.traffic, args.clients)
        servers: list[Server] = []
        try:
            bares: dict[str, Server] = {}
            for v in chosen:
                if args.against and v.store:  # the same variant, the other build
                    base = start(Variant(v.framework, v.name, v.store, v.pure, args.against),
                                 redis_url, workdir, args.server)
                    servers.append(base)
                    wrk(base.url, workdir / "warm.lua", 600, args.connections)
                elif v.framework not in bares:
                    bares[v.framework] = base = start(Variant(v.framework, "bare", ""),
                                                      redis_url, workdir, args.server)
                    servers.append(base)
                else:
                    base = bares[v.framework]
                s = start(v, redis_url, workdir, args.server)
                servers.append(s)
                wrk(s.url, workdir / "warm.lua", 600, args.connections)  # every client known
                print(f"{v.key:22s} warmed", flush=True)
                results[v.key] = alternate(base, s, workdir, args.pairs, args.duration,
                                           args.connections, args.settle)
                for done in [s] + ([base] if base is not bares.get(v.framework) else []):
                    done.proc.terminate()  # one middleware server (or pair) at a time
                    done.proc.wait(timeout=10)
        finally:
            stop(servers, redis_proc)
    lines = [
        "# Web middleware, alternating turns",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        f"{'compiled' if is_compiled else 'pure Python'} build",
        f"- command: `.venv/bin/python benchmarks/bench_web_alternating.py --pairs {args.pairs} "
        f"--duration {args.duration}"
        + (f" --settle {args.settle}" if args.settle else "")
        + traffic_flag(args.traffic) + clients_flag(args.clients) + server_flag(args.server)
        + (" --reference" if args.reference else "")
        + (f" --against {args.against}" if args.against else "")
        + (f" --only {' '.join(args.only)} --out {args.out}" if args.only else "")
        + f"` ({time.monotonic() - t0:.0f} s)",
        f"- uvicorn ({server_text(args.server)}, one worker) and `wrk -t1 -c{args.connections}`; "
        + ("each server pinned to CPU 0 while it is measured, wrk and redis-server to CPU 1; "
           if PINNED else "one CPU: nothing pinned; ")
        + f"{args.clients:,} clients as in `web.md`, each first warmed with {WARM_PASSES} "
        f"requests; {TRAFFIC_TEXT[args.traffic]}"
        + (f"; then {args.settle} s of uncounted load on each server (in turns of up to 30 s) "
           "before the pairs" if args.settle else ""),
        f"- per variant {args.pairs} pairs of {args.duration} s turns, the bare app of its "
        "framework and the variant alternating (bare first in odd pairs, the variant first in "
        "even ones); ratio = variant req/s / bare req/s of the same pair",
        *([f"- **against another build**: the `bare` columns are the same variant with "
           f"garrison imported from `{args.against}`; a ratio above 1 means this checkout "
           "serves more requests per second"] if args.against else []),
        "",
        "| app / variant | bare req/s (median) | variant req/s (median) | ratio (median) | "
        "ratio (quartiles) | ratio (min-max) | variant p50 / p99 (ms) | "
        "added CPU per request (us) | of it the kernel's (us) | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, pairs in results.items():
        ratios = sorted(v["rps"] / b["rps"] for b, v in pairs)
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        added = statistics.median(v["cpu_us"] - b["cpu_us"] for b, v in pairs)
        kernel = statistics.median(v["sys_us"] - b["sys_us"] for b, v in pairs)
        lines.append(
            f"| {key} | {statistics.median(b['rps'] for b, _ in pairs):.0f} | "
            f"{statistics.median(v['rps'] for _, v in pairs):.0f} | "
            f"{statistics.median(ratios):.2f}x | {q[0]:.2f}-{q[2]:.2f}x | "
            f"{ratios[0]:.2f}-{ratios[-1]:.2f}x | "
            f"{statistics.median(v['p50'] for _, v in pairs) * 1e3:.2f} / "
            f"{statistics.median(v['p99'] for _, v in pairs) * 1e3:.2f} | {added:+.1f} | "
            f"{kernel:+.1f} | {sum(b['non2xx'] + v['non2xx'] for b, v in pairs):.0f} |")
    if not args.against:
        lines += ["", "Targets: memory >= 0.9x bare, Redis >= 0.8x bare."]
    if args.reference:
        lines += ["", "Reference rows (no Garrison): " + "; ".join(
            f"`{name}`, {text}" for name, text in REFERENCES.items()) + "."]
    lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
