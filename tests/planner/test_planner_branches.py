"""Parallel branches + pinned trunk (planner/branches): the search against an independent exhaustive search.

The brute force here enumerates every trunk split into consecutive stages, every ordered choice
of disjoint unit groups and every integer split of the micro-batch over a group, and prices each
with a plain re-implementation of the model in branches' docstring (loops over layers, no
Prefix sums, no greedy sample allocation, no remembered links). The search must reach the
same optimum on seeded random instances, for training and inference objectives.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edgeplan.errors import PlanError
from edgeplan.planner import branches as br
from edgeplan.planner import costmodel
from edgeplan.planner.costmodel import StageSpec
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs

# --- independent pricing --------------------------------------------------------------------------------


def _link(costs, src, dst):
    pairs = [(a, b) for a in src for b in dst if a != b]
    if not pairs:
        return None
    return (min(costs.bandwidth[a, b] for a, b in pairs), max(costs.latency_s[a, b] for a, b in pairs),
            max(costs.energy_per_byte_j[a, b] for a, b in pairs))


def _send(costs, src, dst, per_sample):
    """Move a micro-batch between replica ends ((device, samples) in replica order), like costmodel does."""
    if not hasattr(costmodel, "pair_transfer"):  # the whole micro-batch over the slowest pair link
        link = _link(costs, [d for d, _ in src], [d for d, _ in dst])
        nbytes = sum(k for _, k in src) * per_sample
        return (0.0, 0.0) if link is None else (nbytes / link[0] + link[1], nbytes * link[2])
    # per sample: its sender's and receiver's NICs each spend bytes / bw on it (replicas own ranges in order)
    owner_a = [d for d, k in src for _ in range(k)]
    owner_b = [d for d, k in dst for _ in range(k)]
    busy, lat, energy = {}, 0.0, 0.0
    for x, y in zip(owner_a, owner_b, strict=True):
        if x == y:
            continue
        t = per_sample / costs.bandwidth[x, y]
        busy[("out", x)] = busy.get(("out", x), 0.0) + t
        busy[("in", y)] = busy.get(("in", y), 0.0) + t
        lat = max(lat, costs.latency_s[x, y])
        energy += per_sample * costs.energy_per_byte_j[x, y]
    return (max(busy.values()) + lat, energy) if busy else (0.0, 0.0)


def _allreduce(costs, group, nbytes):
    link = _link(costs, group, group)
    g = len(group)
    if g < 2 or link is None:
        return 0.0, 0.0
    return 2 * (g - 1) / g * nbytes / link[0] + 2 * (g - 1) * link[1], 2 * (g - 1) * nbytes * link[2]


def _stash(obj, S, s):
    if not obj.training:
        return 0
    return obj.microbatches if obj.schedule == "gpipe" else min(obj.microbatches, S - s)


def _layers_time(costs, obj, u, i, j, k, io_bytes):
    """One call of layers [i, j) on unit u with k samples, copying io_bytes per sample in and out."""
    calls = 2 if obj.training else 1
    per = sum(costs.fwd_s[u, x] + (costs.bwd_s[u, x] if obj.training else 0.0) for x in range(i, j))
    fixed = calls * sum(costs.fixed_s[u, x] for x in range(i, j))
    return k * (per + calls * costs.hop_byte_s[u] * io_bytes) + fixed + calls * costs.hop_s[u]


def _memory(costs, obj, i, j, k, stash, in_bytes):
    wf = 1 + ((1 + obj.optimizer_states) if obj.training else 0)
    params = sum(costs.param_bytes[x] for x in range(i, j))
    acts = sum(costs.act_bytes[x] for x in range(i, j))
    return params * wf + k * (stash * acts + in_bytes + max(costs.act_bytes[x] for x in range(i, j)))


def brute_price(costs, prob, obj, bunits, stages):
    """Objective value of a layout, or None when it breaks memory or a pin (independent of branches.py)."""
    m, M, train = obj.micro, obj.microbatches, obj.training
    head = 0
    S = len(stages) + (1 if prob.branches else 0)
    devs = [tuple(costs.units[u][0] for u, _ in reps) for _, _, reps in stages]
    ends = [tuple((costs.units[u][0], k) for u, k in reps) for _, _, reps in stages]
    dev_work, mem, ar_of = {}, {}, {}
    res, chain, dyn, crit = [], 0.0, 0.0, 0.0
    for b, u in zip(prob.branches, bunits, strict=True):
        d = costs.units[u][0]
        if d != b.device:
            return None
        t = _layers_time(costs, obj, u, b.start, b.stop, m, b.in_bytes + b.out_bytes) if b.stop > b.start else 0.0
        if b.stop > b.start:
            mem[d] = mem.get(d, 0.0) + _memory(costs, obj, b.start, b.stop, m, _stash(obj, S, 0), b.in_bytes)
        in_t, in_e = _send(costs, ((b.source, m),), ((d, m),), b.in_bytes)
        s_t, s_e = _send(costs, ((d, m),), ends[0], b.out_bytes)
        link = (2 if train else 1) * s_t
        res += [(in_t, (M - 1) * in_t), (link, (M - 1) * link)]
        dyn += in_e + (2 if train else 1) * s_e + max(costs.busy_power_w[u] - costs.idle_power_w[d], 0.0) * t
        dev_work.setdefault(d, []).append(t)
    for b, u in zip(prob.branches, bunits, strict=True):
        d = costs.units[u][0]
        in_t, _ = _send(costs, ((b.source, m),), ((d, m),), b.in_bytes)
        s_t, _ = _send(costs, ((d, m),), ends[0], b.out_bytes)
        crit = max(crit, in_t + sum(dev_work[d]) + (2 if train else 1) * s_t)
    if not prob.branches:
        in_t, in_e = _send(costs, ((prob.source, m),), ends[0], costs.cut_bytes[prob.join])
        res.append((in_t, (M - 1) * in_t))
        chain += in_t
        dyn += in_e
    pins = dict(prob.layer_pins)
    for s, (i, j, reps) in enumerate(stages):
        want = {pins[x] for x in range(i, j) if x in pins} | {d for k, d, _ in prob.raw_cuts if k == i}
        if want and (len(want) > 1 or devs[s] != tuple(want)):
            return None
        stash = _stash(obj, S, s + (1 if prob.branches else 0))
        taus = []
        for u, k in reps:
            d = costs.units[u][0]
            t = _layers_time(costs, obj, u, i, j, k, costs.cut_bytes[i] + costs.cut_bytes[j])
            taus.append(t)
            mem[d] = mem.get(d, 0.0) + _memory(costs, obj, i, j, k, stash, costs.cut_bytes[i])
            dev_work.setdefault(d, []).append(t)
            dyn += max(costs.busy_power_w[u] - costs.idle_power_w[d], 0.0) * t
        last = s + 1 == len(stages)
        if not last:
            st, se = _send(costs, ends[s], ends[s + 1], costs.cut_bytes[j])
        elif not train:
            st, se = _send(costs, ends[s], ((head, m),), costs.cut_bytes[j])
        else:
            st, se = 0.0, 0.0
        art, are = _allreduce(costs, devs[s], sum(costs.param_bytes[i:j])) if train else (0.0, 0.0)
        for d in devs[s]:
            ar_of[d] = art
        link = 2 * st if (train and not last) else st
        res += [(max(taus), (M - 1) * max(taus) + art), (link, (M - 1) * link)]
        chain += max(taus) + link
        dyn += se * (2 if (train and not last) else 1) + (are / M if train else 0.0)
    for d, ts in dev_work.items():
        res.append((sum(ts), (M - 1) * sum(ts) + ar_of.get(d, 0.0)))
    if any(v > costs.ram_bytes[d] for d, v in mem.items()):
        return None
    period = max(p for p, _ in res)
    idle = sum(costs.idle_power_w[d] for d in dev_work)
    if train:
        it = crit + chain + max(q for _, q in res)
        latency, energy = it, (dyn * M + idle * it) / obj.batch
    else:
        latency, energy = crit + chain + (M - 1) * period, (dyn + idle * period) / m
    if (obj.latency_budget_s is not None and latency > obj.latency_budget_s) or \
            (obj.energy_budget_j is not None and energy > obj.energy_budget_j):
        return None
    return {"throughput": period, "energy": energy}.get(obj.objective, latency)


def _splits(m, g):
    """Every way to give m samples to g replicas, each at least one."""
    for cuts in itertools.combinations(range(1, m), g - 1):
        edges = (0, *cuts, m)
        yield tuple(edges[x + 1] - edges[x] for x in range(g))


def brute_best(costs, prob, obj):
    n = costs.n_layers
    units = [u for u, (_, _, t) in enumerate(costs.units)]
    by_dev = {}
    for u in units:
        by_dev.setdefault(costs.units[u][0], []).append(u)
    groups = []
    for r in range(1, len(by_dev) + 1):
        for devs in itertools.combinations(sorted(by_dev), r):
            groups += [g for g in itertools.product(*(by_dev[d] for d in devs))]
    b_opts = [by_dev[b.device] for b in prob.branches]
    best = math.inf
    trunk = list(range(prob.join + 1, n))
    for r in range(len(trunk) + 1):
        for cuts in itertools.combinations(trunk, r):
            edges = (prob.join, *cuts, n)
            spans = [(edges[x], edges[x + 1]) for x in range(len(edges) - 1)]
            for gs in itertools.product(groups, repeat=len(spans)):
                used = [costs.units[u][0] for g in gs for u in g]
                if len(used) != len(set(used)):
                    continue
                for ks in itertools.product(*(list(_splits(obj.micro, len(g))) for g in gs)):
                    stages = [(i, j, tuple(zip(g, k, strict=True))) for (i, j), g, k in zip(spans, gs, ks, strict=True)]
                    for bu in itertools.product(*b_opts):
                        v = brute_price(costs, prob, obj, bu, stages)
                        if v is not None and v < best:
                            best = v
    return best


# --- instances --------------------------------------------------------------------------------------------


def _instance(seed: int, units: int = 1, trunk: int = 3):
    """3 branches of 1-2 layers on boards 1, 2 and 0 (the head), a ``trunk``-layer trunk, 4 boards."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(1, 3)) for _ in range(3)]
    join = sum(sizes)
    costs = random_costs(seed, join + trunk, 4, units_per_device=units, uniform_links=False, ram_mb=(2, 64))
    bs, pos = [], 0
    for k, size in enumerate(sizes):
        dev = k + 1 if k < 2 else 0  # the third branch's input lives on the head and runs there
        bs.append(br.Branch(input=f"x{k}", start=pos, stop=pos + size, in_bytes=float(rng.uniform(1e3, 1e5)),
                            out_bytes=float(costs.cut_bytes[pos + size] / 3), source=dev, device=dev))
        pos += size
    return costs, br.Problem(branches=tuple(bs), join=join, source=0, layer_pins=(), raw_cuts=())


