"""Codegen hands an NPU stage what only it knows: the unit's op list and an int8 calibration set."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from edgeplan.codegen.compile import CALIBRATION_SAMPLES, _NpuOptions
from edgeplan.codegen.split import split_stages
from edgeplan.profiles.load import load_profile
from edgeplan.profiles.model import Cluster, Link
from tests.codegen.codegen_helpers import fx_trace, make_plan


def _cluster() -> Cluster:
    npu_board = load_profile("rk3566").instantiate("npu-board", "192.0.2.1")
    return Cluster("t", (npu_board,), Link("*", "*", 1e8, 0.0))


def test_npu_stage_gets_the_profiles_op_list_and_a_calibration_set(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    traced = fx_trace(net, (1, 3, 8, 8))
    plan = make_plan(traced.graph, [2], [[("npu-board", 2)], [("npu-board", 2)]])
    second = replace(plan.stages[1].replicas[0], unit="npu", target="npu")
    stages = split_stages(traced, plan)
    st = replace(plan.stages[1], replicas=(second,))
    opts = _NpuOptions(_cluster(), stages, traced.graph, tmp_path)

    out = opts.add({"platform": "rk3566", "dtype": "int8"}, st, second)

    unit = _cluster().device("npu-board").unit("npu")
    assert out["supported_ops"].split(",") == list(unit.supported_ops)
    lines = (tmp_path / "stage1-b2" / "dataset.txt").read_text().splitlines()
    assert out["calibration"] == str(tmp_path / "stage1-b2" / "dataset.txt")
    assert len(lines) == CALIBRATION_SAMPLES
    first = np.load(lines[0].split()[0])
    assert first.shape == (2, 4, 8, 8)  # the cut tensor entering stage 1, at the replica's batch
    assert (first >= 0).all() and first.std() > 0  # went through the ReLU of stage 0: real activations


def test_cpu_stages_and_fp16_npu_stages_get_nothing_extra(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    traced = fx_trace(net, (1, 3, 8, 8))
    plan = make_plan(traced.graph, [1], [[("npu-board", 1)], [("npu-board", 1)]])
    opts = _NpuOptions(_cluster(), split_stages(traced, plan), traced.graph, tmp_path)
    st = plan.stages[0]
    assert opts.add({"mcpu": "cortex-a55"}, st, st.replicas[0]) == {"mcpu": "cortex-a55"}
    npu = replace(st.replicas[0], unit="npu", target="npu")
    out = opts.add({"platform": "rk3566"}, st, npu)
    assert "calibration" not in out and "supported_ops" in out
