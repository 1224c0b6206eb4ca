"""The runtime's CPU per byte between two boards of the emulated testbed, next to loopback (issue 14).

`emulate --write-cluster` prices each board's per-byte hop at ``emulate.TESTBED_HOP_BYTE_NS`` / its cores.
Every testbed link carries MTU-sized packets (netns.py: gso_max_segs 1) through a veth, a bridge and htb,
and each packet costs CPU on both ends, so the figure is the testbed's, not the loopback one. Builds the
three-node-hetero testbed, streams frames between gpu-board and npu-board both ways (``wire.send_frame`` /
``wire.Reader``, as the workers do), and prints each side's process CPU per byte; then the same frames over
loopback in this process, side by side, and the figure the emulated cluster file uses.

    sudo python -m benchmarks.bench_testbed_hop_byte [--frames 40] [--sizes 200000,800000]

Measured here (2 vCPUs, load 0.5, 40 frames), ns/B of host CPU, send / receive: gpu-board -> npu-board
4.6 / 12.3 (200 KB frames: per-frame costs weigh more), 4.1 / 7.3 (800 KB); npu-board -> gpu-board 7.1 / 5.1,
4.2 / 4.9; loopback 0.14-0.46 (19-38x less). An earlier run: 800 KB 3.4 / 5.5 and 4.7 / 5.5. A fit over two
vit-tiny plans on the testbed whose cut moved 4x the bytes gave 3.9 (the sending board) and 5.7 (the
receiving board).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import numpy as np

from benchmarks.bench_recv_trickle import tcp_pair
from edgeplan.runtime import wire

PEER = r'''
import socket, sys, time
import numpy as np
from edgeplan.runtime import wire
role, addr, port, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = np.ones(size // 4, np.float32)
if role == "recv":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    r = wire.Reader(conn)
    r.recv()  # the first frame opens the window: not timed
    c0 = time.process_time()
    for _ in range(n - 1):
        r.recv()
else:
    for _ in range(100):
        try:
            conn = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.05)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire.send_frame(conn, wire.Frame(wire.DATA, request_id=0, tensors=(x,)))
    c0 = time.process_time()
    for i in range(1, n):
        wire.send_frame(conn, wire.Frame(wire.DATA, request_id=i, tensors=(x,)))
print((time.process_time() - c0) / (n - 1) / size * 1e9, flush=True)
if role == "send":
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
'''


def over_testbed(sender, receiver, frames: int, size: int) -> tuple[float, float]:
    """(send, receive) process CPU ns/B of a frame stream from board ``sender`` to board ``receiver``."""
    rx = subprocess.Popen(receiver.launch_prefix() + [sys.executable, "-c", PEER, "recv", receiver.address, "7777",
                                                      str(frames), str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        tx = subprocess.run(sender.launch_prefix() + [sys.executable, "-c", PEER, "send", receiver.address, "7777",
                                                      str(frames), str(size)], capture_output=True, text=True,
                            check=True, timeout=300)
        got = rx.stdout.readline()
        rx.wait(timeout=60)
    finally:
        rx.kill()
    return float(tx.stdout.split()[-1]), float(got)


def over_loopback(frames: int, size: int) -> tuple[float, float]:
    """(send, receive) thread CPU ns/B of the same stream over TCP loopback in this process."""
    a, b = tcp_pair()
    x = np.ones(size // 4, np.float32)
    cpu: dict[str, float] = {}

    def send() -> None:
        c0 = time.thread_time()
        for i in range(frames):
            wire.send_frame(a, wire.Frame(wire.DATA, request_id=i, tensors=(x,)))
        cpu["send"] = time.thread_time() - c0

    t = threading.Thread(target=send)
    t.start()
    r = wire.Reader(b)
    c0 = time.thread_time()
    for _ in range(frames):
        r.recv()
    cpu["recv"] = time.thread_time() - c0
    t.join()
    a.close()
    b.close()
    return cpu["send"] / frames / size * 1e9, cpu["recv"] / frames / size * 1e9


def main(argv: list[str] | None = None) -> None:
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import calibrate as host_speed
    from edgeplan.testbed import emulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--sizes", default="200000,800000", help="frame sizes in bytes, comma-separated")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with open("/proc/loadavg") as f:
        print(f"load {' '.join(f.read().split()[:3])}; {args.frames} frames per stream; ns/B of host CPU")
    spec = load_cluster("examples/clusters/three-node-hetero.yaml")
    host = host_speed.measure(0.2)
    with emulate.testbed(spec, host_core_flops=host.of("conv"), echo=lambda *_: None, max_board_cores=0.5) as (bed, _):
        boards = {b.device: b for b in bed.boards}
        for s, r in (("gpu-board", "npu-board"), ("npu-board", "gpu-board")):
            for size in sizes:
                tx, rx = over_testbed(boards[s], boards[r], args.frames, size)
                ltx, lrx = over_loopback(args.frames, size)
                print(f"  {s} -> {r}, {size} B frames: send {tx:5.2f} receive {rx:5.2f}; loopback send {ltx:4.2f} "
                      f"receive {lrx:4.2f} ({(tx + rx) / (ltx + lrx):.0f}x)")
    print(f"  the emulated cluster prices {emulate.TESTBED_HOP_BYTE_NS} ns/B / cores per byte in or out")


if __name__ == "__main__":
    main()
