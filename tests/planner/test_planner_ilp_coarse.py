"""The ILP certifies the DP on ResNet-18 x four boards by running on a coarse graph (issue 13 item 7).

Every layer boundary gives too many stage options for HiGHS within its time
limit; on the coarse graph (evenly spaced plus the cheapest cuts) the ILP
finishes and equals the DP run on the same cuts, and says it is exact there only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplan.planner import ilp, search
from edgeplan.planner.objective import Objective
from tests.planner.bruteforce import rel_close

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def costs():
    pytest.importorskip("torch", reason="traces resnet18 with torch")
    from edgeplan.graph.load import build
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    return build_cost_table(build("resnet18").graph, load_cluster(ROOT / "examples" / "clusters" / "rpi4-jetson.yaml"))


@pytest.mark.parametrize("obj", [Objective(objective="throughput", batch=8), Objective(objective="latency", batch=1)],
                         ids=["throughput", "latency"])
def test_ilp_on_the_coarse_graph_equals_the_dp_on_the_same_cuts(costs, obj):
    cuts = ilp.coarse_bounds(costs, obj)
    assert cuts is not None and len(cuts) < costs.n_layers + 1  # the full graph is too many options
    got = ilp.solve(costs, obj)  # the default 60 s limit: a time-out would raise or leave exact False
    assert not got.exact and got.notes[0].startswith("ILP on a coarse graph")
    assert "time limit" not in " ".join(got.notes)
    res = search.solve(costs, obj, cuts=cuts, refine=False)
    assert rel_close(got.evaluation.value(obj), res.evaluation.value(obj))
    full = search.solve(costs, obj)  # the DP on every boundary is at least as good
    assert full.evaluation.value(obj) <= res.evaluation.value(obj) * (1 + 1e-12)
