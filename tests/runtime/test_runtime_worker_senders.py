"""Review mends of the stage worker (runtime/worker.py): one way a micro-batch reaches the module
(``run_range``, for its own range and for a larger one after a sibling failed alike), and a senders table
that is add-only while serving and takes no new sender once the worker closed them (``_sender`` reads it
without the lock)."""

from __future__ import annotations

import threading

import numpy as np

from edgeplan.runtime.spec import StageSpec
from edgeplan.runtime.worker import Route, Worker

from .fake_artifacts import make_artifacts

DIMS = (4, 3)


def _worker(tmp_path) -> Worker:
    make_artifacts(tmp_path / "art", [[("a", 2)]], DIMS)
    calls = []

    def runner(inputs):
        calls.append(inputs[0].shape[0])
        return [np.ones((inputs[0].shape[0], DIMS[1]), np.float32)]

    w = Worker(StageSpec.load(str(tmp_path / "art" / "a" / "stage0" / "stage.json")), runner)
    w.calls = calls
    return w


def test_every_microbatch_goes_through_run_range(tmp_path):
    w = _worker(tmp_path)
    through = []
    run_range = w.run_range
    w.run_range = lambda inputs: through.append(inputs[0].shape[0]) or run_range(inputs)
    sent = []
    w._send = lambda address, frame, device, stage: sent.append((frame.lo, frame.hi, frame.tensors[0].shape))
    down = (("b", 1, "127.0.0.1:1", 0, 3),)
    own = ((1, 0, 0), Route(0, 0, 2, down), [(0, 2, (np.zeros((2, DIMS[0]), np.float32),))])
    more = ((2, 0, 0), Route(0, 0, 3, down), [(0, 3, (np.zeros((3, DIMS[0]), np.float32),))])  # a sibling failed
    w._process(own)
    w._process(more)
    assert through == [2, 3]  # both ways in, one path
    assert w.calls == [2, 2, 2]  # its compiled batch of 2: once, then twice (3 = 2 + 1 zero-padded)
    assert w.stats["chunked_runs"] == 1 and w.stats["runs"] == 2
    assert sent == [(0, 2, (2, DIMS[1])), (0, 3, (3, DIMS[1]))]


def test_senders_are_added_once_and_none_after_the_worker_closed_them(tmp_path):
    w = _worker(tmp_path)
    w.send_timeout_s = 0.2
    w.bind()
    t = threading.Thread(target=w.serve_forever, daemon=True)
    t.start()
    first = w._sender("127.0.0.1:9", "b", 1)
    assert w._sender("127.0.0.1:9", "b", 1) is first and first.peer == "b/stage1"
    assert w._sender("127.0.0.1:10", "head", 2).peer == "head"
    w.stop()
    t.join(timeout=10)
    assert not t.is_alive()
    assert w._sender("127.0.0.1:11", "c", 1) is None  # closed: no sender (and no thread) outlives the worker
    assert sorted(w._senders) == ["127.0.0.1:10", "127.0.0.1:9"]
    w._send("127.0.0.1:11", None, "c", 1)  # a late output after stop: nothing is sent, nothing is created
    assert "127.0.0.1:11" not in w._senders
