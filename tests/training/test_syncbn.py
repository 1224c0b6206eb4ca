"""--sync-bn: data-parallel replicas of a BatchNorm model train like one process; without it they do not.

The model (tests/training/bn_model.py) is a small ResNet: a conv-BN stem, a
residual block and a strided block with a BN shortcut (7 BatchNorm layers).
The plan cuts it into 2 stages x 2 replicas with unequal shares (5+11 and
10+6 samples of a 16-sample batch), one micro-batch, and trains 2 SGD
iterations with momentum, so weights, momentum and running statistics all
depend on the batch statistics.

Tolerance: the hybrid run differs from single-process float32 training only by
float32 rounding (other summation orders: convolutions over split batches,
statistics summed as sum/sum-of-squares in float64 and all-reduced, gradients
all-reduced). That rounding is measured here as the distance between the same
single-process training in float32 and in float64 (the noise floor of float32
training for this model and data); the hybrid run must be within 10x of it
(and of 1e-6 absolute). Replicas normalising with their own statistics
differ by far more (asserted > 100x the tolerance), so the test can fail.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgeplan.graph.load import load_model
from edgeplan.training import data, launch, reference
from edgeplan.training.config import TrainConfig

from .training_helpers import training_plan

MODEL = f"{Path(__file__).with_name('bn_model.py')}:build"
CFG = TrainConfig(epochs=1, dataset="digits", lr=0.05, momentum=0.9, max_iters=2, evaluate=False, timeout_s=30)


def _distance(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b if b[k].dtype.is_floating_point)


@pytest.fixture(scope="module")
def single():
    model = load_model(MODEL).module
    ds = data.load("digits", (3, 16, 16), CFG.seed)
    f64 = copy.deepcopy(model).double()
    reference.train_single(model, ds, 16, CFG)
    ds64 = data.Dataset(ds.name, ds.x_train.astype("float64"), ds.y_train, ds.x_test.astype("float64"),
                        ds.y_test, ds.classes)
    reference.train_single(f64, ds64, 16, CFG)
    state = model.state_dict()
    noise = _distance(state, f64.state_dict())
    return state, max(10 * noise, 1e-6)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    plan = training_plan(MODEL, (10,), ((5, 11), (10, 6)), batch=16, microbatches=1)
    return launch.prepare(plan, MODEL, tmp_path_factory.mktemp("syncbn") / "art")


def test_sync_bn_matches_single_process(artifacts, single):
    reference_state, tol = single
    res = launch.run(artifacts, TrainConfig(**{**CFG.__dict__, "sync_bn": True}), run_dir=artifacts / "sync")
    hybrid = torch.load(res.state_dict, weights_only=True)
    assert hybrid.keys() == reference_state.keys()
    d = _distance(hybrid, reference_state)
    assert d <= tol, f"sync-bn run is {d:.3g} from single-process training (tolerance {tol:.3g})"
    assert torch.equal(hybrid["stem.1.num_batches_tracked"], torch.tensor(2))


def test_without_sync_bn_replicas_differ(artifacts, single):
    reference_state, tol = single
    res = launch.run(artifacts, CFG, run_dir=artifacts / "local-bn")
    d = _distance(torch.load(res.state_dict, weights_only=True), reference_state)
    assert d > 100 * tol, f"per-replica BatchNorm is only {d:.3g} from single-process (tolerance {tol:.3g})"
