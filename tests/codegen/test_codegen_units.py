"""A board running two stages on two of its units (issue 13 item 4): one worker per unit, outputs equal torch.

The plan is priced by the planner on the example cluster three-node-hetero, whose
gpu-board (RK3588) has a CPU and a Mali GPU: stage 0 on gpu-board:gpu, stage 1
on gpu-board:cpu. ``edgeplan run --local`` cannot run a Mali or an aarch64
module on this x86 machine (it refuses with the ways out), so for the local run
the two stages are compiled for this machine's CPU (target x86, ONNX Runtime)
while keeping their board and unit: the folder, launcher and wiring are the
ones the board gets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgeplan.codegen.compile import compile_plan
from edgeplan.planner.api import layout_from_text, plan_of
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import build_cost_table
from edgeplan.profiles.load import load_cluster
from edgeplan.runtime.head import HeadConfig
from edgeplan.runtime.local import run_local

from .codegen_helpers import fx_trace

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


def test_two_units_of_one_board_get_one_worker_each_and_match_torch(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    traced = fx_trace(net, (2, 3, 8, 8), "net")
    cluster = load_cluster(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")
    costs = build_cost_table(traced.graph, cluster)
    obj = Objective(objective="throughput", batch=2, head="gpu-board")
    n = len(traced.graph.layers)
    k = n // 2
    layout = layout_from_text(costs, f"net | 0-{k - 1}@gpu-board:gpu | {k}-{n - 1}@gpu-board:cpu", obj)
    plan = plan_of(costs, layout, obj, model="net", graph_sha256=traced.graph.digest(), cluster=cluster.name,
                   cluster_sha256=cluster.digest(), with_baselines=False)
    assert [(s.replicas[0].device, s.replicas[0].unit, s.replicas[0].target) for s in plan.stages] == [
        ("gpu-board", "gpu", "mali"), ("gpu-board", "cpu", "arm-cpu")]
    # for this machine: the same board and units, compiled for its CPU (module docstring)
    local = replace(plan, stages=tuple(
        replace(s, replicas=tuple(replace(r, target="x86") for r in s.replicas)) for s in plan.stages))
    out = compile_plan(local, "net", tmp_path / "art", backend="onnxruntime", traced=traced)

    board = out / "gpu-board"
    start = (board / "start.sh").read_text()
    assert start.count("-m edgeplan_runtime.worker") == 2
    assert "--stage stage0/stage.json" in start and "--stage stage1/stage.json" in start
    assert "# stage 0 of 2 on unit gpu (x86)" in start and "# stage 1 of 2 on unit cpu (x86)" in start
    specs = [json.loads((board / f"stage{i}" / "stage.json").read_text()) for i in range(2)]
    assert [(s["device"], s["unit"]) for s in specs] == [("gpu-board", "gpu"), ("gpu-board", "cpu")]
    assert specs[0]["listen"] != specs[1]["listen"]  # two workers, two ports on one board
    assert [p["address"] for p in specs[0]["downstream"]] == [specs[1]["listen"]]  # stage 0 feeds stage 1
    listed = json.loads((out / "manifest.json").read_text())["files"]
    names = listed if isinstance(listed, list) else list(listed)
    flat = json.dumps(names)
    assert "gpu-board/stage0/stage.json" in flat and "gpu-board/stage1/stage.json" in flat

    xs = [np.random.default_rng(i).standard_normal((2, 3, 8, 8)).astype(np.float32) for i in range(3)]
    _, res = run_local(out, inputs=[[x] for x in xs], log_dir=tmp_path / "logs",
                       config=HeadConfig(request_timeout_s=60))
    assert res.ok, (res.failures, res.faults)
    for x, got in zip(xs, res.outputs, strict=True):
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        assert float(np.abs(got[0] - ref).max()) < 1e-4


@pytest.mark.parametrize("text", ["0-1@gpu-board:gpu | 2-4@gpu-board:gpu"])
def test_a_unit_hosts_one_stage(text):
    from edgeplan.errors import PlanError

    traced = fx_trace(Net().eval(), (2, 3, 8, 8), "net")
    cluster = load_cluster(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")
    costs = build_cost_table(traced.graph, cluster)
    obj = Objective(batch=2)
    n = len(traced.graph.layers)
    layout = layout_from_text(costs, f"net | {text.replace('4@', f'{n - 1}@')}", obj)
    with pytest.raises(PlanError, match="unit gpu-board:gpu is used by more than one stage"):
        plan_of(costs, layout, obj)
