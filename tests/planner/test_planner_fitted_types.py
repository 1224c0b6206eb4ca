"""Issue 13 follow-up: boards of one profile whose fitted training figures differ (``edgeplan calibrate``).

The DP groups interchangeable boards into types and prices a type by its first
member; when per-board fitted per-call costs told members apart only in the
training figures, the rebuilt group split samples so that a member got none and
``evaluate`` raised from inside the search. Types now include the fitted figures
(training plans), the rebuild drops a member left without samples, and
``evaluate`` reports a 0-sample replica as infeasible with a reason.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.planner import baselines, dp, search, types
from edgeplan.planner.costmodel import StageSpec, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from edgeplan.profiles.cost import TrainingCosts
from tests.planner.bruteforce import brute_force, rel_close

OBJ = Objective(mode="training", objective="time", batch=8, microbatches=2, schedule="1f1b")
# per-unit fitted call costs (s): one board of the shared profile much slower per call than its twin
CALLS = ([1e-4, 1e-4, 5e-2], [1e-4, 2e-3, 1e-4])


def _fitted(costs, call_s) -> TrainingCosts:
    """Fitted training figures that differ per board only in the per-call cost."""
    nu, nd = len(costs.units), costs.n_devices
    one = np.ones(nu)
    return TrainingCosts(fwd_scale=one, bwd_scale=one, layer_s=np.full((nu, 2), np.nan),
                         layer_overhead_s=np.zeros(nu), call_s=np.asarray(call_s, dtype=np.float64),
                         call_peer_s=np.zeros(nu), opt_byte_s=np.zeros(nu), opt_call_s=np.zeros(nu),
                         p2p=np.zeros((nd, 2)), allreduce=np.zeros((nd, 2)))


def _cluster(seed: int, calls) -> object:
    c = random_costs(seed, 4, 3, 1)  # three boards of one kind: identical rows but for the fitted figures
    return replace(c, training=_fitted(c, calls))


@pytest.mark.parametrize("seed", [0, 2, 5])
@pytest.mark.parametrize("calls", CALLS)
def test_dp_equals_brute_force_when_fitted_call_costs_differ_within_a_profile(seed, calls):
    costs = _cluster(seed, calls)
    res = search.solve(costs, OBJ)
    best = brute_force(costs, OBJ)
    assert res.layout is not None and best is not None
    assert all(k >= 1 for st in res.layout for _, k in st.replicas)
    assert res.exact and rel_close(res.evaluation.iter_s, best[0].iter_s), (res.evaluation.iter_s, best[0].iter_s)


def test_types_tell_fitted_boards_apart_only_for_training():
    costs = _cluster(0, CALLS[0])
    assert types.device_types(costs, 0).counts == (1, 2)  # inference: the fitted figures are not priced
    assert types.device_types(costs, 0, training=True).counts == (1, 1, 1)


def test_rebuild_drops_a_member_its_types_split_leaves_without_samples(monkeypatch):
    """With types blind to the fitted figures (the bug), the search still returns a runnable layout and
    says it is a heuristic, instead of raising from ``evaluate``."""
    blind = types.device_types
    monkeypatch.setattr(dp, "device_types", lambda costs, head, training=False: blind(costs, head))
    costs = _cluster(2, CALLS[0])
    res = search.solve(costs, OBJ)
    assert res.layout is not None and all(k >= 1 for st in res.layout for _, k in st.replicas)
    assert not res.exact and any("without samples; dropped" in n for n in res.notes), res.notes
    assert res.evaluation.iter_s >= brute_force(costs, OBJ)[0].iter_s * (1 - 1e-9)


def test_evaluate_reports_a_zero_sample_replica_infeasible_with_a_reason():
    costs = _cluster(0, CALLS[0])
    lay = (StageSpec(0, 4, ((0, OBJ.micro), (1, 0))),)
    ev = evaluate(costs, lay, OBJ)
    assert not ev.feasible and ev.empty == ((0, 1),)
    assert ev.why_infeasible(costs) == ("stage 0: replica dev1:cpu gets 0 samples of the micro-batch (drop it "
                                        "from the group or raise the micro-batch size)")
    name, _, _, why = baselines._finish("x", costs, OBJ, None, lay, "")
    assert why == ev.why_infeasible(costs)
