"""Zoo models: stage modules chained by the plan's sample ranges give the original model's outputs.

The split is checked in torch for ResNet-18, MobileNetV2, VGG-16 and a small ViT under
several plans (2-4 stages, a replica group with unequal samples); the compiled stage
modules (ONNX Runtime; TVM under the ``tvm`` marker) are run through the board-side
loaders for ResNet-18 and MobileNetV2. Tolerance: max abs error < 1e-4 (float32).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan.codegen import manifest
from edgeplan.codegen.compile import compile_plan
from edgeplan.codegen.split import random_inputs, split_stages
from edgeplan.graph.load import build
from edgeplan.planner.plan import Plan
from edgeplan.runtime import backends
from edgeplan.runtime.spec import StageSpec

from .codegen_helpers import make_plan

TOL = 1e-4


@lru_cache(maxsize=4)
def _traced(name: str):
    return build(name)


def _plan(traced, fractions, groups) -> Plan:
    n = len(traced.graph.layers)
    return make_plan(traced.graph, [int(f * n) for f in fractions], groups)


def chain_by_ranges(plan: Plan, runners, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Route a micro-batch as the workers do: each replica gets its [lo, hi) samples, outputs are re-joined.

    ``runners[stage][replica]`` takes and returns lists of arrays in stage.json order; returns every
    stage's joined outputs (the last: the model outputs).
    """
    live, per_stage = inputs, []
    for st, group in zip(plan.stages, runners, strict=True):
        lo, parts = 0, []
        for r, run in zip(st.replicas, group, strict=True):
            parts.append(run([t[lo:lo + r.samples] for t in live]))
            lo += r.samples
        live = [np.concatenate(outs, axis=0) for outs in zip(*parts, strict=True)]
        per_stage.append(live)
    return per_stage


