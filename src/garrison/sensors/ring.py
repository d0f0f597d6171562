"""A TPACKET_V3 receive ring: frames read from shared memory, no system call per packet.

The kernel fills blocks of a memory-mapped ring with the frames that passed the BPF filter and
hands a block to user space when it is full or ``retire_ms`` milliseconds old; the socket turns
readable then. Each frame carries the kernel's receive timestamp. Python walks the block, then
returns it to the kernel. This is what libpcap does on Linux; it removes the ``recvfrom`` per
packet that bounds the plain socket path.
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Iterator
from typing import Final

SOL_PACKET: Final = 263
PACKET_VERSION: Final = 10
PACKET_RX_RING: Final = 5
TPACKET_V3: Final = 2
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, ...
_BLOCK = struct.Struct("=8xIII")
# struct tpacket3_hdr (48 bytes, aligned) followed by struct sockaddr_ll: next_offset, sec,
# nsec, snaplen, (len, status), mac, (net, hv1, padding, sll_family, sll_protocol), ifindex,
# hatype, pkttype.
_FRAME = struct.Struct("=IIII8xH26xiHB")


class Ring:
    """The receive ring of one AF_PACKET socket (call :meth:`frames` when it is readable)."""

    def __init__(
        self, sock: socket.socket, block_size: int = 1 << 18, blocks: int = 64,
        retire_ms: int = 20,
    ) -> None:
        self.sock = sock
        self.block_size = block_size
        self.blocks = blocks
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048
        req = struct.pack("=IIIIIII", block_size, blocks, frame_size,
                          block_size // frame_size * blocks, retire_ms, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.map = mmap.mmap(sock.fileno(), block_size * blocks, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._next = 0

    def frames(self, max_blocks: int = 8) -> Iterator[tuple[float, int, int, bytes]]:
        """Yield ``(timestamp, hatype, pkttype, frame)`` from every block ready for us (at most
        ``max_blocks``, so one busy ring cannot starve the event loop), returning each block to
        the kernel once walked."""
        mm = self.map
        frame = _FRAME.unpack_from
        for _ in range(max_blocks):
            base = self._next * self.block_size
            status, count, first = _BLOCK.unpack_from(mm, base)
            if not status & TP_STATUS_USER:
                return
            off = base + first
            for _ in range(count):
                nxt, sec, nsec, snaplen, mac, _ifindex, hatype, pkttype = frame(mm, off)
                start = off + mac
                yield sec + nsec * 1e-9, hatype, pkttype, mm[start:start + snaplen]
                off += nxt
            struct.pack_into("=I", mm, base + 8, TP_STATUS_KERNEL)
            self._next = (self._next + 1) % self.blocks

    def close(self) -> None:
        self.map.close()
