"""Module time on a busy worker: the calling thread's CPU clock vs process CPU (issue 14, module/hop split).

An ONNX Runtime stage module (a chain of 8 MatMuls, one intra-op thread, as the emulated boards run it) is
called through ``runtime.worker.Worker`` alone, then while a send thread of the same process streams
frames to a slow reader (hashing and writing 64 KiB chunks, as a send loop on a slow link spends its CPU).
Per call: the worker's module CPU with the thread clock (what it reports now) and with process CPU (what it
reported before), beside the call alone. The issue saw one vit layer at 1.1 ms on one board and 0.3 ms on
the next: process CPU charged the send thread to the module.

Run: ``python -m benchmarks.bench_module_clock [--calls N] [--size N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _module(path: Path, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32) / n, "w")
    nodes = [helper.make_node("MatMul", ["input0" if k == 0 else f"h{k - 1}", "w"], [f"h{k}"]) for k in range(8)]
    nodes.append(helper.make_node("Identity", ["h7"], ["output0"]))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input0", TensorProto.FLOAT, [2, n])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [2, n])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    onnx.save(model, str(path))


def _sender(stop: threading.Event) -> None:
    a, b = socket.socketpair()
    chunk = bytes(64 << 10)

    def drain():  # a slow link: the reader takes 64 KiB every 0.2 ms, until the sender closes
        while b.recv(64 << 10):
            if not stop.is_set():
                time.sleep(0.0002)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        while not stop.is_set():
            hashlib.sha256(chunk).digest()
            a.sendall(chunk)
    finally:
        a.close()
        t.join()
        b.close()


def _run(worker, x, calls: int, busy: bool) -> tuple[float, float, float]:
    """(module CPU per call as charged, process CPU per call, wall per call) in ms."""
    stop = threading.Event()
    t = threading.Thread(target=_sender, args=(stop,), daemon=True)
    if busy:
        t.start()
        time.sleep(0.05)
    c0, p0, w0 = worker.snapshot()["compute_cpu_s"], time.process_time(), time.perf_counter()
    for _ in range(calls):
        worker.run_range(x)
    c1, p1, w1 = worker.snapshot()["compute_cpu_s"], time.process_time(), time.perf_counter()
    stop.set()
    if busy:
        t.join()
    return ((c1 - c0) / calls * 1e3, (p1 - p0) / calls * 1e3, (w1 - w0) / calls * 1e3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="MatMul width (module cost)")
    args = ap.parse_args(argv)
    from edgeplan.runtime.backend_onnxruntime import load_model_file
    from edgeplan.runtime.spec import Peer, StageSpec, Tensor
    from edgeplan.runtime.worker import Worker

    n = args.size
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "stage.onnx"
        _module(path, n)
        runner = load_model_file(path, threads=1)
        head = (Peer("head", -1, "127.0.0.1:2", 0, 2),)
        spec = StageSpec(model="bench", plan_sha256="", stage=0, n_stages=1, device="b", unit="cpu", target="x86",
                         backend="onnxruntime", module="stage.onnx", listen="127.0.0.1:0", microbatch=2, lo=0, hi=2,
                         inputs=(Tensor("input0", (2, n), "float32"),), outputs=(Tensor("output0", (2, n), "float32"),),
                         upstream=head, downstream=head, files=())
        x = [np.ones((2, n), np.float32)]
        rows = []
        for label, calling in (("thread clock (now)", True), ("process CPU (before)", False)):
            runner.calling_thread = calling
            w = Worker(spec, runner)
            _run(w, x, 10, False)  # warm-up
            alone = _run(w, x, args.calls, False)
            busy = _run(w, x, args.calls, True)
            rows.append((label, alone, busy))
    print(f"module: 8 x MatMul {n}x{n}, 2 samples, ONNX Runtime 1 thread; {args.calls} calls each; ms per call")
    print(f"{'clock':<22}{'alone':>8}{'+sender':>9}{'ratio':>7}{'process CPU +sender':>21}{'wall +sender':>14}")
    for label, alone, busy in rows:
        print(f"{label:<22}{alone[0]:>8.3f}{busy[0]:>9.3f}{busy[0] / alone[0]:>6.2f}x{busy[1]:>21.3f}{busy[2]:>14.3f}")
    now, before = rows[0], rows[1]
    print(f"module_clock: module CPU under a busy send thread / alone: thread clock {now[2][0] / now[1][0]:.2f}x, "
          f"process CPU {before[2][0] / before[1][0]:.2f}x")


if __name__ == "__main__":
    main()