class _Recorder(torch.fx.Interpreter):
    """Runs the original (unsplit) module and keeps the value of every node, by fx node name."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n):
        self.values[n.name] = out = super().run_node(n)
        return out


def _reference(traced, stages, x: dict[str, torch.Tensor]) -> list[list[np.ndarray]]:
    """What the original model computes for every tensor crossing each cut (and its outputs)."""
    rec = _Recorder(traced.gm)
    with torch.no_grad():
        rec.run(*x.values())
    moved = [dict(st.batch_dims) for st in stages]  # cut tensors travel batch-first
    return [[np.moveaxis(rec.values[name].numpy(), m.get(name, 0), 0) for name in st.outputs]
            for st, m in zip(stages, moved, strict=True)]


def _max_err(got: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> float:
    """Max abs error over every cut tensor and output; refuses shape mismatches and input-blind references."""
    assert len(got) == len(ref)
    errs = []
    for g_stage, r_stage in zip(got, ref, strict=True):
        for g, r in zip(g_stage, r_stage, strict=True):
            assert g.shape == r.shape, (g.shape, r.shape)
            errs.append(float(np.abs(g - r).max()))
    first = ref[0][0]
    assert first.shape[0] < 2 or float(np.abs(first[0] - first[1]).max()) > 1e-3, "samples must differ at cut 1"
    return max(errs)


def _torch_runner(gm):
    def run(arrays):
        with torch.no_grad():
            return [t.numpy() for t in gm(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))]
    return run


SPLITS = [
    ("resnet18", [0.5], [[("a", 3)], [("b", 2), ("c", 1)]]),
    ("resnet18", [0.2, 0.45, 0.8], [[("a", 3)], [("b", 1), ("c", 2)], [("d", 3)], [("e", 2), ("f", 1)]]),
    ("mobilenet_v2", [0.3, 0.6], [[("a", 3)], [("b", 2), ("c", 1)], [("d", 3)]]),
    ("mobilenet_v2", [0.15, 0.5, 0.9], [[("a", 3)], [("b", 3)], [("c", 1), ("d", 2)], [("e", 3)]]),
    ("vgg16", [0.5], [[("a", 2)], [("b", 1), ("c", 1)]]),
    ("vit-tiny", [0.33, 0.66], [[("a", 3)], [("b", 2), ("c", 1)], [("d", 3)]]),
    ("vit-tiny", [0.1, 0.5, 0.75], [[("a", 1), ("b", 2)], [("c", 3)], [("d", 2), ("e", 1)], [("f", 3)]]),
]


@pytest.mark.parametrize("model,fractions,groups", SPLITS, ids=[f"{m}-{len(f) + 1}st" for m, f, _ in SPLITS])
def test_split_stages_chained_equal_the_model(model, fractions, groups):
    traced = _traced(model)
    plan = _plan(traced, fractions, groups)
    stages = split_stages(traced, plan)
    batch = sum(s for _, s in groups[0])
    x = random_inputs(traced.graph, batch, seed=3)
    runners = [[_torch_runner(stages[st.index].gm)] * len(st.replicas) for st in plan.stages]
    got = chain_by_ranges(plan, runners, [t.numpy() for t in x.values()])
    assert _max_err(got, _reference(traced, stages, x)) < TOL
    # cuts across residual / attention edges carry several tensors, in live_at order
    for st in stages[1:]:
        assert st.inputs == traced.graph.live_at(st.start)


def _batch_not_first_cut(traced) -> int:
    """The first cut of ``traced`` crossed by a tensor whose batch is not dim 0 (ViT's stacked q/k/v)."""
    g = traced.graph
    shape = {layer.name: layer.output.shape for layer in g.layers}
    for k in range(1, len(g.layers)):
        if any(name in shape and shape[name][:1] != (g.batch,) for name in g.live_at(k)):
            return k
    raise AssertionError(f"{g.name} has no cut crossed by a tensor whose batch is not first")


def test_cut_through_a_tensor_whose_batch_is_not_first():
    traced = _traced("vit-tiny")
    k = _batch_not_first_cut(traced)
    plan = make_plan(traced.graph, [k], [[("a", 3)], [("b", 2), ("c", 1)]])
    stages = split_stages(traced, plan)
    x = random_inputs(traced.graph, 3, seed=2)
    runners = [[_torch_runner(stages[st.index].gm)] * len(st.replicas) for st in plan.stages]
    got = chain_by_ranges(plan, runners, [t.numpy() for t in x.values()])
    assert stages[0].batch_dims and stages[0].batch_dims == stages[1].batch_dims
    assert all(t.shape[0] == 3 for t in got[0]), "cut tensors travel batch-first"
    assert _max_err(got, _reference(traced, stages, x)) < TOL


def _compiled_chain(model: str, backend: str, tmp_path: Path, plan: Plan | None = None) -> float:
    traced = _traced(model)
    plan = plan or _plan(traced, [0.3, 0.7], [[("a", 3)], [("b", 2), ("c", 1)], [("a", 3)]])
    out = compile_plan(plan, model, tmp_path / "art", backend=backend, traced=traced)
    assert manifest.verify(out) == []
    runners = []
    for st in plan.stages:
        group = []
        for r in st.replicas:
            stage_dir = out / r.device / f"stage{st.index}"
            spec = StageSpec.load(str(stage_dir / "stage.json"))
            assert spec.backend == backend and spec.hi - spec.lo == r.samples
            group.append(backends.load(stage_dir, spec))
        runners.append(group)
    x = random_inputs(traced.graph, 3, seed=5)
    got = chain_by_ranges(plan, runners, [t.numpy() for t in x.values()])
    err = _max_err(got, _reference(traced, split_stages(traced, plan), x))
    print(f"{model} {backend}: max abs error {err:.2e}")  # shown with -s
    return err


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_compiled_onnxruntime_stages_equal_the_model(model, tmp_path):
    assert _compiled_chain(model, "onnxruntime", tmp_path) < TOL


def test_compiled_vit_with_a_batch_not_first_cut(tmp_path):
    traced = _traced("vit-tiny")
    k = _batch_not_first_cut(traced)
    plan = make_plan(traced.graph, [k, k + 40], [[("a", 3)], [("b", 2), ("c", 1)], [("a", 3)]])
    assert _compiled_chain("vit-tiny", "onnxruntime", tmp_path, plan) < TOL


@pytest.mark.tvm
@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_compiled_tvm_stages_equal_the_model(model, tmp_path):
    assert _compiled_chain(model, "tvm", tmp_path) < TOL
