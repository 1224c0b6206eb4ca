"""The DP against an oracle that shares none of its pricing code (issue 13 item 7: a certificate that certifies).

``tests/planner/oracle.py`` enumerates every layout and every integer split of
the micro-batch (the planner splits greedily), prices replicas from the raw
cost arrays and runs the micro-batches through the chain of resources by event
simulation. On small instances with non-uniform links, NPU-like gaps and tight
memory, the DP's optimum equals the oracle's.
"""

from __future__ import annotations

import pytest

from edgeplan.planner import search
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import rel_close
from tests.planner.oracle import oracle
from tests.planner.test_planner_memory import _fast_board_short_of_ram

OBJECTIVES = {
    "throughput": Objective(objective="throughput", batch=4),
    "latency": Objective(objective="latency", batch=4, microbatches=2),
    "energy": Objective(objective="energy", batch=4),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_dp_equals_the_independent_oracle(name):
    obj = OBJECTIVES[name]
    checked = 0
    for seed in range(8):
        costs = random_costs(300 + seed, 5, 3, 2 + seed % 2, dag=True, units_per_device=1 + seed % 2, npu_gaps=True,
                             ram_mb=(2, 24), uniform_links=seed % 3 != 0)
        want = oracle(costs, obj)
        res = search.solve(costs, obj)
        assert res.exact
        got = None if res.evaluation is None else res.evaluation.value(obj)
        assert (want is None) == (got is None), (seed, want, got)
        if want is not None:
            assert rel_close(got, want), (seed, got, want, res.layout)
            checked += 1
    assert checked >= 5  # the rest fit in no memory, and the DP says so too


@pytest.mark.parametrize("name", ["throughput", "latency"])
def test_the_memory_case_agrees_with_the_oracle(name):
    """Three boards, the fastest holds 2 of 8 samples (issue 13 item 3): the oracle tries every split."""
    costs = _fast_board_short_of_ram()
    obj = Objective(objective=name, batch=8)
    assert rel_close(search.solve(costs, obj).evaluation.value(obj), oracle(costs, obj))
