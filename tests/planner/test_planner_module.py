"""plan.json's per-stage module time (issue 14): what a worker's compute timer measures, without the hop.

``compute_s`` prices a stage call as the runtime runs it (its layers plus the
runtime receiving, assembling and sending: ``hop_s`` and ``hop_byte_s``);
``module_s`` is the slowest replica's layers alone, the figure a run report
compares the measured module time with.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeplan import jsonio
from edgeplan.planner.api import plan_of
from edgeplan.planner.costmodel import StageSpec
from edgeplan.planner.objective import Objective
from edgeplan.planner.plan import Plan
from edgeplan.planner.synthetic import random_costs


def test_module_s_is_compute_without_the_hop():
    costs = random_costs(3, 6, 3, 3)
    u = len(costs.units)
    costs = type(costs)(**{**{k: getattr(costs, k) for k in costs.__dataclass_fields__},
                           "hop_s": np.full(u, 2e-3), "hop_byte_s": np.full(u, 1e-9)})
    obj = Objective(objective="throughput", batch=4)
    lay = (StageSpec(0, 2, ((0, 4),)), StageSpec(2, 6, ((1, 1), (2, 3))))
    plan = plan_of(costs, lay, obj, with_baselines=False)
    cut = np.asarray(costs.cut_bytes)
    st0 = plan.stages[0]
    hop = 2e-3 + 1e-9 * 4 * (cut[0] + cut[2])
    assert st0.compute_s - st0.module_s == pytest.approx(hop, rel=1e-4)  # plan.json rounds its floats
    fwd, fixed = np.asarray(costs.fwd_s), np.asarray(costs.fixed_s)
    want = max(k * fwd[r, 2:6].sum() + fixed[r, 2:6].sum() for r, k in ((1, 1), (2, 3)))
    assert plan.stages[1].module_s == pytest.approx(want, rel=1e-4)
    again = Plan.from_json(json.loads(jsonio.dumps(plan.to_json())))
    assert again.stages[1].module_s == plan.stages[1].module_s
