"""Live switching between the variants of a compiled plan family (issue 12 item 3): every variant's
workers start with their modules loaded, ``FamilyHead.switch`` moves new requests to another layout
while the old one drains, and no request is lost, answered twice or answered wrong."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from edgeplan import jsonio
from edgeplan.runtime.head import FamilyHead, HeadConfig
from edgeplan.runtime.local import discover, start_pipeline
from edgeplan.runtime.spec import Peer, StageSpec, Tensor
from tests.runtime.fake_artifacts import WORKER, reference

DIMS = (6, 5, 3)
# Two stages (one weight matrix each); each variant spreads them differently over boards a, b, c.
VARIANTS = {
    "plan-0": [[("a", 2), ("b", 2)], [("c", 4)]],
    "plan-1": [[("b", 4)], [("c", 4)]],  # shares c's stage-1 module with plan-0
    "plan-2": [[("a", 4)], [("b", 1), ("c", 3)]],
}


def make_family(root, variants=VARIANTS, dims=DIMS, microbatches: int = 2, delay: float = 0.002, seed: int = 0):
    """A compiled-family folder as adapt/compile.py writes it, for the numpy_test backend; returns the weights."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((dims[k], dims[k + 1])) / np.sqrt(dims[k])).astype(np.float32)
               for k in range(len(dims) - 1)]
    boards: dict = {}
    for name, groups in variants.items():
        m = sum(n for _, n in groups[0])
        slots = []
        for k, g in enumerate(groups):
            lo, row = 0, []
            for dev, n in g:
                row.append(Peer(dev, k, "127.0.0.1:1", lo, lo + n))
                lo += n
            slots.append(row)
        head = (Peer("head", -1, "127.0.0.1:2", 0, m),)
        stages = []
        for k, row in enumerate(slots):
            for p in row:
                mod = f"cpu-layers{k}-{k + 1}-b{p.hi - p.lo}"
                d = root / p.device / mod
                board = boards.setdefault(p.device, {"modules": {}, "slots": {}})
                if mod not in board["modules"]:
                    d.mkdir(parents=True)
                    np.savez(d / "stage.npz", w=weights[k], delay=np.float64(delay))
                    board["modules"][mod] = {"plans": []}
                board["modules"][mod]["plans"].append(name)
                sha = hashlib.sha256((d / "stage.npz").read_bytes()).hexdigest()
                b = p.hi - p.lo
                spec = StageSpec(
                    model="toy", plan_sha256=name * 8, stage=k, n_stages=len(groups), device=p.device, unit="cpu",
                    target="x86", backend="numpy_test", module="stage.npz", listen="127.0.0.1:0", microbatch=m,
                    lo=p.lo, hi=p.hi, inputs=(Tensor(f"in{k}", (b, dims[k]), "float32"),),
                    outputs=(Tensor(f"out{k}", (b, dims[k + 1]), "float32"),),
                    upstream=head if k == 0 else tuple(slots[k - 1]),
                    downstream=head if k == len(groups) - 1 else tuple(slots[k + 1]),
                    files=(("stage.npz", sha),))
                jsonio.write(d / f"{name}-stage{k}.json", spec.to_json())
                board["slots"].setdefault(name, []).append({"stage": k, "spec": f"{mod}/{name}-stage{k}.json",
                                                            "lo": p.lo, "hi": p.hi})
            stages.append({"index": k, "start": k, "stop": k + 1, "compute_s": 0.003,
                           "replicas": [{"device": p.device, "unit": "cpu", "samples": p.hi - p.lo}
                                        for p in row]})
        (root / name).mkdir()
        jsonio.write(root / name / "plan.json", {
            "schema_version": 1, "model": "toy", "mode": "inference", "objective": "throughput",
            "batch": m * microbatches, "microbatches": microbatches, "head": "head", "stages": stages,
            "predicted": {"latency_s": 0.01, "throughput": 1000.0, "energy_j": 0.0}})
    jsonio.write(root / "compile-family.json", {"schema_version": 2, "model": "toy", "plans": list(variants),
                                                "initial": next(iter(variants)), "boards": boards})
    return weights


def _x(batch: int, i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((batch, DIMS[0])).astype(np.float32)


def test_a_family_folder_is_discovered_with_every_variant_and_its_slots(tmp_path):
    make_family(tmp_path)
    art = discover(tmp_path)
    assert art.variant == "plan-0" and [v.variant for v in art.variants] == ["plan-0", "plan-1", "plan-2"]
    v1 = art.variants[1]
    assert [(s.device, s.stage, s.lo, s.hi) for _, s in v1.stages] == [("b", 0, 0, 4), ("c", 1, 0, 4)]
    # plan-0 and plan-1 run the same module on c: one folder, one slot file per variant
    c0, c1 = art.variants[0].stages[-1][0], v1.stages[-1][0]
    assert c0 == c1 and v1.spec_file(c1, v1.stages[-1][1]).name == "plan-1-stage1.json"


def test_switching_back_and_forth_under_load_loses_and_duplicates_nothing(tmp_path):
    weights = make_family(tmp_path)
    p = start_pipeline(tmp_path, local=True, command=WORKER, config=HeadConfig(window=6))
    try:
        head = p.head
        assert isinstance(head, FamilyHead) and head.active == "plan-0"
        # one process per (board, module): c's stage-1 module serves plan-0 and plan-1 from one process
        assert sorted(len(w.slots) for w in p.workers) == [1] * 6 + [2]
        xs = [[_x(head.batch, i)] for i in range(150)]
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
        assert st["variant"] == head.active and st["family_epoch"] == len(res.switches)
        assert st["completed_total"] == len(xs) and st["duplicated_total"] == 0
        assert set(st["family_workers"]) == set(VARIANTS)
    finally:
        p.close()


def test_a_switch_is_refused_for_an_unknown_or_broken_variant_and_a_no_op_to_itself(tmp_path):
    make_family(tmp_path)
    p = start_pipeline(tmp_path, local=True, command=WORKER)
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
        out = head.submit([_x(head.batch, 1)]).result(timeout=10)  # the active layout still serves
        assert out[0].shape == (head.batch, DIMS[-1])
    finally:
        p.close()
