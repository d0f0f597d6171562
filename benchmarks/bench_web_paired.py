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

``--against DIR`` pairs each variant with the same variant of another build of garrison instead
of the bare app (``DIR`` is put first on the server's ``PYTHONPATH``; make it with
``git worktree add /tmp/old REV && pip install --no-deps --target /tmp/oldlib /tmp/old``): the
ratio is then what a change saves or costs, measured in one run, where sequential runs on this
kind of machine differ by more than most changes do.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_web import (
    CLIENTS,
    LOAD_CPUS,
    PINNED,
    ROOT,
    TRAFFIC_TEXT,
    WARM_PASSES,
    Variant,
    add_traffic_option,
    compiled,
    counters,
    pin,
    prepare,
    start,
    traffic_flag,
)
from machine import cpu_model, write_report


def _wrk(url: str, script: Path, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), url],
        stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: pin(0, LOAD_CPUS),
    )


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass(frozen=True)
class Round:
    """One round of a pair: CPU microseconds per request of the bare app and of the variant,
    what the variant adds in user and in system time, and the shares of the variant's requests
    checked in full and sent to Redis (from its /metrics)."""

    bare: float
    variant: float
    user: float
    system: float
    full: float
    redis: float


def pair(v: Variant, redis_url: str, workdir: Path, rounds: int, duration: int,
         against: str = "") -> list[Round]:
    """The rounds of ``v`` against the bare app of its own framework, or against ``v`` built
    from ``against`` (a folder garrison is imported from) when that is given."""
    base = (Variant(v.framework, v.name, v.store, v.pure, against) if against
            else Variant(v.framework, "bare", ""))
    servers = [start(base, redis_url, workdir), start(v, redis_url, workdir)]
    out: list[Round] = []
    try:
        for w in [_wrk(s.url, workdir / "warm.lua", 900) for s in servers]:
            w.communicate(timeout=960)
        for _ in range(rounds):
            m0 = counters(servers[1].url)
            c0 = [cpu_split(s.proc.pid) for s in servers]
            loads = [_wrk(s.url, workdir / "clients.lua", duration) for s in servers]
            texts = [w.communicate(timeout=duration + 60)[0] for w in loads]
            c1 = [cpu_split(s.proc.pid) for s in servers]
            m1 = counters(servers[1].url)
            n = []
            for t in texts:
                m = re.search(r"(\d+) requests in", t)
                if m is None:
                    raise ValueError(f"cannot parse wrk output:\n{t}")
                n.append(int(m.group(1)))
            per = [[(c1[i][k] - c0[i][k]) / n[i] * 1e6 for k in range(2)] for i in range(2)]
            seen = max(m1["requests"] - m0["requests"], 1.0)
            r = Round(sum(per[0]), sum(per[1]), per[1][0] - per[0][0], per[1][1] - per[0][1],
                      (m1["full"] - m0["full"]) / seen, (m1["redis"] - m0["redis"]) / seen)
            out.append(r)
            print(f"{v.key:22s} bare {r.bare:6.1f} us/req  {v.name} {r.variant:6.1f} us/req  "
                  f"ratio {r.bare / r.variant:.3f}  added user {r.user:+.1f} system "
                  f"{r.system:+.1f}  full {r.full:.1%} redis {r.redis:.1%}", flush=True)
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
    ap.add_argument("--only", nargs="+", metavar="APP/VARIANT",
                    help="run only these rows, e.g. asgi/redis (for a longer run of a few)")
    ap.add_argument("--against", metavar="DIR", default="",
                    help="pair with the same variant imported from DIR, not the bare app")
    add_traffic_option(ap)
    args = ap.parse_args()
    if not PINNED:
        raise SystemExit("needs two CPUs: both servers on one, their load on the other")
    if not compiled():
        print("no compiled build: the compiled rows are pure Python too")
    chosen = [Variant("asgi", "memory", "memory"), Variant("asgi", "memory (pure)", "memory", True),
              Variant("asgi", "redis", "redis")]
    # Minimal apps of the frameworks the middleware is for (FastAPI when it is installed: the
    # bench extra): the same route, answered by the framework.
    frameworks = ["starlette"] + (["fastapi"] if importlib.util.find_spec("fastapi") else [])
    for fw in frameworks:
        chosen += [Variant(fw, "memory", "memory"), Variant(fw, "redis", "redis")]
    if args.only:
        unknown = set(args.only) - {v.key for v in chosen}
        if unknown:
            raise SystemExit(f"no such rows: {', '.join(sorted(unknown))}")
        chosen = [v for v in chosen if v.key in args.only]
    results: dict[str, list[Round]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-paired-") as tmp:
        workdir = Path(tmp)
        redis_proc, redis_url = prepare(workdir, args.traffic)
        try:
            for v in chosen:
                results[v.key] = pair(v, redis_url, workdir, args.rounds, args.duration,
                                      args.against)
        finally:
            redis_proc.kill()
            redis_proc.wait()
    lines = [
        "# Web middleware, paired benchmark",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}",
        f"- command: `.venv/bin/python benchmarks/bench_web_paired.py --duration "
        f"{args.duration} --rounds {args.rounds}"
        + (f" --only {' '.join(args.only)} --out {args.out}" if args.only else "")
        + (f" --against {args.against}" if args.against else "")
        + traffic_flag(args.traffic) + "`",
        *([f"- **against another build**: the `bare` columns below are the same variant "
           f"with garrison imported from `{args.against}`; a ratio above 1 means this "
           f"checkout costs less CPU per request"] if args.against else []),
        "- each variant paired with the bare app of its own framework (`asgi`: a plain ASGI "
        "callable, the harshest baseline; `starlette`, `fastapi`: a one-route app), "
        "served at the same time by two uvicorn processes "
        "pinned to CPU 0, each loaded by its own `wrk -t1 -c32` on CPU 1; the same "
        f"{CLIENTS:,} clients as in `web.md`, each first warmed with {WARM_PASSES} requests; "
        + TRAFFIC_TEXT[args.traffic],
        "- ratio = bare CPU per request / variant CPU per request (what the throughput ratio "
        "would be on a CPU of its own); for Redis a lower bound (see the script)",
        "- added user / system: the variant's CPU per request minus the bare app's, split "
        "into user and kernel time (medians; the kernel's work is the sockets, the same "
        "system calls for both unless a variant talks to Redis, so what the memory rows add "
        "there is the kernel running slower beside the middleware's data in the caches); "
        "checked in full / asked Redis: shares "
        "of the variant's requests that took the full check and a Redis round trip (its "
        "`/metrics`, read before and after each round)",
        "",
        "| app / variant | bare CPU/req (us, median) | variant CPU/req (us, median) | "
        "ratio (median) | ratio (min-max) | added user (us) | added system (us) | "
        "checked in full | asked Redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        ratios = [r.bare / r.variant for r in rows]
        redis = (f"{statistics.median(r.redis for r in rows):.1%}" if "redis" in name
                 else "-")
        lines.append(
            f"| {name} | {statistics.median(r.bare for r in rows):.0f} | "
            f"{statistics.median(r.variant for r in rows):.0f} | "
            f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
            f"{statistics.median(r.user for r in rows):+.0f} | "
            f"{statistics.median(r.system for r in rows):+.0f} | "
            f"{statistics.median(r.full for r in rows):.1%} | {redis} |")
    lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
