"""Where the web middleware's time goes in a real server: sampled CPU time and Python calls.

The other web benchmarks say how much the middleware costs (``bench_web.py``,
``bench_web_paired.py``) and how many instructions and simulated cache misses it adds
(``bench_web_callgrind.py``, at valgrind's pace, where the scoring batches are small). This one
says *where* the added time is spent at full speed: the bare app and the middleware
(``memory://`` or ``--store redis``) are served by uvicorn in turns, loaded by wrk with the same
10,000 clients as the other benchmarks, and sampled by ``perf record -e cpu-clock`` (a software
clock: it needs no hardware counters, which virtual machines often lack). Reported per request:
CPU time by binary (the interpreter, the middleware's compiled module, the kernel, ...) and by
function, the difference between the two servers; then the Python-level calls per request of
each (counted with ``sys.setprofile`` in the server, in a separate short run, since counting
slows the server down), which says whether the middleware makes the interpreter run more code
or the same code slower. Written to ``docs/benchmarks/web-profile.md``.

Run: ``.venv/bin/python benchmarks/bench_web_profile.py [--duration 8] [--rounds 3]`` (needs
perf, from the Debian package linux-perf, and wrk; about three minutes).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from bench_web import (
    APP,
    LOAD_CPUS,
    ROOT,
    WARM_PASSES,
    Server,
    Variant,
    add_clients_option,
    add_server_option,
    clients_flag,
    compiled,
    parse_wrk,
    pin,
    prepare,
    require_server,
    server_flag,
    server_text,
    start,
    wrk,
)
from machine import cpu_model, write_report

APPS = {"asgi": "raw ASGI app", "starlette": "Starlette app", "fastapi": "FastAPI app"}
FREQ = 2000  # samples per second of CPU time
# Appended to the benchmark app: SIGUSR1 starts counting Python-level calls in the server's
# main thread (the event loop's), SIGUSR2 stops and writes the counts to BENCH_CALLS.
HOOK = textwrap.dedent('''
    import collections as _collections, signal as _signal, sys as _sys
    _calls = _collections.Counter()

    def _count(frame, event, arg):
        if event == "call":
            code = frame.f_code
            _calls[code.co_filename.rsplit("/", 1)[-1] + ":" + code.co_name] += 1
        elif event == "c_call":
            _calls["(C) " + getattr(arg, "__qualname__", repr(arg))] += 1

    def _start(signum, frame):
        _calls.clear()
        _sys.setprofile(_count)

    def _stop(signum, frame):
        _sys.setprofile(None)
        with open(os.environ["BENCH_CALLS"], "w") as out:
            for name, n in _calls.items():
                out.write(f"{n}\\t{name}\\n")

    if os.environ.get("BENCH_CALLS"):
        _signal.signal(_signal.SIGUSR1, _start)
        _signal.signal(_signal.SIGUSR2, _stop)
''')


def perf_symbols(data: Path) -> dict[tuple[str, str], int]:
    """Samples per (binary, function) in a ``perf record`` file."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso,sym", "--stdio",
                          "-n"], check=True, capture_output=True, text=True).stdout
    found: dict[tuple[str, str], int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            key = (m.group(2), m.group(3).strip())
            found[key] = found.get(key, 0) + int(m.group(1))
    return found


def binary(dso: str) -> str:
    """A readable group for a perf DSO name."""
    if "mypyc" in dso:
        return "the middleware (compiled)"
    if dso.startswith("libpython"):
        return "the interpreter (libpython)"
    if dso.startswith("[kernel"):
        return "the kernel"
    if dso.startswith("libc"):
        return "libc"
    return "other"


def profile(server: Server, workdir: Path, duration: int, out: Path) -> int:
    """Sample ``server`` over ``duration`` s of load into ``out``; the requests it served."""
    wrk(server.url, workdir / "clients.lua", 2, 32)  # re-warm: clients re-armed
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-p",
                             str(server.proc.pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attached
    try:
        r = parse_wrk(wrk(server.url, workdir / "clients.lua", duration, 32))
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    return int(r["requests"])


def count_calls(server: Server, workdir: Path, calls: Path) -> dict[str, float]:
    """Python-level calls per request over 2 s of load (requests: calls of the app's handler)."""
    load = subprocess.Popen(["wrk", "-t1", "-c32", "-d6s", "-s", str(workdir / "clients.lua"),
                             server.url], stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: pin(0, LOAD_CPUS))
    try:
        time.sleep(2)
        os.kill(server.proc.pid, signal.SIGUSR1)
        time.sleep(2)
        os.kill(server.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        load.wait(timeout=30)
    counts: dict[str, int] = {}
    for line in calls.read_text().splitlines():
        n, name = line.split("\t", 1)
        counts[name] = int(n)
    # the app's handler runs once per request: bare (raw ASGI), home (Starlette), index (FastAPI)
    requests = max(counts.get(f"benchapp.py:{n}", 0) for n in ("bare", "home", "index"))
    if not requests:
        raise SystemExit("no requests counted (the app never ran while counting)")
    return {name: n / requests for name, n in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per sampled turn")
    ap.add_argument("--rounds", type=int, default=3, help="turns per server")
    ap.add_argument("--store", choices=("memory", "redis"), default="memory")
    ap.add_argument("--framework", choices=("asgi", "starlette", "fastapi"), default="asgi",
                    help="the app under the middleware (as in bench_web.py)")
    ap.add_argument("--top", type=int, default=25, help="functions listed")
    add_clients_option(ap)
    add_server_option(ap)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "web-profile.md"))
    args = ap.parse_args()
    for tool in ("perf", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (scripts/setup --tests installs it)")
    require_server(args.server)
    started = time.monotonic()
    mw = Variant(args.framework, args.store, args.store)
    chosen = [Variant(args.framework, "bare", ""), mw]
    samples: dict[str, collections.Counter[tuple[str, str]]] = {
        v.name: collections.Counter() for v in chosen}
    requests = {v.name: 0 for v in chosen}
    calls: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-profile-") as tmp:
        workdir = Path(tmp)
        redis_proc, redis_url = prepare(workdir, clients=args.clients)
        (workdir / "benchapp.py").write_text(APP + HOOK)
        servers: list[Server] = []
        try:
            for v in chosen:
                os.environ["BENCH_CALLS"] = str(workdir / f"calls-{v.name}.txt")
                servers.append(start(v, redis_url, workdir, args.server))
            os.environ.pop("BENCH_CALLS")
            for s in servers:  # each client min_requests times (the script stops by itself)
                wrk(s.url, workdir / "warm.lua", 900, 32)
            for rnd in range(args.rounds):  # in turns, so drift hits both alike
                for s in servers:
                    data = workdir / f"{s.variant.name}-{rnd}.data"
                    requests[s.variant.name] += profile(s, workdir, args.duration, data)
                    samples[s.variant.name].update(perf_symbols(data))
                    print(f"round {rnd + 1}: {s.variant.name} sampled", flush=True)
            for s in servers:
                calls[s.variant.name] = count_calls(
                    s, workdir, workdir / f"calls-{s.variant.name}.txt")
        finally:
            for s in servers:
                s.proc.terminate()
                s.proc.wait(timeout=10)
            redis_proc.kill()
            redis_proc.wait()

    def per_request(name: str) -> dict[tuple[str, str], float]:
        return {k: n / FREQ / requests[name] * 1e6 for k, n in samples[name].items()}

    bare, var = per_request("bare"), per_request(mw.name)
    groups: dict[str, list[float]] = {}
    for (dso, _), us in bare.items():
        groups.setdefault(binary(dso), [0.0, 0.0])[0] += us
    for (dso, _), us in var.items():
        groups.setdefault(binary(dso), [0.0, 0.0])[1] += us
    total_b, total_v = sum(bare.values()), sum(var.values())
    lines = [
        "# Web middleware, sampled profile",
        "",
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
        + ("compiled build" if compiled() else "pure Python (no compiled build)"),
        f"- command: `.venv/bin/python benchmarks/bench_web_profile.py --duration "
        f"{args.duration} --rounds {args.rounds}"
        + (f" --store {args.store}" if args.store != "memory" else "")
        + (f" --framework {args.framework}" if args.framework != "asgi" else "")
        + (f" --top {args.top}" if args.top != 25 else "") + clients_flag(args.clients)
        + server_flag(args.server) + "` "
        f"({time.monotonic() - started:.0f} s)",
        f"- uvicorn ({server_text(args.server)}, one worker, pinned to CPU 0), the "
        f"{APPS[args.framework]} bare and "
        f"under the middleware (`{args.store}`), {args.clients:,} clients each warmed with "
        f"{WARM_PASSES} requests, then in turns {args.rounds} x {args.duration} s of "
        f"`wrk -t1 -c32` each, sampled with `perf record -e cpu-clock -F {FREQ}`: "
        f"{requests['bare']:,} and "
        f"{requests[mw.name]:,} requests sampled",
        f"- CPU time per request from the samples (one sample = 1/{FREQ} s of CPU). In a "
        "virtual machine the kernel's share includes where interrupts (the sampling's own) are "
        "accounted, about a constant share of time: per request it grows as a server slows",
        "",
        "| CPU per request (us) | bare app | with the middleware | added |",
        "|---|---:|---:|---:|",
    ]
    lines.append(f"| all | {total_b:.1f} | {total_v:.1f} | {total_v - total_b:+.1f} |")
    for name, (x, y) in sorted(groups.items(), key=lambda kv: -(kv[1][1] - kv[1][0])):
        lines.append(f"| {name} | {x:.1f} | {y:.1f} | {y - x:+.1f} |")
    lines += ["", f"Functions by time added per request (the {args.top} largest):", "",
              "| function | binary | bare (us) | middleware (us) | added (us) |",
              "|---|---|---:|---:|---:|"]
    rows = sorted(set(bare) | set(var), key=lambda k: -(var.get(k, 0.0) - bare.get(k, 0.0)))
    for dso, sym in rows[:args.top]:
        x, y = bare.get((dso, sym), 0.0), var.get((dso, sym), 0.0)
        lines.append(f"| `{sym}` | {binary(dso)} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    cb, cv = calls["bare"], calls[mw.name]
    lines += ["", f"Python-level calls per request (functions run by the interpreter, and "
              f"builtins called from them): bare {sum(cb.values()):.1f}, with the middleware "
              f"{sum(cv.values()):.1f}. The largest differences:", "",
              "| call | bare | middleware | added |", "|---|---:|---:|---:|"]
    names = sorted(set(cb) | set(cv), key=lambda n: -abs(cv.get(n, 0.0) - cb.get(n, 0.0)))
    for name in names[:12]:
        x, y = cb.get(name, 0.0), cv.get(name, 0.0)
        lines.append(f"| `{name}` | {x:.3f} | {y:.3f} | {y - x:+.3f} |")
    lines.append("")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
