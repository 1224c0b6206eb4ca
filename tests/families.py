"""The small plan families the switching tests share (tests/runtime/test_runtime_switch*.py, tests/adapt/):
one definition, so the runtime's and the adaptation's tests switch between the same layouts.

- ``THREE_HOSTS``: cluster YAML of three hosts a, b, c (c 4x slower); ``edgeplan plan lenet5 --variants
  slowdown:b=1,4 --variants slowdown:a=1,4`` on it gives a family whose variants share modules
  (conftest fixture ``lenet5_family``: planned once per session).
- ``make_family``: a compiled-family folder for the numpy_test backend (no torch, starts in milliseconds);
  conftest fixture ``numpy_family`` builds it in the test's tmp_path.
"""

from __future__ import annotations

import numpy as np

from edgeplan import jsonio
from tests.runtime.fake_artifacts import peer_slots, random_weights, stage_spec

THREE_HOSTS = """\
name: three-hosts
devices:
  - {name: a, profile: host, address: 127.0.0.1}
  - {name: b, profile: host, address: 127.0.0.1}
  - name: c
    profile: host
    address: 127.0.0.1
    overrides:
      units:
        cpu:
          throughput_gflops: {conv: 4, dwconv: 1, gemm: 4, norm: 1, pool: 1, elementwise: 1, reduce: 1, data: 1}
network:
  default: {bandwidth_mbps: 1000, latency_ms: 0.1}
"""

# `edgeplan plan` options for the lenet5 family on THREE_HOSTS: nominal, a slowed 4x, b slowed 4x.
LENET5_FAMILY_ARGS = ("lenet5", "--batch", "8", "--microbatches", "4", "--min-gain", "0",
                      "--variants", "slowdown:b=1,4", "--variants", "slowdown:a=1,4")

DIMS = (6, 5, 3)
# Two stages (one weight matrix each); each variant spreads them differently over boards a, b, c.
VARIANTS = {
    "plan-0": [[("a", 2), ("b", 2)], [("c", 4)]],
    "plan-1": [[("b", 4)], [("c", 4)]],  # shares c's stage-1 module with plan-0
    "plan-2": [[("a", 4)], [("b", 1), ("c", 3)]],
}


def x_batch(batch: int, i: int, dims=DIMS) -> np.ndarray:
    """Request ``i``'s input for a numpy family (seeded, so a test can recompute it)."""
    return np.random.default_rng(i).standard_normal((batch, dims[0])).astype(np.float32)


def make_family(root, variants=VARIANTS, dims=DIMS, microbatches: int = 2, delay: float = 0.002, seed: int = 0):
    """A compiled-family folder as adapt/compile.py writes it, for the numpy_test backend; returns the weights."""
    weights = random_weights(dims, len(dims) - 1, seed)
    boards: dict = {}
    for name, groups in variants.items():
        m, slots = peer_slots(groups)
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
                jsonio.write(d / f"{name}-stage{k}.json", stage_spec(d, p, slots, dims, name * 8).to_json())
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
