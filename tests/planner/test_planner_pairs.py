"""Wide groups priced as they run (issue 13 item 5): transfers per sender -> receiver pair.

The runtime gives each replica a contiguous sample range in replica order and
each sender sends each receiver the samples their ranges share, all flows at
once. The cost model prices that by the busiest NIC (sending and receiving
apart); ``tests/planner/oracle.simulate_flows`` runs the same flows through the
NICs by event simulation (fair sharing) and is the measurement it is compared
with. Then the DP against the exhaustive oracle on instances where wide groups
feed wide groups.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.planner import search
from edgeplan.planner.costmodel import StageSpec, evaluate, pair_samples, pair_transfer, transfer
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from tests.planner.bruteforce import rel_close
from tests.planner.oracle import oracle, simulate_flows

KB = 1024.0


def test_pair_samples_follow_the_runtime_ranges():
    # stage 0 = a[0,3) b[3,8), stage 1 = c[0,2) d[2,8) (runtime/spec.py): a->c 2, a->d 1, b->d 5
    assert pair_samples((3, 5), (2, 6)) == [(0, 0, 2), (0, 1, 1), (1, 1, 5)]
    assert pair_samples((1,) * 8, (4, 4)) == [(r, r // 4, 1) for r in range(8)]


def test_eight_senders_to_two_receivers_cost_four_samples_not_eight():
    costs = random_costs(1, 3, 11, 2)
    bw, lat = float(costs.bandwidth[1, 2]), float(costs.latency_s[1, 2])
    src = tuple((d, 1) for d in range(1, 9))
    dst = ((9, 4), (10, 4))
    t, _ = pair_transfer(costs, src, dst, 100 * KB)
    assert t == pytest.approx(4 * 100 * KB / bw + lat, rel=1e-12)
    assert transfer(costs, range(1, 9), (9, 10), 8 * 100 * KB)[0] == pytest.approx(8 * 100 * KB / bw + lat)
    assert t == pytest.approx(simulate_flows(costs, list(src), list(dst), 100 * KB)[0], rel=1e-9)
    back, _ = pair_transfer(costs, dst, src, 100 * KB)  # and 2 -> 8: each sender's NIC sends 4
    assert back == pytest.approx(t, rel=1e-12)
    one, _ = pair_transfer(costs, ((1, 8),), ((2, 8),), 100 * KB)  # one board to one board: as before
    assert one == pytest.approx(8 * 100 * KB / bw + lat, rel=1e-12)


def _split(rng, m: int, g: int) -> list[int]:
    b = [0, *sorted(rng.choice(np.arange(1, m), g - 1, replace=False).tolist()), m]
    return [b[i + 1] - b[i] for i in range(g)]


@pytest.mark.parametrize("uniform", [True, False])
def test_cost_model_against_the_event_simulation(uniform):
    """Random wide groups: the simulation never beats the NIC-load figure; fair sharing idles a NIC now and
    then, so it takes up to 1% longer on uniform links (equal in most cases) and up to 8% on mixed ones."""
    ratios = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        costs = random_costs(seed, 3, 12, 3, uniform_links=uniform)
        devs = rng.permutation(12).tolist()
        g1, g2 = int(rng.integers(2, 7)), int(rng.integers(2, 6))
        m = int(rng.integers(max(g1, g2), 20))

        src = list(zip(devs[:g1], _split(rng, m, g1), strict=True))
        dst = list(zip(devs[g1:g1 + g2], _split(rng, m, g2), strict=True))
        model = pair_transfer(costs, tuple(src), tuple(dst), 50 * KB)
        sim = simulate_flows(costs, src, dst, 50 * KB)
        assert model[1] == pytest.approx(sim[1], rel=1e-12)
        ratios.append(sim[0] / model[0])
    ratios = np.array(ratios)
    print(f"uniform={uniform}: simulation / model: median {np.median(ratios):.4f}, max {ratios.max():.4f}")
    assert ratios.min() >= 1 - 1e-9 and ratios.max() <= (1.01 if uniform else 1.08)
    assert np.median(ratios) < 1 + 1e-9
    if uniform:
        assert np.mean(np.abs(ratios - 1) < 1e-6) >= 0.9


def test_a_plans_sends_are_the_simulated_ones():
    """evaluate's figures for a wide -> wide plan (and the head inside the first group) = the simulation."""
    costs = random_costs(7, 6, 11, 2)
    obj = Objective(objective="throughput", batch=8)
    lay = (StageSpec(0, 3, tuple((u, 1) for u in range(0, 8))), StageSpec(3, 6, ((8, 3), (9, 5))))
    ev = evaluate(costs, lay, obj)
    cut = np.asarray(costs.cut_bytes)
    assert ev.stages[0].send_s == pytest.approx(simulate_flows(costs, [(d, 1) for d in range(8)],
                                                               [(8, 3), (9, 5)], cut[3])[0], rel=1e-9)
    assert ev.input_s == pytest.approx(simulate_flows(costs, [(0, 8)], [(d, 1) for d in range(8)], cut[0])[0],
                                       rel=1e-9)  # the head's own sample stays home: 7 cross its NIC
    assert ev.stages[1].send_s == pytest.approx(simulate_flows(costs, [(8, 3), (9, 5)], [(0, 8)], cut[6])[0],
                                                rel=1e-9)


