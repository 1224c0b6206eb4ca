"""Fixtures the adapt tests share: the resnet18 default family on examples/clusters/three-node-hetero.yaml
(throughput, batch 4, head npu-board) and its Pricer, planned once per session instead of once per module
(tracing resnet18 and planning 7 conditions took seconds in each of five modules). The Pricer's and World's
caches only memoise pure functions of a condition, so sharing them between tests changes no result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "three-node-hetero.yaml"
HEAD = "npu-board"


@dataclass(frozen=True)
class Resnet18Family:
    graph: object
    cluster: object
    family: object
    plans: dict
    pricer: object

    def world(self):
        """A simulator World over the shared Pricer (its own figure caches)."""
        from edgeplan.adapt import simulate as sm

        return sm.World(self.pricer, self.plans, self.cluster)


@pytest.fixture(scope="session")
def resnet18_family() -> Resnet18Family:
    pytest.importorskip("torch", reason="plan families trace a zoo model with torch")
    from edgeplan.adapt.policy import Pricer
    from edgeplan.graph.load import build
    from edgeplan.planner import family as fm
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster

    graph = build("resnet18").graph
    cluster = load_cluster(CLUSTER)
    fam, plans = fm.make_family(graph, cluster, Objective(objective="throughput", batch=4, head=HEAD),
                                fm.default_conditions(cluster, HEAD))
    return Resnet18Family(graph, cluster, fam, plans, Pricer.from_family(graph, cluster, plans))
