"""Hybrid training across local ranks (gloo): equivalence, accuracy, local SGD, a killed rank, resume.

Every run starts one process per (board, stage) replica on this machine; the
plan is LeNet-5 cut after layer 5 into 2 stages x 2 replicas with unequal
shares (5+3 and 2+6 samples of each 8-sample micro-batch). LeNet-5 has no
BatchNorm, so in sync mode the hybrid update equals the single-process one.
"""

from __future__ import annotations

import time

import pytest
import torch

from edgeplan.errors import RuntimeFault
from edgeplan.graph import zoo
from edgeplan.training import data, launch, reference
from edgeplan.training.config import TrainConfig
from edgeplan.training.faults import FAULT_ENV

from .training_helpers import training_plan

SHARES = ((5, 3), (2, 6))
DIGITS = TrainConfig(epochs=2, dataset="digits", lr=0.05, momentum=0.9, seed=0, timeout_s=20)


def _prepare(tmp, schedule="gpipe", batch=32, microbatches=4):
    plan = training_plan("lenet5", (5,), SHARES, batch=batch, microbatches=microbatches, schedule=schedule)
    return launch.prepare(plan, "lenet5", tmp / "art")


def _load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_one_hybrid_iteration_equals_single_process(tmp_path):
    art = _prepare(tmp_path, schedule="1f1b", batch=16, microbatches=2)
    cfg = TrainConfig(epochs=1, dataset="digits", lr=0.1, momentum=0.9, weight_decay=1e-3, max_iters=1,
                      evaluate=False, timeout_s=20)
    res = launch.run(art, cfg)
    hybrid = _load(res.state_dict)

    model = zoo.get("lenet5").build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = data.load("digits", (1, 32, 32), cfg.seed)
    reference.train_single(model, ds, 16, cfg)
    single = model.state_dict()
    assert hybrid.keys() == single.keys()
    for k in single:
        assert not torch.equal(single[k], before[k]), f"{k} did not change: the test would prove nothing"
        torch.testing.assert_close(hybrid[k], single[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    return launch.run(_prepare(tmp), DIGITS)


def test_hybrid_digits_accuracy_matches_single_process(digits_run):
    rows = digits_run.epochs
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["measured_iter_s"] > 0 and r["predicted_iter_s"] == 0.05
        assert r["energy_j"]["joules"] > 0
    single = reference.train_single(zoo.get("lenet5").build(), data.load("digits", (1, 32, 32), 0), 32, DIGITS)
    assert rows[-1]["test_accuracy"] > 0.8, rows
    assert abs(rows[-1]["test_accuracy"] - single[-1]["test_accuracy"]) <= 0.01, (rows, single)


def test_assembled_state_dict_loads_into_original_module(digits_run):
    model = zoo.get("lenet5").build()
    model.load_state_dict(_load(digits_run.state_dict), strict=True)
    acc = reference.evaluate(model, data.load("digits", (1, 32, 32), 0))
    assert acc == pytest.approx(digits_run.epochs[-1]["test_accuracy"], abs=1e-5)  # metrics.json keeps 6 digits


def test_killed_rank_fails_fast_naming_board_and_stage_then_resume(tmp_path, digits_run, monkeypatch):
    art = _prepare(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(RuntimeFault) as err:
        launch.run(art, DIGITS, env={FAULT_ENV: "3:1:2"})  # rank 3 dies at iteration 2 of epoch 2
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "board 'board1b' (stage 1, replica 1, rank 3) was killed by SIGKILL" in msg, msg
    assert "--resume" in msg
    assert elapsed < 90, f"took {elapsed:.0f} s: the run must fail within the timeout, not hang"

    resumed = launch.run(art, TrainConfig(**{**DIGITS.__dict__, "resume": True}))
    assert [r["epoch"] for r in resumed.epochs] == [1, 2]
    # same data order and same weights at the epoch-1 checkpoint: the resumed run ends where the uninterrupted did
    a, b = _load(resumed.state_dict), _load(digits_run.state_dict)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_local_sgd_runs_and_reports_accuracy(tmp_path):
    cfg = TrainConfig(**{**DIGITS.__dict__, "sync": "local-sgd", "sync_every": 4})
    res = launch.run(_prepare(tmp_path), cfg)
    assert len(res.epochs) == 2
    acc = res.epochs[-1]["test_accuracy"]
    assert 0.5 < acc <= 1.0, res.epochs


def test_frozen_rank_fails_within_the_timeout(tmp_path):
    """A board that stops answering (SIGSTOP, no connection reset) is named once the receive timeout expires."""
    plan = training_plan("lenet5", (5,), ((8,), (8,)), batch=16, microbatches=2)
    art = launch.prepare(plan, "lenet5", tmp_path / "art")
    cfg = TrainConfig(epochs=1, dataset="digits", max_iters=4, evaluate=False, timeout_s=6)
    t0 = time.monotonic()
    with pytest.raises(RuntimeFault) as err:
        launch.run(art, cfg, env={FAULT_ENV: "1:0:1:stop"})  # stage 1 freezes before iteration 1
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert "board 'board0a' (stage 0, replica 0, rank 0): lost contact with board 'board1a' (stage 1" in msg, msg
    assert "Timed out" in msg and "stopped 1 remaining rank" in msg, msg
    assert elapsed < 60, f"took {elapsed:.0f} s"
