"""Pure parts of the training runtime: rank table, sample ranges, schedules, data sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgeplan.errors import PlanError
from edgeplan.training import data, routing

from .training_helpers import training_plan


@pytest.fixture(scope="module")
def plan():
    return training_plan("lenet5", (5,), ((5, 3), (2, 6)), batch=32, microbatches=4)


def test_rank_table_ranges_follow_plan_samples(plan):
    ranks = routing.rank_table(plan)
    assert [(r.stage, r.replica, r.lo, r.hi) for r in ranks] == [(0, 0, 0, 5), (0, 1, 5, 8), (1, 0, 0, 2),
                                                                 (1, 1, 2, 8)]
    assert ranks[3].label == "board 'board1b' (stage 1, replica 1, rank 3)"
    # replica 0 of stage 0 (samples 0..4) feeds both downstream replicas; replica 1 (5..7) only the second
    down = routing.stage_ranks(ranks, 1)
    assert [(p.rank, lo, hi) for p, lo, hi in routing.overlaps(ranks[0], down)] == [(2, 0, 2), (3, 2, 5)]
    assert [(p.rank, lo, hi) for p, lo, hi in routing.overlaps(ranks[1], down)] == [(3, 5, 8)]


def test_rank_table_refuses_bad_plans(plan):
    with pytest.raises(PlanError, match="mode is 'inference'"):
        routing.rank_table(dataclasses.replace(plan, mode="inference"))
    with pytest.raises(PlanError, match="not a multiple of microbatches"):
        routing.rank_table(dataclasses.replace(plan, batch=30))
    bad = dataclasses.replace(plan.stages[1], replicas=plan.stages[1].replicas[:1])
    with pytest.raises(PlanError, match="stage 1 replicas take \\[2\\] samples.*add up to 8"):
        routing.rank_table(dataclasses.replace(plan, stages=(plan.stages[0], bad)))


@pytest.mark.parametrize("kind", routing.SCHEDULES)
@pytest.mark.parametrize("stages,micro", [(1, 1), (2, 4), (3, 4), (4, 2), (3, 8)])
def test_schedules_complete_without_deadlock(kind, stages, micro):
    for s in range(stages):
        acts = routing.schedule(kind, stages, s, micro)
        assert sorted(str(a) for a in acts) == sorted([f"F{i}" for i in range(micro)] + [f"B{i}" for i in range(micro)])
        assert [routing.Action.from_str(str(a)) for a in acts] == list(acts)
    steps, peak = routing.simulate(kind, stages, micro)
    assert steps >= 2 * (micro + stages - 1)
    # GPipe stashes every micro-batch; 1F1B at most as many as there are stages
    assert peak == (micro if kind == "gpipe" else min(micro, stages))


def test_schedule_grid_text():
    assert routing.format_grid("1f1b", 2, 3).splitlines() == [
        "stage 0:  F0  F1  B0  F2  B1  B2",
        "stage 1:  F0  B0  F1  B1  F2  B2",
    ]
    with pytest.raises(ValueError):
        routing.Action.from_str("X1")


def test_digits_fit_and_deterministic_order():
    ds = data.load("digits", (1, 32, 32), seed=0)
    assert ds.x_train.shape[1:] == (1, 32, 32) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797 and ds.classes == 10
    # 8x8 -> 32x32 by 4x nearest upsampling: each source pixel becomes a 4x4 block
    blk = ds.x_train[0, 0, :4, :4]
    assert np.all(blk == blk[0, 0])
    assert np.array_equal(data.epoch_order(100, 1, 2), data.epoch_order(100, 1, 2))
    assert not np.array_equal(data.epoch_order(100, 1, 2), data.epoch_order(100, 1, 3))
    three = data.fit_to(np.ones((2, 1, 8, 8), np.float32), (3, 10, 10))
    assert three.shape == (2, 3, 10, 10) and three[0, 0, 0, 0] == 0 and three[0, 2, 1, 1] == 1


def test_microbatch_shards_cover_the_global_batch_once(plan):
    order = data.epoch_order(1000, 0, 0)
    ranks = routing.rank_table(plan)
    for stage in (0, 1):
        got = np.concatenate([data.microbatch_indices(order, 3, 32, 4, k, r.lo, r.hi)
                              for k in range(4) for r in routing.stage_ranks(ranks, stage)])
        assert sorted(got) == sorted(order[3 * 32:4 * 32])


def test_npy_folder_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((50, 1, 8, 8)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 50))
    ds = data.load(str(tmp_path), (3, 16, 16))
    assert ds.x_train.shape == (40, 3, 16, 16) and len(ds.x_test) == 10 and ds.classes <= 3
    with pytest.raises(data.DataError, match="neither digits nor synthetic"):
        data.load("nope", (1, 8, 8))
    with pytest.raises(data.DataError, match="fewer than the global batch"):
        data.iterations(10, 32)
    with pytest.raises(data.DataError, match="has 2 channels"):
        data.fit_to(np.zeros((1, 2, 4, 4), np.float32), (3, 8, 8))