OBJECTIVES = [
    Objective(mode="training", objective="time", batch=4, microbatches=2),
    Objective(mode="training", objective="time", batch=3, microbatches=1, schedule="gpipe"),
    Objective(mode="inference", objective="latency", batch=3, microbatches=1),
    Objective(mode="inference", objective="throughput", batch=4, microbatches=2),
    Objective(mode="inference", objective="energy", batch=3, microbatches=1),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("obj", OBJECTIVES, ids=lambda o: f"{o.mode}-{o.objective}-{o.schedule}")
def test_search_matches_exhaustive_search(seed, obj):
    costs, prob = _instance(seed)
    lay, ev, _notes, exact = br.solve(costs, prob, obj)
    want = brute_best(costs, prob, obj)
    assert exact
    if not math.isfinite(want):
        assert lay is None
        return
    assert lay is not None
    assert ev.value(obj) == pytest.approx(want, rel=1e-9)
    # and the brute force prices the search's own layout the same way
    stages = [(st.start, st.stop, st.replicas) for st in lay.stages]
    assert brute_price(costs, prob, obj, lay.branch_units, stages) == pytest.approx(ev.value(obj), rel=1e-9)


def test_search_matches_exhaustive_search_with_two_units_pins_and_raw_data():
    costs, prob = _instance(5, units=2, trunk=2)
    n = costs.n_layers
    # the last trunk layer pinned to board 2; input x0's raw data (board 1) is read by the first trunk layer
    prob = br.Problem(branches=prob.branches, join=prob.join, source=0, layer_pins=((n - 1, 2),),
                      raw_cuts=((prob.join, 1, "x0"),))
    for obj in OBJECTIVES[:1] + OBJECTIVES[2:3]:
        lay, ev, _, exact = br.solve(costs, prob, obj)
        want = brute_best(costs, prob, obj)
        assert exact and lay is not None
        assert ev.value(obj) == pytest.approx(want, rel=1e-9)
        assert lay.stages[0].replicas == ((lay.stages[0].replicas[0][0], obj.micro),)
        assert costs.units[lay.stages[0].replicas[0][0]][0] == 1  # raw x0 stays on its board
        assert [costs.units[u][0] for u, _ in lay.stages[-1].replicas] == [2]


@pytest.mark.parametrize("seed", [0, 1])
def test_search_matches_exhaustive_search_within_budgets(seed):
    costs, prob = _instance(seed)
    free = Objective(mode="inference", objective="energy", batch=3)
    fastest = br.solve(costs, prob, Objective(mode="inference", objective="latency", batch=3))[1].latency_s
    frugal = br.solve(costs, prob, free)[1]
    budget = (fastest + frugal.latency_s) / 2  # between the fastest plan and the most frugal one
    obj = Objective(mode="inference", objective="energy", batch=3, latency_budget_s=budget)
    lay, ev, _, exact = br.solve(costs, prob, obj)
    want = brute_best(costs, prob, obj)
    assert exact and lay is not None and ev.latency_s <= budget
    assert ev.value(obj) == pytest.approx(want, rel=1e-9)
    quick = br.solve(costs, prob, Objective(mode="training", objective="time", batch=4, microbatches=2))[1]
    train = Objective(mode="training", objective="time", batch=4, microbatches=2,
                      energy_budget_j=quick.energy_j * 0.98)  # the fastest plan is over it: another one, or none
    lay, ev, _, _ = br.solve(costs, prob, train)
    want = brute_best(costs, prob, train)
    assert (lay is None) == (not math.isfinite(want))
    if lay is not None:
        assert ev.value(train) == pytest.approx(want, rel=1e-9) and ev.energy_j <= train.energy_budget_j


def test_junction_waits_for_the_slowest_branch():
    costs, prob = _instance(3)
    obj = OBJECTIVES[2]
    lay, ev, _, _ = br.solve(costs, prob, obj)
    slow = max(range(3), key=lambda k: ev.branches[k].input_s + ev.branches[k].time_s + ev.branches[k].send_s)
    slower = costs.fwd_s.copy()
    b = prob.branches[slow]
    u = lay.branch_units[slow]
    slower[u, b.start:b.stop] *= 3
    costs2 = _with(costs, fwd_s=slower)
    ev2 = br.evaluate(costs2, prob, lay, obj)
    extra = 2 * obj.micro * float(costs.fwd_s[u, b.start:b.stop].sum())
    # the whole extra time of the slowest branch shows up in the latency (it is on the critical path)
    assert ev2.latency_s - ev.latency_s == pytest.approx(extra, rel=1e-6)
    # slowing a branch that is not the slowest by less than its slack changes nothing
    fast = min(range(3), key=lambda k: ev.branches[k].input_s + ev.branches[k].time_s + ev.branches[k].send_s)
    if fast != slow and lay.branch_units[fast] != lay.branch_units[slow] and \
            prob.branches[fast].device != prob.branches[slow].device:
        gap = (ev.branches[slow].input_s + ev.branches[slow].time_s + ev.branches[slow].send_s
               - ev.branches[fast].input_s - ev.branches[fast].time_s - ev.branches[fast].send_s)
        f = prob.branches[fast]
        uf = lay.branch_units[fast]
        base = obj.micro * float(costs.fwd_s[uf, f.start:f.stop].sum())
        if base > 0:
            tweak = costs.fwd_s.copy()
            tweak[uf, f.start:f.stop] *= 1 + 0.5 * gap / base
            ev3 = br.evaluate(_with(costs, fwd_s=tweak), prob, lay, obj)
            assert ev3.latency_s == pytest.approx(ev.latency_s, rel=1e-9)


def _with(costs, **kw):
    from dataclasses import replace

    return replace(costs, **kw)


def test_without_branches_it_prices_like_the_cost_model():
    costs = random_costs(7, 6, 3, uniform_links=False)
    prob = br.Problem(branches=(), join=0, source=0, layer_pins=(), raw_cuts=())
    for obj in OBJECTIVES:
        m = obj.micro
        spec = (StageSpec(0, 2, ((0, m),)), StageSpec(2, 6, ((1, 1), (2, m - 1))))
        a = costmodel.evaluate(costs, spec, obj)
        b = br.evaluate(costs, prob, br.Layout(branch_units=(), stages=spec), obj)
        assert b.value(obj) == pytest.approx(a.value(obj), rel=1e-12)
        assert b.energy_j == pytest.approx(a.energy_j, rel=1e-12)


def test_layout_that_breaks_a_pin_is_refused_by_the_evaluator():
    costs, prob = _instance(4)
    obj = OBJECTIVES[0]
    bad = br.Layout(branch_units=(0, 0, 0), stages=(StageSpec(prob.join, costs.n_layers, ((3, obj.micro),)),))
    ev = br.evaluate(costs, prob, bad, obj)
    assert not ev.feasible and any("must run on dev1" in v for v in ev.violations)
    with pytest.raises(PlanError, match="do not continue"):
        br.evaluate(costs, prob, br.Layout(branch_units=(1, 2, 0), stages=(StageSpec(0, 1, ((3, obj.micro),)),)),
                    obj)


def test_pinned_board_that_cannot_run_its_branch_is_named():
    costs, prob = _instance(0)
    sup = np.array(costs.supported)
    sup[1, prob.branches[0].start] = False  # board dev1 (one unit) misses the first layer of x0's branch
    with pytest.raises(PlanError, match="--pin: dev1 cannot train the branch of input 'x0': none of its units runs "
                                        "layer 'l0'; pin the input to another board"):
        br.solve(_with(costs, supported=sup), prob, OBJECTIVES[0])
