"""Benchmark of the honeypot decoys; writes docs/benchmarks/honeypot.md.

Run: ``.venv/bin/python benchmarks/bench_honeypot.py`` (about half a minute on 2 cores).
All traffic stays on loopback (127.0.0.1).

1. Connections per second one decoy absorbs: clients connect, read the greeting, send one
   command and hang up; the server runs in its own process. Decoys: SSH (greeting only) and
   Redis (``PING`` -> ``+PONG``), each emitting one serialised ``honeypot`` event per visit
   (event budget off). Baseline: a bare asyncio server that sends the same greeting and closes
   (no caps, no capture, no event).
2. Memory per open session: RSS growth of the server process while N visitors sit silent in
   an SSH session (asyncssh-backed, and banner-only), against the bare asyncio server holding
   the same N connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (the script's folder)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

OUT = ROOT / "docs" / "benchmarks" / "honeypot.md"
CONNECTIONS = 4000
CONCURRENCY = 32
REPEAT = 5
HELD = 1000
GREETING = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n"


# -- servers (run in a child process) -----------------------------------------------------------
async def serve(mode: str, port: int, service: str) -> None:
    ready = asyncio.Event()
    if mode == "baseline":
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"+PONG\r\n" if service == "redis" else GREETING)
            try:
                while await r.read(4096):
                    pass
            except OSError:
                pass
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        del server
    else:
        from garrison.config import HoneypotConfig
        from garrison.events import Event
        from garrison.sensors.honeypot import HoneypotComponent

        sink = {"bytes": 0}

        def emit(event: Event) -> None:
            sink["bytes"] += len(event.to_json())

        comp = HoneypotComponent(
            HoneypotConfig(services={port: service}, bind=["127.0.0.1"], max_sessions=HELD * 2,
                           max_sessions_per_source=HELD * 2, idle_timeout=300,
                           session_timeout=600, events_per_source=10**9,
                           ssh_auth=mode != "decoy-noauth"),
            emit=emit,
        )
        await comp.open()
    ready.set()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- clients ----------------------------------------------------------------------------------
async def visit(port: int, service: str) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    if service == "redis":
        w.write(b"PING\r\n")
        assert (await r.readline()) == b"+PONG\r\n"
    else:
        assert (await r.readline()).startswith(b"SSH-2.0-")
    w.close()
    await w.wait_closed()


async def rate(port: int, service: str) -> float:
    """Visits per second (each: connect, greeting/answer, close)."""
    queue = iter(range(CONNECTIONS))

    async def worker() -> None:
        for _ in queue:
            await visit(port, service)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return CONNECTIONS / (time.perf_counter() - t)


async def hold(port: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(HELD):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()
        writers.append(w)
    return writers


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(mode: str, service: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(port), service],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, port


def measure_rates(service: str) -> dict[str, float]:
    """Best conn/s of the baseline and the decoy, runs interleaved so that load from elsewhere
    on the machine hits both alike."""
    modes = ("baseline", "decoy", "decoy-noauth") if service == "ssh" else ("baseline", "decoy")
    procs = {mode: start(mode, service) for mode in modes}
    best = dict.fromkeys(modes, 0.0)
    try:
        for _, port in procs.values():
            asyncio.run(rate(port, service))  # warm-up
        for _ in range(REPEAT):
            for mode, (_, port) in procs.items():
                best[mode] = max(best[mode], asyncio.run(rate(port, service)))
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()
    return best


def measure_memory(mode: str) -> dict[str, float]:
    """RSS of the server (KiB) before and while HELD silent SSH sessions are open."""
    proc, port = start(mode, "ssh")

    async def held() -> tuple[int, int]:
        await asyncio.sleep(0.5)
        before = rss_kib(proc.pid)
        writers = await hold(port)
        await asyncio.sleep(0.5)
        after = rss_kib(proc.pid)
        for w in writers:
            w.close()
        return before, after

    try:
        before, after = asyncio.run(held())
    finally:
        proc.kill()
        proc.wait()
    return {"rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": (after - before) / HELD}


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD * 3:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(HELD * 4, hard), hard))
    rates = {service: measure_rates(service) for service in ("ssh", "redis")}
    memory = {mode: measure_memory(mode) for mode in ("baseline", "decoy", "decoy-noauth")}
    lines = [
        "# Honeypot benchmark",
        "",
        "- command: `.venv/bin/python benchmarks/bench_honeypot.py`",
        f"- machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"- run: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "## Connections per second one decoy absorbs",
        "",
        f"{CONNECTIONS} visits over loopback, {CONCURRENCY} at a time, server in its own process"
        f" (best of {REPEAT} runs, baseline and decoy interleaved)."
        " A visit: connect, read the greeting (SSH) or send `PING` and read `+PONG` (Redis),"
        " close. The decoy builds and serialises one `honeypot` event per visit; the baseline"
        " is a bare asyncio server answering the same bytes. The load generator is Python"
        " too, on the same cores, so both figures are lower bounds; the ratio is the point.",
        "",
        "| service | baseline (conn/s) | decoy (conn/s) | decoy / baseline |",
        "|---|---:|---:|---:|",
    ]
    for service in ("ssh", "redis"):
        b, d = rates[service]["baseline"], rates[service]["decoy"]
        label = f"{service} (asyncssh)" if service == "ssh" else service
        lines.append(f"| {label} | {b:,.0f} | {d:,.0f} | {d / b:.2f} |")
        if "decoy-noauth" in rates[service]:
            n = rates[service]["decoy-noauth"]
            lines.append(f"| {service} (banner only) | {b:,.0f} | {n:,.0f} | {n / b:.2f} |")
    mb, md, mn = memory["baseline"], memory["decoy"], memory["decoy-noauth"]
    lines += [
        "",
        "## Memory per open session",
        "",
        f"RSS growth of the server process while {HELD} silent visitors hold an SSH session"
        " (greeting sent, waiting for the client's version line).",
        "",
        "| server | RSS before (KiB) | RSS with sessions (KiB) | KiB per session |",
        "|---|---:|---:|---:|",
        f"| baseline asyncio | {mb['rss_before_kib']:,} | {mb['rss_after_kib']:,} "
        f"| {mb['kib_per_session']:.1f} |",
        f"| decoy (asyncssh) | {md['rss_before_kib']:,} | {md['rss_after_kib']:,} "
        f"| {md['kib_per_session']:.1f} |",
        f"| decoy (banner only, `ssh_auth = false`) | {mn['rss_before_kib']:,} "
        f"| {mn['rss_after_kib']:,} | {mn['kib_per_session']:.1f} |",
        "",
        f"Decoy / baseline memory per session: "
        f"{md['kib_per_session'] / max(mb['kib_per_session'], 0.1):.2f}. With the default caps"
        f" (`max_sessions = 512`) the decoys hold at most "
        f"{512 * md['kib_per_session'] / 1024:.1f} MiB of session state.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"rates": rates, "memory": memory}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "SERVICE"))
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1]), args.serve[2]))
    else:
        main()
