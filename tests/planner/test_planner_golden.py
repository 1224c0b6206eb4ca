"""Golden plans: zoo models x the three example clusters x objectives (`pytest --update-golden` rewrites them).

A change in the planner, the cost model or a board profile shows up here as a
reviewable diff of plan JSON.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeplan import jsonio
from edgeplan.planner.api import make_plan
from edgeplan.planner.objective import Objective
from edgeplan.planner.plan import Plan
from edgeplan.planner.report import format_plan

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ("three-node-hetero", "rpi4-jetson", "ten-rpi3b")
MODELS = ("resnet18", "mobilenet_v2")
OBJECTIVES = {
    "throughput": Objective(objective="throughput", batch=8),
    "latency": Objective(objective="latency", batch=1),
    "energy": Objective(objective="energy", batch=8),
    "train-time": Objective(mode="training", objective="time", batch=64, microbatches=8, schedule="1f1b"),
}


@pytest.fixture(scope="module")
def graphs():
    pytest.importorskip("torch", reason="golden plans trace zoo models with torch")
    from edgeplan.graph.load import build

    return {m: build(m).graph for m in MODELS}


@pytest.fixture(scope="module")
def clusters():
    from edgeplan.profiles.load import load_cluster

    return {c: load_cluster(ROOT / "examples" / "clusters" / f"{c}.yaml") for c in CLUSTERS}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("model", MODELS)
def test_golden_plan(model, cluster, objective, graphs, clusters, golden):
    plan = make_plan(graphs[model], clusters[cluster], OBJECTIVES[objective])
    text = jsonio.dumps(plan.to_json())
    golden.check(f"plans/{model}--{cluster}--{objective}.json", text)
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.graph_sha256 == graphs[model].digest() and plan.cluster_sha256 == clusters[cluster].digest()
    assert format_plan(plan).count("\n") > 5