OBJECTIVES = {"throughput": Objective(objective="throughput", batch=4),
              "latency": Objective(objective="latency", batch=4, microbatches=2),
              "energy": Objective(objective="energy", batch=4)}


def _slow_links(costs, factor: float):
    return replace(costs, bandwidth=np.where(np.isfinite(costs.bandwidth), costs.bandwidth / factor, np.inf))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_dp_equals_the_oracle_with_wide_groups(name):
    """A head that only serves and four boards of one kind on slow links: groups of 2 feed groups of 2, or
    1 feeds 3, in the space. The DP's optimum = the oracle's (every layout, every integer split)."""
    obj = OBJECTIVES[name]
    for seed in range(4):
        costs = _slow_links(random_costs(500 + seed, 4, 5, 1, ram_mb=(256, 512)), 10 + 30 * seed)
        sup = np.asarray(costs.supported).copy()
        sup[[u for u, x in enumerate(costs.units) if x[0] == 0]] = False  # the head runs no layer
        costs = replace(costs, supported=sup)
        want = oracle(costs, obj)
        res = search.solve(costs, obj)
        assert res.exact, res.notes
        assert rel_close(res.evaluation.value(obj), want), (seed, res.evaluation.value(obj), want, res.layout)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_speed_balanced_shares_stay_close_to_every_split(name):
    """The DP splits a group's samples by speed (allocate); with per-pair links a skewed split can win (the
    head keeping 3 of 4 samples sends 1, not 2). Measured against the oracle's every split: never better,
    at most a few percent worse on these link-bound cases."""
    obj = OBJECTIVES[name]
    gaps = []
    for seed in range(4):
        costs = _slow_links(random_costs(500 + seed, 3, 5, 2, ram_mb=(256, 512)), 20)
        want = oracle(costs, obj)
        got = search.solve(costs, obj).evaluation.value(obj)
        assert got >= want * (1 - 1e-9)
        gaps.append(got / want - 1)
    print(f"{name}: DP / every-split oracle - 1: {', '.join(f'{g * 100:.2f}%' for g in gaps)}")
    assert max(gaps) <= 0.05


@pytest.mark.parametrize("name", ["throughput", "latency", "time"])
def test_ilp_prices_sends_per_pair_like_the_dp(name):
    """The ILP's per-cut link variable (max of the busiest sender and receiver) = the DP = the evaluator,
    on instances whose optimum sends from or into wide groups (latency: 2 boards -> 2 boards)."""
    from edgeplan.planner import ilp

    obj = {**OBJECTIVES, "time": Objective(mode="training", objective="time", batch=8, microbatches=2,
                                           schedule="1f1b")}[name]
    wide = 0
    for seed in range(3):
        costs = _slow_links(random_costs(500 + seed, 4, 5, 1, ram_mb=(256, 512)), 10)
        dp, ref = search.solve(costs, obj), ilp.solve(costs, obj)
        assert dp.exact and ref.exact
        assert rel_close(dp.evaluation.value(obj), ref.evaluation.value(obj)), (seed, dp.layout, ref.layout)
        wide += len(ref.layout) > 1 and any(len(a.replicas) > 1 for a in ref.layout)
    assert wide >= 1


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_ilp_with_non_uniform_links(name):
    """Item 7: the ILP takes non-uniform links (per-pair time and energy rows) and agrees with the DP; the
    every-split oracle is never beaten. (It can be better than both: on these link-bound instances the
    head keeping more than its speed share sends less, a split outside the speed-balanced shares the
    solvers search; measured up to 33% on throughput.)"""
    from edgeplan.planner import ilp

    obj = OBJECTIVES[name]
    for seed in range(2):
        costs = _slow_links(random_costs(700 + seed, 4, 4, 2, ram_mb=(256, 512), uniform_links=False), 10)
        assert not ilp.uniform_links(costs) and ilp.applicable(costs, obj, 200000)
        dp, ref = search.solve(costs, obj), ilp.solve(costs, obj)
        assert ref.exact
        if dp.exact:
            assert rel_close(dp.evaluation.value(obj), ref.evaluation.value(obj)), (seed, dp.layout, ref.layout)
        assert ref.evaluation.value(obj) <= dp.evaluation.value(obj) * (1 + 1e-9)
        assert ref.evaluation.value(obj) >= oracle(costs, obj) * (1 - 1e-9)
