"""Issue 13 item 5 in the DP: a send into a wide replica group priced per sender -> receiver pair.

On uniform links the cost model's send takes ``max(busiest sender, busiest receiver) x bytes / bw +
latency`` (every device's NIC moves its own samples). The DP's training state carries the receiving stage's busiest
device's samples, so its pass values are the evaluator's for the layouts it returns; before, it priced
the busiest sender only (a lower bound: 4 senders of 2 samples into 2 receivers of 4 were 2 samples'
time), and said "not exact". The instances force a send between two wide groups: layer 0 runs on one
board kind only, layer 1 on the other.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.planner import dp, ilp, search
from edgeplan.planner.costmodel import evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import brute_force, rel_close

OBJ = Objective(mode="training", objective="time", batch=16, microbatches=2, schedule="1f1b")


def _two_kinds(seed: int):
    """Six boards of two kinds; layer 0 runs on the first kind only, layer 1 on the second; slow links and
    big activations, so the send between the two groups weighs."""
    c = random_costs(seed, 2, 6, 2, ram_mb=(2048, 4096))
    kind = np.array([0 if (c.fwd_s[u] == c.fwd_s[0]).all() else 1 for u in range(len(c.units))])
    sup = np.stack([kind == 0, kind == 1], axis=1)
    return replace(c, supported=sup, fwd_s=np.where(sup, c.fwd_s, np.inf), bwd_s=np.where(sup, c.bwd_s, np.inf),
                   fixed_s=np.where(sup, c.fixed_s, np.inf), bandwidth=c.bandwidth * 0.2, cut_bytes=c.cut_bytes * 8)


def _busier_receiver(layout) -> bool:
    return any(max(k for _, k in b.replicas) > max(k for _, k in a.replicas)
               for a, b in zip(layout[:-1], layout[1:], strict=True))


@pytest.mark.parametrize("seed", [3, 6])
def test_a_pass_prices_a_send_into_a_busier_group_as_the_evaluator(seed):
    """The unconstrained pass's optimum sends into a group whose busiest receiver takes more samples than
    any sender (seed 3: 4 x 2 -> 2 x 4; seed 6: the same at the optimum); its value is the evaluator's
    sum over resources (busiest-sender pricing was 2 samples' time short on that link)."""
    costs = _two_kinds(seed)
    value, layout = dp.DPSolver(costs, OBJ).run_pass("sum")
    assert _busier_receiver(layout), layout
    assert rel_close(value, evaluate(costs, layout, OBJ).latency_s)  # training: latency_s = sum of resources


@pytest.mark.parametrize("seed", [1, 3, 6, 7])
def test_wide_to_wide_training_dp_equals_brute_force_and_ilp(seed):
    costs = _two_kinds(seed)
    best = brute_force(costs, OBJ)
    res = search.solve(costs, OBJ, refine=False)
    assert res.exact and not any("lower bound" in n for n in res.notes), res.notes
    assert rel_close(res.evaluation.iter_s, best[0].iter_s), (res.layout, best[1])
    assert max(len(st.replicas) for st in res.layout) >= 2
    got = ilp.solve(costs, OBJ)
    assert got.exact and rel_close(got.evaluation.iter_s, best[0].iter_s, 1e-6)



def test_a_micro_batch_past_the_exact_classes_keeps_the_bound_and_says_so(monkeypatch):
    """Classes are the busiest device's sample counts, so the tables grow with the micro-batch; past
    ``EXACT_LINK_SAMPLES`` the DP prices the busiest sender (a lower bound) and the note says so."""
    monkeypatch.setattr(dp, "EXACT_LINK_SAMPLES", OBJ.micro - 1)
    costs = _two_kinds(6)
    assert not dp.DPSolver(costs, OBJ).exact_links
    res = search.solve(costs, OBJ, refine=False)
    assert not res.exact and any(n.startswith("DP lower bound") for n in res.notes), res.notes
