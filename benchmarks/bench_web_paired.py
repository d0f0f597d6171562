"""Paired benchmark of the web middleware: the bare app and one variant served at the same time.

The sequential benchmark (``bench_web.py``) measures the servers in turns; on a shared virtual
machine whose speed drifts by 10-20 % from one minute to the next its ratios move by as much.
Here both servers run at once, pinned to the same CPU, each loaded by its own wrk (on the other
CPU), so drift hits both alike. Reported per round: each server's CPU time per request and
their ratio, which is what the middleware costs. Requests/s are not comparable to the other
benchmark (two servers share one CPU), and for Redis the per-client request rate is half, so
its leases cover fewer requests than in a server of its own: the Redis ratio here is a lower
bound. Written to ``docs/benchmarks/web-paired.md``.

Run: ``.venv/bin/python benchmarks/bench_web_paired.py [--duration 6] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench_web import (
    CLIENTS,
    LOAD_CPUS,
    PINNED,
    ROOT,
    WARM_PASSES,
    Variant,
    compiled,
    cpu_seconds,
    pin,
    prepare,
    start,
)
from machine import cpu_model


def _wrk(url: str, script: Path, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), url],
        stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: pin(0, LOAD_CPUS),
    )


def pair(v: Variant, redis_url: str, workdir: Path, rounds: int,
         duration: int) -> list[tuple[float, float]]:
    """CPU microseconds per request of (bare, ``v``), one pair per round."""
    servers = [start(Variant("asgi", "bare", ""), redis_url, workdir),
               start(v, redis_url, workdir)]
    out: list[tuple[float, float]] = []
    try:
        for w in [_wrk(s.url, workdir / "warm.lua", 900) for s in servers]:
            w.communicate(timeout=960)
        for _ in range(rounds):
            c0 = [cpu_seconds(s.proc.pid) for s in servers]
            loads = [_wrk(s.url, workdir / "clients.lua", duration) for s in servers]
            texts = [w.communicate(timeout=duration + 60)[0] for w in loads]
            c1 = [cpu_seconds(s.proc.pid) for s in servers]
            n = []
            for t in texts:
                m = re.search(r"(\d+) requests in", t)
                if m is None:
                    raise ValueError(f"cannot parse wrk output:\n{t}")
                n.append(int(m.group(1)))
            b, x = ((c1[i] - c0[i]) / n[i] * 1e6 for i in range(2))
            out.append((b, x))
            print(f"{v.key:22s} bare {b:6.1f} us/req  {v.name} {x:6.1f} us/req  "
                  f"ratio {b / x:.3f}", flush=True)
    finally:
        for s in servers:
            s.proc.terminate()
            s.proc.wait(timeout=10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=6, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web-paired.md"))
    args = ap.parse_args()
    if not PINNED:
        raise SystemExit("needs two CPUs: both servers on one, their load on the other")
    if not compiled():
        print("no compiled build: the compiled rows are pure Python too")
    chosen = [Variant("asgi", "memory", "memory"), Variant("asgi", "memory (pure)", "memory", True),
              Variant("asgi", "redis", "redis")]
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-paired-") as tmp:
        workdir = Path(tmp)
        redis_proc, redis_url = prepare(workdir)
        try:
            for v in chosen:
                results[v.name] = pair(v, redis_url, workdir, args.rounds, args.duration)
        finally:
            redis_proc.kill()
            redis_proc.wait()
    lines = [
        "# Web middleware, paired benchmark",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}",
        f"- command: `.venv/bin/python benchmarks/bench_web_paired.py --duration "
        f"{args.duration} --rounds {args.rounds}`",
        "- the bare app and the variant served at the same time by two uvicorn processes "
        "pinned to CPU 0, each loaded by its own `wrk -t1 -c32` on CPU 1; the same "
        f"{CLIENTS:,} clients as in `web.md`, each first warmed with {WARM_PASSES} requests",
        "- ratio = bare CPU per request / variant CPU per request (what the throughput ratio "
        "would be on a CPU of its own); for Redis a lower bound (see the script)",
        "",
        "| variant | bare CPU/req (us, median) | variant CPU/req (us, median) | ratio (median) | "
        "ratio (min-max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, pairs in results.items():
        ratios = [b / x for b, x in pairs]
        lines.append(
            f"| {name} | {statistics.median(b for b, _ in pairs):.0f} | "
            f"{statistics.median(x for _, x in pairs):.0f} | {statistics.median(ratios):.2f}x | "
            f"{min(ratios):.2f}-{max(ratios):.2f}x |")
    lines.append("")
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
