"""Split: chained stage modules equal the whole model; cuts across residual/branch edges carry several tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeplan.codegen.split import random_inputs, run_chain, split_stages
from edgeplan.errors import CompileError, PlanError

from .codegen_helpers import fx_trace, make_plan


class Branchy(nn.Module):
    """Residual block, a two-way branch joined by cat, a constant parameter and two outputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        h = h + self.conv2(h)  # residual
        b = torch.cat([self.left(h), self.right(h)], dim=1)  # branch
        b = b * self.scale
        feat = b.mean(dim=(2, 3))
        return self.fc(feat), feat


def _chained(stages, graph, batch, seed=0):
    inputs = random_inputs(graph, batch, seed)
    runs = run_chain(stages, inputs)
    return inputs, dict(zip(stages[-1].outputs, runs[-1][1], strict=True)), runs


@pytest.fixture(scope="module")
def branchy():
    torch.manual_seed(0)
    return fx_trace(Branchy(), (2, 3, 8, 8), "branchy")


@pytest.mark.parametrize("cuts", [[], [3], [4, 6], [2, 5, 9], list(range(1, 11))])
def test_chained_stages_equal_the_whole_model(branchy, cuts):
    graph = branchy.graph
    plan = make_plan(graph, cuts, [[("a", 2)]] * (len(cuts) + 1))
    stages = split_stages(branchy, plan)
    assert len(stages) == len(cuts) + 1
    inputs, outs, runs = _chained(stages, graph, 2)
    with torch.no_grad():
        ref = branchy.gm(*inputs.values())
    got = tuple(outs[name] for name in graph.outputs)
    for r, g in zip(ref, got, strict=True):
        assert torch.allclose(r, g, atol=1e-5, rtol=0)
    for st, (args, res) in zip(stages, runs, strict=True):
        assert st.inputs == graph.live_at(st.start)
        assert len(args) == len(st.inputs) and len(res) == len(st.outputs)


def test_cut_inside_residual_carries_both_tensors(branchy):
    graph = branchy.graph
    conv2 = graph.index("conv2")
    plan = make_plan(graph, [conv2 + 1], [[("a", 2)], [("b", 2)]])
    first, second = split_stages(branchy, plan)
    assert first.outputs == second.inputs
    assert len(first.outputs) == 2, f"a cut across the residual edge carries relu and conv2: {first.outputs}"
    assert set(first.outputs) == {"relu", "conv2"}


def test_other_batch_reuses_the_same_weights(branchy):
    plan = make_plan(branchy.graph, [5], [[("a", 2)], [("b", 2)]])
    stages = split_stages(branchy, plan)
    inputs, outs, _ = _chained(stages, branchy.graph, 3, seed=4)
    with torch.no_grad():
        ref = branchy.gm(*inputs.values())
    assert outs[branchy.graph.outputs[0]].shape[0] == 3
    assert torch.allclose(ref[0], outs[branchy.graph.outputs[0]], atol=1e-5)


def test_plan_for_another_layer_order_is_refused(branchy):
    plan = make_plan(branchy.graph, [4], [[("a", 2)], [("b", 2)]])
    bad = plan.stages[1].__class__(**{**plan.stages[1].__dict__, "first_layer": "nope"})
    with pytest.raises(PlanError, match="plan names layers 'nope'"):
        split_stages(branchy, plan.__class__(**{**plan.__dict__, "stages": (plan.stages[0], bad)}))
    gap = plan.stages[1].__class__(**{**plan.stages[1].__dict__, "start": 5})
    with pytest.raises(PlanError, match="contiguous"):
        split_stages(branchy, plan.__class__(**{**plan.__dict__, "stages": (plan.stages[0], gap)}))


class FixedBatch(nn.Module):
    def forward(self, x):
        return x.reshape(2, -1).sum(dim=1)


def test_module_with_a_fixed_batch_is_refused_at_another_batch():
    traced = fx_trace(FixedBatch(), (2, 3), "fixed")
    plan = make_plan(traced.graph, [], [[("a", 2)]])
    stages = split_stages(traced, plan)
    with pytest.raises(CompileError, match="batch 3"):
        run_chain(stages, random_inputs(traced.graph, 3))
