"""Live switching between the variants of a compiled plan family (issue 12 item 3): every variant's
workers start with their modules loaded, ``FamilyHead.switch`` moves new requests to another layout
while the old one drains, and no request is lost, answered twice or answered wrong."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeplan.runtime.head import FamilyHead, HeadConfig
from edgeplan.runtime.local import discover, start_pipeline
from tests.families import DIMS, VARIANTS, x_batch
from tests.runtime.fake_artifacts import WORKER, reference


def test_a_family_folder_is_discovered_with_every_variant_and_its_slots(numpy_family):
    art = discover(numpy_family[0])
    assert art.variant == "plan-0" and [v.variant for v in art.variants] == ["plan-0", "plan-1", "plan-2"]
    v1 = art.variants[1]
    assert [(s.device, s.stage, s.lo, s.hi) for _, s in v1.stages] == [("b", 0, 0, 4), ("c", 1, 0, 4)]
    # plan-0 and plan-1 run the same module on c: one folder, one slot file per variant
    c0, c1 = art.variants[0].stages[-1][0], v1.stages[-1][0]
    assert c0 == c1 and v1.spec_file(c1, v1.stages[-1][1]).name == "plan-1-stage1.json"


def test_switching_back_and_forth_under_load_loses_and_duplicates_nothing(numpy_family):
    root, weights = numpy_family
    # dead after 5 s without heartbeats (default 1.5 s): seven worker processes and the head on a loaded 2-core
    # machine once all missed 1.5 s of heartbeats, and this test is about switching, not fault detection
    p = start_pipeline(root, local=True, command=WORKER, config=HeadConfig(window=6, dead_after_s=5.0))
    try:
        head = p.head
        assert isinstance(head, FamilyHead) and head.active == "plan-0"
        # one process per (board, module): c's stage-1 module serves plan-0 and plan-1 from one process
        assert sorted(len(w.slots) for w in p.workers) == [1] * 6 + [2]
        xs = [[x_batch(head.batch, i)] for i in range(150)]
        stop = threading.Event()
        order = ["plan-1", "plan-2", "plan-0", "plan-2", "plan-1", "plan-0"]

        def flip():
            k = 0
            while not stop.wait(0.04):
                head.switch(order[k % len(order)], f"test flip {k}")
                k += 1

        t = threading.Thread(target=flip)
        t.start()
        try:
            res = head.run(xs)
        finally:
            stop.set()
            t.join()
        assert res.completed == len(xs) and not res.failures and res.lost == 0 and res.duplicated == 0
        for x, out in zip(xs, res.outputs, strict=True):
            np.testing.assert_allclose(out[0], reference(weights, x[0]), rtol=1e-5, atol=1e-6)
        assert all(res.variants[v] > 0 for v in VARIANTS), res.variants  # each layout answered some
        assert sum(res.variants.values()) == len(xs)
        assert len(res.switches) >= 3
        done = [s for s in res.switches if s["pause_s"] is not None]
        assert done and all(s["pause_s"] >= 0 and s["drain_s"] is not None for s in done)
        st = head.status()
        # the flipper may switch once more after run() returned and before it saw ``stop`` (seen: epoch 12, the
        # run's record 11): the head's own record holds every switch, the run's those up to its end
        assert st["variant"] == head.active and st["family_epoch"] == len(head.switches) >= len(res.switches)
        assert st["completed_total"] == len(xs) and st["duplicated_total"] == 0
        assert set(st["family_workers"]) == set(VARIANTS)
    finally:
        p.close()


def test_a_switch_is_refused_for_an_unknown_or_broken_variant_and_a_no_op_to_itself(numpy_family):
    p = start_pipeline(numpy_family[0], local=True, command=WORKER)
    try:
        head = p.head
        assert head.switch("plan-0") is None
        with pytest.raises(ValueError, match="unknown variant 'plan-9'.*plan-0, plan-1, plan-2"):
            head.switch("plan-9")
        w = next(w for w in p.workers if w.device == "a" and w.slots == (("plan-2", 0),))
        w.process.kill()  # plan-2's only stage-0 worker
        deadline = time.monotonic() + 10
        while head.heads["plan-2"].ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        from edgeplan.runtime.head import PipelineError

        with pytest.raises(PipelineError, match="cannot switch to plan-2: stage 0 has no live replica: board a"):
            head.switch("plan-2")
        assert head.active == "plan-0"
        out = head.submit([x_batch(head.batch, 1)]).result(timeout=10)  # the active layout still serves
        assert out[0].shape == (head.batch, DIMS[-1])
    finally:
        p.close()
