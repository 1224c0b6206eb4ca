"""The hop path of a stage worker (issue 11 item 5): what makes a hop cost per frame, checked in-process.

A large frame is read into the buffer the last one was read into: a fresh one per frame costs page faults
and, on the way there, a chunk copied into it (the regression behind 1.5x the raw relay at 256 KiB), and
a buffer in turn with another one is colder in the caches than the one just sent from."""

from __future__ import annotations

import socket
import threading

import numpy as np

from edgeplan.runtime import wire
from edgeplan.runtime.spec import Peer, StageSpec, Tensor
from edgeplan.runtime.worker import Worker

SHAPE = (1, 65536)  # 256 KiB of float32


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        assert k, "the worker closed the connection"
        got += k


def test_a_worker_hop_reads_each_large_frame_into_a_reused_buffer(monkeypatch):
    """20 frames of 256 KiB through an identity worker: every output equals its input, the worker allocates
    a large buffer for the first frames only (numpy.empty counted in the worker's threads), and from the
    third frame on the module gets each input in the same buffer as the last."""
    back = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{back.getsockname()[1]}"
    spec = StageSpec(model="hop", plan_sha256="0", stage=0, n_stages=1, device="w", unit="cpu", target="x86",
                     backend="identity", module="-", listen="127.0.0.1:0", microbatch=1, lo=0, hi=1,
                     inputs=(Tensor("x", SHAPE, "float32"),), outputs=(Tensor("y", SHAPE, "float32"),),
                     upstream=(Peer("head", -1, address, 0, 1),), downstream=(Peer("head", -1, address, 0, 1),))
    inputs_at = []  # where each input tensor lies (the buffer the Reader read the frame into)

    def identity(xs):
        inputs_at.append(xs[0].ctypes.data)
        return list(xs)

    worker = Worker(spec, identity, log=lambda msg: None)
    worker.bind()
    large, real_empty = [], np.empty

    def counting_empty(shape, *args, **kw):
        if isinstance(shape, int) and shape >= 200_000:
            large.append(shape)
        return real_empty(shape, *args, **kw)

    monkeypatch.setattr(np, "empty", counting_empty)
    threading.Thread(target=worker.serve_forever, daemon=True).start()
    cli = socket.create_connection(wire.parse_address(worker.address))
    conn = None
    try:
        rng = np.random.default_rng(0)
        for i in range(20):
            x = rng.standard_normal(SHAPE).astype(np.float32)
            wire.send_frame(cli, wire.Frame(wire.DATA, request_id=i, lo=0, hi=1, tensors=(x,)))
            if conn is None:
                conn, _ = back.accept()  # the worker connects on its first output
            out = bytearray(len(wire.encode(wire.Frame(wire.DATA, request_id=i, lo=0, hi=1, tensors=(x,)))))
            _recv_exact(conn, memoryview(out))
            f = wire.decode(out)
            assert (f.request_id, f.stage) == (i, 1)
            np.testing.assert_array_equal(f.tensors[0], x)
        assert len(large) <= 2, f"{len(large)} large buffers for 20 frames: the Reader does not reuse its buffer"
        assert len(set(inputs_at[2:])) == 1, "frames were read into more than one buffer in turn"
        assert worker.stats["frames_in"] == worker.stats["runs"] == 20
        assert worker.stats["bytes_in"] == 20 * x.nbytes
    finally:
        worker.stop()
        for s in (cli, conn, back):
            if s is not None:
                s.close()
