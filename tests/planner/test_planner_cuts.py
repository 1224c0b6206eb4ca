"""The planner offers only cuts codegen can split (one predicate: graph.batchdims -> LayerGraph.cut_allowed).

A transformer-ish block whose nn.MultiheadAttention returns a tuple and whose
gate is split by torch.unbind: no stage boundary may fall while such a tuple is
live. Checked against codegen itself: a two-stage plan cut at k splits if and
only if the planner allows cut k. Then the solvers, the baselines and the
refinement avoid a forbidden cut even where it is the cheapest one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeplan.errors import CompileError
from edgeplan.planner import search
from edgeplan.planner.api import plan_from_costs, plan_of
from edgeplan.planner.baselines import baselines
from edgeplan.planner.costmodel import StageSpec, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.refine import refine
from edgeplan.planner.synthetic import random_costs

ROOT = Path(__file__).resolve().parents[2]


def _traced():
    torch = pytest.importorskip("torch", reason="tracing needs torch")
    from torch import nn

    from edgeplan.graph.trace import trace

    class Block(nn.Module):
        def __init__(self, d: int = 16):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.gate = nn.Linear(d, 2 * d)
            self.mlp = nn.Linear(d, d)

        def forward(self, x):
            h = self.ln(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            u, v = torch.unbind(self.gate(x).view(x.shape[0], x.shape[1], 2, -1), dim=2)
            return x + self.mlp(u * torch.sigmoid(v))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 16)
            self.blocks = nn.Sequential(Block(), Block())
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            return self.head(self.blocks(self.embed(x)).mean(dim=1))

    return trace(Model(), (1, 6, 8), "tiny-transformer")


def _costs(graph):
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    return build_cost_table(graph, load_cluster(ROOT / "examples" / "clusters" / "three-node-hetero.yaml"))


def test_cut_allowed_is_what_codegen_splits():
    from edgeplan.codegen.split import split_stages

    traced = _traced()
    g = traced.graph
    ok = g.cut_allowed()
    tuples = [i for i, layer in enumerate(g.layers) if layer.op in ("attention", "split")]
    assert len(tuples) == 4, [layer.op for layer in g.layers]
    assert all(not ok[i + 1] for i in tuples), "a cut right after a tuple-producing layer"
    assert ok[0] and ok[-1] and sum(ok) >= len(ok) // 2
    costs = _costs(g)
    obj = Objective(objective="throughput", batch=2)
    a, b = (next(u for u, x in enumerate(costs.units) if x[0] == d and x[2] != "npu") for d in (1, 2))
    for k in range(1, len(g.layers)):
        layout = (StageSpec(0, k, ((a, 2),)), StageSpec(k, len(g.layers), ((b, 2),)))
        plan = plan_of(costs, layout, obj, with_baselines=False)
        try:
            split_stages(traced, plan)
            splits = True
        except CompileError as e:
            assert "no single batch dimension" in str(e)
            splits = False
        assert splits == ok[k], (k, g.layers[k - 1].name)
        assert evaluate(costs, layout, obj).feasible == ok[k]


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
def test_plans_of_the_transformer_compile(objective):
    from edgeplan.codegen.split import split_stages

    traced = _traced()
    costs = _costs(traced.graph)
    plan = plan_from_costs(costs, Objective(objective=objective, batch=4), min_gain=0.0)
    ok = traced.graph.cut_allowed()
    assert all(ok[st.start] for st in plan.stages)
    assert all(b.stages == () or all(ok[s.start] for s in b.stages) for b in plan.baselines if b.feasible)
    assert len(split_stages(traced, plan)) == len(plan.stages)


def _forbid(costs, cuts):
    ok = np.ones(costs.n_layers + 1, dtype=bool)
    ok[list(cuts)] = False
    return replace(costs, cut_ok=ok)


@pytest.mark.parametrize("seed", range(4))
def test_solvers_avoid_forbidden_cuts_they_would_pick(seed):
    """Forbid the cuts the unconstrained optimum uses: every solver moves elsewhere and stays feasible."""
    from edgeplan.planner import ilp

    costs = random_costs(40 + seed, 9, 3, 3, dag=True)
    obj = Objective(objective="throughput", batch=4)
    free = search.solve(costs, obj)
    used = {st.start for st in free.layout[1:]}
    if not used:
        pytest.skip("the optimum is one stage")
    banned = _forbid(costs, used)
    got = search.solve(banned, obj)
    assert got.exact and got.evaluation.feasible
    assert not used & {st.start for st in got.layout[1:]}
    assert got.evaluation.value(obj) >= free.evaluation.value(obj) * (1 - 1e-12)
    assert evaluate(banned, free.layout, obj).bad_cuts == tuple(sorted(used))
    ref = ilp.solve(banned, obj)
    assert not used & {st.start for st in ref.layout[1:]}
    assert ref.evaluation.value(obj) == pytest.approx(got.evaluation.value(obj), rel=1e-9)
    coarse = search.solve(banned, obj, cuts=np.arange(costs.n_layers + 1))  # given cuts are filtered too
    assert not used & {st.start for st in coarse.layout[1:]}
    lay, ev, _ = refine(banned, obj, got.layout)
    assert ev.feasible and not used & {st.start for st in lay[1:]}
    for name, blay, _bev, _reason in baselines(banned, obj):
        if blay is not None:
            assert not used & {st.start for st in blay[1:]}, name
