"""The runtime's receive CPU per byte depends on how the bytes arrive (issue 14, per-byte hop).

A frame that is already in the socket buffer is read in a few large recvs; one that trickles in over a
shaped link (the emulated testbed's tc htb, a real 100 Mbit/s link) woke the reader once per piece that
arrived, and each wake-up costs a recv, a Python loop turn and a thread switch, paid out of the board's
CPU beside its stage. ``wire.Reader`` now waits for the rest of a body with SO_RCVLOWAT and poll (it wakes
once ``WAIT_BYTES`` or the rest of the frame has arrived). Sends one 1.5 MiB frame (a
wide_stem micro-batch of 2) over TCP loopback whole, then in pieces of 64 KiB .. 1448 B (one TCP segment)
with 0.2 ms between pieces, and prints the reading thread's CPU per byte with plain recvs and with the
low-water mark, side by side in one run.

    python benchmarks/bench_recv_trickle.py

Measured here (2 vCPUs, load 1.1), ns/B plain -> low-water mark: whole 0.16 -> 0.14; 64 KiB pieces 0.35 ->
0.22; 16 KiB 0.63 -> 0.27; 4 KiB 2.2 -> 0.56; 1448 B 6.1 -> 1.3 (4.8x less). A mark the kernel may grow the
receive buffer for (and then clamps the TCP window to) read 6.1 -> 0.5 (11x); the mark is kept within a
quarter of the buffer as it is. Before this change the emulated testbed read 4.3 ns/B of CPU per byte on a
0.5-core board fed 1.5 MiB per call over a shaped link and 13-15 ns/B (vit-tiny, 0.8 MB per call; 26-31
ns/B of the board's time), and the per-call hop fitted from one plan was wrong for the next plan's bytes.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from edgeplan.runtime import wire

FRAME = 1_572_864


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP loopback connection (sender ``a`` with TCP_NODELAY, receiver ``b``)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def receive_cpu_s(piece: int, gap_s: float, frames: int = 6, lowat: bool = True) -> float:
    """Median CPU seconds of the reading thread per frame, the frame sent in ``piece``-byte sends;
    ``lowat`` False: the Reader's plain recvs (as before SO_RCVLOWAT)."""
    a, b = tcp_pair()
    x = np.zeros(FRAME // 4, dtype=np.float32)
    raw = b"".join(bytes(m) for m in wire.buffers(wire.Frame(wire.DATA, request_id=1, tensors=(x,))))
    cpu: list[float] = []

    def read() -> None:
        r = wire.Reader(b)
        if not lowat:
            r._lowat = 0  # the Reader's state on a socket with a timeout: plain recvs
        for _ in range(frames):
            c0 = time.thread_time()
            r.recv()
            cpu.append(time.thread_time() - c0)

    t = threading.Thread(target=read)
    t.start()
    try:
        for _ in range(frames):
            for i in range(0, len(raw), piece):
                a.sendall(raw[i:i + piece])
                if gap_s:
                    time.sleep(gap_s)
        t.join()
    finally:
        a.close()
        b.close()
    return float(np.median(cpu))


def main(argv: list[str] | None = None) -> None:  # argv: `python -m benchmarks` passes []
    with open("/proc/loadavg") as f:
        print(f"load {' '.join(f.read().split()[:3])}; one frame of {FRAME} bytes over TCP loopback")
    for piece, gap in ((4 << 20, 0.0), (65536, 2e-4), (16384, 2e-4), (4096, 2e-4), (1448, 2e-4)):
        plain, low = receive_cpu_s(piece, gap, lowat=False), receive_cpu_s(piece, gap)
        label = "whole" if piece >= FRAME else f"{piece} B pieces, {gap * 1e3:g} ms apart"
        print(f"  {label:<28} reader CPU per frame: plain {plain * 1e3:6.3f} ms = {plain / FRAME * 1e9:.3f} ns/B; "
              f"low-water mark {low * 1e3:6.3f} ms = {low / FRAME * 1e9:.3f} ns/B ({plain / low:.1f}x less)")


if __name__ == "__main__":
    main()
