"""End to end: compile zoo models (ONNX Runtime stages), `run --local` them, compare every request with torch.

Workers run from each board folder's own copy of the runtime (``<device>/edgeplan_runtime``),
as on a board. Three stages, a replica group with unequal samples, and a device hosting two stages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeplan.codegen.compile import compile_plan
from edgeplan.codegen.split import random_inputs
from edgeplan.graph.load import build
from edgeplan.runtime import report
from edgeplan.runtime.head import HeadConfig
from edgeplan.runtime.local import run_local

from ..codegen.codegen_helpers import make_plan

TOL = 1e-4
REQUESTS = 6


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_run_local_outputs_equal_torch(model, tmp_path):
    traced = build(model)
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [int(0.3 * n), int(0.7 * n)], [[("a", 3)], [("b", 2), ("c", 1)], [("a", 3)]])
    out = compile_plan(plan, model, tmp_path / "art", backend="onnxruntime", traced=traced)
    requests = [random_inputs(traced.graph, 3, seed=100 + i) for i in range(REQUESTS)]
    arrays = [[t.numpy() for t in x.values()] for x in requests]
    art, res = run_local(out, inputs=arrays, log_dir=tmp_path / "logs", config=HeadConfig(request_timeout_s=60))
    assert res.ok, (res.failures, res.faults)
    worst = 0.0
    for x, got in zip(requests, res.outputs, strict=True):
        with torch.no_grad():
            ref = traced.gm(*x.values())
        ref = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        assert [g.shape for g in got] == [r.shape for r in ref]
        worst = max(worst, *(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)))
    assert worst < TOL, f"max abs error {worst:g}"
    rep = report.build(art.plan, res)
    assert rep["completed"] == REQUESTS and len(rep["stages"]) == 3
