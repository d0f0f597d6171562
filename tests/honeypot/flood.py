"""A bounded connection flood, run from the outside namespace by the flood test.

Usage: ``python flood.py HOST PORTS COUNT SOURCES HOLD STATUS_PATH``: open COUNT connections
(round-robin over the comma-separated PORTS and source addresses SOURCES, at most 400
connecting at once, 5 s per connect) and keep all of them open. Writes
``{"attempted", "connected", "failed", "held"}`` as JSON to STATUS_PATH (held: connections the
server has not closed), then holds HOLD seconds and exits. The whole run is bounded by 120 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys


async def main(host: str, ports: str, count: int, sources: str, hold: float, status: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    port_list = [int(p) for p in ports.split(",")]
    src_list = sources.split(",")
    gate = asyncio.Semaphore(400)
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.Task[None]] = []
    failed = 0
    closed = 0

    async def drain(r: asyncio.StreamReader) -> None:
        nonlocal closed
        try:
            while await r.read(4096):
                pass
        except OSError:
            pass
        closed += 1

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    host, port_list[i % len(port_list)], local_addr=(src_list[i % len(src_list)], 0)
                ), 5)
                writers.append(w)
                readers.append(asyncio.create_task(drain(r)))
            except (OSError, TimeoutError):
                failed += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.sleep(1.0)
    held = len(writers) - closed  # connections the server has not closed (yet)
    tmp = status + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"attempted": count, "connected": len(writers), "failed": failed,
                   "held": held}, f)
    os.replace(tmp, status)
    await asyncio.sleep(hold)
    for w in writers:
        w.transport.abort()
    for t in readers:
        t.cancel()


if __name__ == "__main__":
    a = sys.argv[1:7]
    asyncio.run(asyncio.wait_for(main(a[0], a[1], int(a[2]), a[3], float(a[4]), a[5]), 120))
