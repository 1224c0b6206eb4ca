"""Codegen of a branch plan: each branch replica's module (split_branches) + the trunk stages == the model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="codegen splits the traced model with torch")

import torch  # noqa: E402

from edgeplan.codegen.split import split_branches, split_stages  # noqa: E402
from edgeplan.graph.trace import trace  # noqa: E402
from edgeplan.planner.api import make_plan  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from tests.graph.test_multi_input import ThreeInput  # noqa: E402

FIVE = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "fpl-five.yaml"


def test_branch_modules_then_trunk_compute_the_whole_model():
    model = ThreeInput()
    traced = trace(model, (4, 3, 16, 16), "three")
    plan = make_plan(traced.graph, load_cluster(FIVE), Objective(mode="training", objective="time", batch=4),
                     pins=("input0=cam-a", "input1=cam-b", "input2=cam-c"))
    branches = split_branches(traced, plan)
    assert [b.inputs for b in branches] == [("cam_a",), ("cam_b",), ("cam_c",)]
    live = traced.graph.live_at(plan.stages[0].stop)
    assert sorted(o for b in branches for o in b.outputs) == sorted(live)  # together: exactly the junction cut
    xs = {name: torch.randn(4, 3, 16, 16) for name in ("cam_a", "cam_b", "cam_c")}
    env = dict(xs)
    with torch.no_grad():
        for b in branches:  # each on its own input only, as each board does
            env.update(zip(b.outputs, b.gm(*(xs[n] for n in b.inputs)), strict=True))
        for st in split_stages(traced, plan)[1:]:
            env.update(zip(st.outputs, st.gm(*(env[n] for n in st.inputs)), strict=True))
        want = model(xs["cam_a"], xs["cam_b"], xs["cam_c"])
    assert torch.allclose(env[traced.graph.outputs[0]], want, atol=1e-6)


def test_a_plan_without_branches_has_no_branch_modules():
    traced = trace(ThreeInput(), (2, 3, 8, 8), "three")
    plan = make_plan(traced.graph, load_cluster(FIVE), Objective(mode="inference", objective="latency", batch=2),
                     pins=("fc=trunk",))
    assert plan.stages[0].kind == "pipeline" and split_branches(traced, plan) == ()


def test_inference_compile_of_a_branch_plan_is_refused_in_one_line(tmp_path):
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.errors import CompileError

    traced = trace(ThreeInput(), (2, 3, 8, 8), "three")
    plan = make_plan(traced.graph, load_cluster(FIVE), Objective(mode="inference", objective="latency", batch=2),
                     pins=("input0=cam-a", "input1=cam-b", "input2=cam-c"))
    with pytest.raises(CompileError, match="parallel branches .* plan it with --mode training"):
        compile_plan(plan, "three", tmp_path / "art", traced=traced)
