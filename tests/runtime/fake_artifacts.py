"""Builds a small artifact folder (plan.json + stage.json + .npz modules) for the numpy_test backend."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from edgeplan import jsonio
from edgeplan.runtime.spec import Peer, StageSpec, Tensor

WORKER = [sys.executable, str(Path(__file__).with_name("numpy_worker.py"))]


def random_weights(dims, stages: int, seed: int = 0) -> list[np.ndarray]:
    """One seeded dims[k] x dims[k+1] matrix per stage (scaled so outputs stay near unit size)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((dims[k], dims[k + 1])) / np.sqrt(dims[k])).astype(np.float32)
            for k in range(stages)]


def peer_slots(groups) -> tuple[int, list[list[Peer]]]:
    """``groups``: per stage, a list of (device, samples). The micro-batch size and, per stage, its replicas
    as Peers over consecutive sample ranges."""
    m = sum(n for _, n in groups[0])
    slots = []
    for k, g in enumerate(groups):
        lo, row = 0, []
        for dev, n in g:
            row.append(Peer(dev, k, "127.0.0.1:1", lo, lo + n))
            lo += n
        assert lo == m, "every stage's samples must add up to the micro-batch"
        slots.append(row)
    return m, slots


def stage_spec(folder: Path, p: Peer, slots: list[list[Peer]], dims, plan_sha256: str) -> StageSpec:
    """The numpy_test StageSpec of replica ``p`` (its stage is p.stage) whose stage.npz is in ``folder``."""
    k, m, b = p.stage, slots[0][-1].hi, p.hi - p.lo
    head = (Peer("head", -1, "127.0.0.1:2", 0, m),)
    sha = hashlib.sha256((folder / "stage.npz").read_bytes()).hexdigest()
    return StageSpec(
        model="toy", plan_sha256=plan_sha256, stage=k, n_stages=len(slots), device=p.device, unit="cpu",
        target="x86", backend="numpy_test", module="stage.npz", listen="127.0.0.1:0", microbatch=m,
        lo=p.lo, hi=p.hi, inputs=(Tensor(f"in{k}", (b, dims[k]), "float32"),),
        outputs=(Tensor(f"out{k}", (b, dims[k + 1]), "float32"),),
        upstream=head if k == 0 else tuple(slots[k - 1]),
        downstream=head if k == len(slots) - 1 else tuple(slots[k + 1]),
        files=(("stage.npz", sha),))


def make_artifacts(root: Path, groups, dims, microbatches: int = 1, delay: float = 0.0, seed: int = 0):
    """``groups``: per stage, a list of (device, samples). Returns the weights, stage by stage."""
    weights = random_weights(dims, len(groups), seed)
    m, slots = peer_slots(groups)
    stages_json = []
    for k, row in enumerate(slots):
        for p in row:
            d = root / p.device / f"stage{k}"
            d.mkdir(parents=True)
            np.savez(d / "stage.npz", w=weights[k], delay=np.float64(delay))
            jsonio.write(d / "stage.json", stage_spec(d, p, slots, dims, "0" * 64).to_json())
        stages_json.append({
            "index": k, "start": k, "stop": k + 1, "first_layer": f"l{k}", "last_layer": f"l{k}",
            "compute_s": 0.001 * (k + 1), "send_s": 0.0001, "energy_j": 0.0,
            "replicas": [{"device": p.device, "unit": "cpu", "target": "x86", "share": (p.hi - p.lo) / m,
                          "samples": p.hi - p.lo, "memory_bytes": 1000} for p in row]})
    jsonio.write(root / "plan.json", {
        "schema_version": 1, "model": "toy", "graph_sha256": "0", "cluster": "toy", "cluster_sha256": "0",
        "mode": "inference", "objective": "throughput", "batch": m * microbatches, "microbatches": microbatches,
        "schedule": "none", "solver": "dp", "head": "head", "stages": stages_json,
        "predicted": {"latency_s": 0.004, "throughput": 2000.0, "energy_j": 0.0, "iter_s": None},
        "baselines": [], "notes": []})
    return weights


def reference(weights, x: np.ndarray) -> np.ndarray:
    for w in weights:
        x = np.tanh(x @ w)
    return x
