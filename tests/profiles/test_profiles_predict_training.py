"""`edgeplan train` reports, per stage, each figure the plan predicts beside it (issue 14 item 5, first half):
forward and backward of one micro-batch on the stage's slowest replica, and per iteration the optimizer step
and the gradient all-reduce. Local ranks (gloo) on the LeNet-5 plan of the training tests: 2 stages x 2
replicas, so both stages all-reduce.

What can be checked without boards: the figures are measured (positive, and each stage's compute fits
inside the measured iteration it is part of: M micro-batches of forward + backward + the step never exceed
the iteration's wall time), the plan's per-stage predictions stand beside them, and they are printed.
"""

from __future__ import annotations

import dataclasses

import pytest

from edgeplan.training import launch, metrics
from edgeplan.training.config import TrainConfig
from tests.training.training_helpers import training_plan


def test_train_reports_forward_backward_optimizer_allreduce_per_stage_beside_the_plan(tmp_path, capsys):
    plan = training_plan("lenet5", (5,), ((5, 3), (2, 6)), batch=32, microbatches=4)
    # per-stage predictions as a planner writes them (forward_s, compute_s = forward + backward)
    plan = dataclasses.replace(plan, stages=tuple(dataclasses.replace(s, forward_s=0.001 * (s.index + 1),
                                                                      compute_s=0.003 * (s.index + 1))
                                                  for s in plan.stages))
    art = launch.prepare(plan, "lenet5", tmp_path / "art")
    res = launch.run(art, TrainConfig(epochs=1, dataset="digits", lr=0.05, seed=0, max_iters=3, evaluate=False,
                                      timeout_s=30))
    row = res.epochs[-1]
    assert [s["stage"] for s in row["stages"]] == [0, 1]
    for s in row["stages"]:
        fwd, bwd, opt, ar = (s[k][0] for k in ("forward_s", "backward_s", "optimizer_s", "allreduce_s"))
        assert min(fwd, bwd, opt, ar) > 0, s  # measured on every stage (both have 2 replicas: all-reduce)
        # one rank's compute in an iteration: M x (forward + backward) + step; the slowest replica per
        # figure may differ, so the bound is loose by the replicas' spread, never by more than 2x
        assert plan.microbatches * (fwd + bwd) + opt + ar <= 2 * row["measured_iter_s"] * row["dilation"]
        p = plan.stages[s["stage"]]
        assert s["forward_s"][1] == pytest.approx(p.forward_s)
        assert s["backward_s"][1] == pytest.approx(p.compute_s - p.forward_s)
    text = metrics.format_epoch(row)
    assert "stage 1 (board ms, measured/predicted): forward" in text and "all-reduce" in text
