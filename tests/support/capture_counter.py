"""Counts what a filtered capture socket receives next to an unfiltered one.

Run inside a namespace: ``python capture_counter.py IFACE SECONDS``; prints ``ready``, then
after SECONDS one JSON line of counts. Used to prove the BPF filter works in the real kernel.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

from garrison.sensors.decode import decoder_for
from garrison.sensors.live import open_socket


def main() -> None:
    iface, seconds = sys.argv[1], float(sys.argv[2])
    filtered = open_socket(iface, "scan", 256)
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    raw.bind((iface, 3))
    raw.setblocking(False)
    dec = decoder_for(1)
    seen = dict.fromkeys(
        ("frames", "data", "syn", "null", "unfiltered", "data_unfiltered"), 0
    )
    print("ready", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([filtered, raw], [], [], 0.2)
        for sock in ready:
            key = "frames" if sock is filtered else "unfiltered"
            while True:
                try:
                    frame = sock.recv(65535)
                except BlockingIOError:
                    break
                seen[key] += 1
                p = dec(0.0, frame)
                if p is None or p.proto != 6:
                    continue
                if sock is raw:
                    if p.payload_len > 0:
                        seen["data_unfiltered"] += 1
                    continue
                if p.payload_len > 0 and not p.flags & 0x07:
                    seen["data"] += 1
                if p.flags & 0x3F == 0x02:
                    seen["syn"] += 1
                if p.flags & 0x3F == 0:
                    seen["null"] += 1
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
