"""Plan files, text form, report, schedule simulator, SVG, and the errors a user can cause."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeplan import jsonio
from edgeplan.errors import PlanError
from edgeplan.planner.api import layout_from_text, layout_of, objective_of, plan_from_costs
from edgeplan.planner.costmodel import StageSpec, evaluate
from edgeplan.planner.objective import Objective, parse_quantity
from edgeplan.planner.plan import Plan, load
from edgeplan.planner.report import format_plan
from edgeplan.planner.schedule import format_order, simulate, simulate_plan
from edgeplan.planner.synthetic import random_costs
from edgeplan.planner.textform import from_str, to_str


@pytest.fixture(scope="module")
def costs():
    return random_costs(3, 12, 4, 3, dag=True, units_per_device=2, npu_gaps=True, ram_mb=(16, 64))


@pytest.fixture(scope="module")
def plan(costs):
    return plan_from_costs(costs, Objective(objective="throughput", batch=8), model="toy", cluster="four")


def test_plan_json_round_trips_and_is_deterministic(plan, costs, tmp_path):
    text = jsonio.dumps(plan.to_json())
    again = Plan.from_json(json.loads(text))
    assert jsonio.dumps(again.to_json()) == text
    other = plan_from_costs(costs, Objective(objective="throughput", batch=8), model="toy", cluster="four")
    assert jsonio.dumps(other.to_json()) == text  # same inputs, same bytes
    path = jsonio.write(tmp_path / "plan.json", plan.to_json())
    assert load(str(path)) == again
    assert {b.name for b in plan.baselines} == {"best-single-device", "data-parallel-all", "uniform-split",
                                                 "param-balanced"}


def test_text_form_parses_back_to_the_same_plan(plan, costs):
    text = to_str(plan)
    model, stages = from_str(text)
    assert model == "toy" and len(stages) == len(plan.stages)
    obj = objective_of(plan)
    assert obj == Objective(objective="throughput", batch=8, head=plan.head)
    layout = layout_from_text(costs, text, obj)
    assert layout == layout_of(costs, plan)
    assert evaluate(costs, layout, obj).throughput == pytest.approx(plan.predicted.throughput, rel=1e-5)  # 6 digits


def test_text_form_example_from_the_issue():
    model, stages = from_str("resnet18 | 0-21@rk3588:gpu | 22-60@rpi4a:cpu*0.5+rpi4b:cpu*0.5")
    assert model == "resnet18"
    assert (stages[0].start, stages[0].stop, stages[0].replicas) == (0, 22, (("rk3588", "gpu", 1.0),))
    assert stages[1].stop == 61 and stages[1].replicas[1] == ("rpi4b", "cpu", 0.5)


@pytest.mark.parametrize("bad", ["resnet18", "resnet18 | 0-3", "m | 3-1@a:cpu", "m | 0-3@a:cpu+b:cpu", "| 0-1@a:cpu"])
def test_text_form_errors_say_what_is_wrong(bad):
    with pytest.raises(PlanError, match="plan text"):
        from_str(bad)


def test_report_lists_stages_baselines_and_speedups(plan):
    text = format_plan(plan)
    for s in plan.stages:
        assert s.first_layer in text and s.last_layer in text
        for r in s.replicas:
            assert f"{r.device}:{r.unit} {r.samples}" in text
    for b in plan.baselines:
        assert b.name in text
    assert "speed-up" in text and "memory MB used/cap" in text and to_str(plan) in text


def test_evaluator_figures_by_hand():
    """One device, one stage: latency = input link + compute + output link; energy from powers.
    compute = 2 samples x (layers + hop bytes of cut 0 and cut 3) + per-layer overheads + the hop's per call."""
    c = random_costs(0, 3, 2, 2)
    obj = Objective(objective="latency", batch=2)
    ev = evaluate(c, (StageSpec(0, 3, ((1, 2),)),), obj)  # unit 1 = device 1 (the head is device 0)
    bw, lat = c.bandwidth[0, 1], c.latency_s[0, 1]
    tin = 2 * c.cut_bytes[0] / bw + lat
    tout = 2 * c.cut_bytes[3] / bw + lat
    comp = (2 * (c.fwd_s[1].sum() + c.hop_byte_s[1] * (c.cut_bytes[0] + c.cut_bytes[3]))
            + c.fixed_s[1].sum() + c.hop_s[1])
    assert c.hop_s[1] > 0 and c.hop_byte_s[1] > 0  # the runtime's cost is in the figure
    assert ev.latency_s == pytest.approx(tin + comp + tout, rel=1e-12)
    assert ev.period_s == pytest.approx(max(tin, comp, tout), rel=1e-12)
    e = (max(c.busy_power_w[1] - c.idle_power_w[1], 0) * comp + c.idle_power_w[1] * ev.period_s
         + 2 * (c.cut_bytes[0] + c.cut_bytes[3]) * c.energy_per_byte_j[0, 1]) / 2
    assert ev.energy_j == pytest.approx(e, rel=1e-12)


def test_gpipe_simulation_matches_the_planner_formula():
    f = [1.0, 3.0, 2.0]
    b = [2 * x for x in f]
    for M in (1, 2, 5):
        sim = simulate(f, b, [0.0] * 3, M, "gpipe")
        assert sim.makespan == pytest.approx(sum(f) + sum(b) + (M - 1) * max(x + y for x, y in zip(f, b, strict=True)))
        assert sim.peak_inflight == (M, M, M)


def test_1f1b_stashes_only_stages_left_with_the_same_bubble():
    f = [1.0, 1.0, 1.0, 1.0]
    b = [2.0] * 4
    g = simulate(f, b, [0.0] * 4, 8, "gpipe")
    o = simulate(f, b, [0.0] * 4, 8, "1f1b")
    assert o.peak_inflight == (4, 3, 2, 1)
    assert o.makespan == pytest.approx(g.makespan) == pytest.approx(4 * 3 + 7 * 3)
    assert "B7" in format_order(4, 8, "1f1b")


def test_plan_simulation_runs_for_training(costs):
    p = plan_from_costs(costs, Objective(mode="training", objective="time", batch=16, microbatches=4),
                        with_baselines=False)
    sim = simulate_plan(p)
    assert len(sim.actions) == 2 * 4 * len(p.stages)
    assert sim.makespan <= p.predicted.iter_s * (1 + 1e-9) + sum(s.send_s for s in p.stages) * 8


def test_svg_is_written(plan, tmp_path):
    from edgeplan.planner.svg import draw

    out = draw(plan, tmp_path / "plan.svg")
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_memory_error_names_device_shortfall_and_alternatives():
    c = random_costs(2, 10, 3, 2, ram_mb=(30, 40))
    c.act_bytes[:] *= 40  # huge stashed activations
    obj = Objective(mode="training", objective="time", batch=64, microbatches=2, schedule="gpipe")
    with pytest.raises(PlanError) as e:
        plan_from_costs(c, obj)
    msg = str(e.value)
    assert "runs out of memory by" in msg and "MB" in msg and any(d in msg for d in c.devices)
    assert "--batch" in msg and "--microbatches" in msg and "more board" in msg


def test_unmeetable_budget_reports_best_achievable(costs):
    obj = Objective(objective="energy", batch=8, latency_budget_s=1e-6)
    with pytest.raises(PlanError, match="best achievable latency is"):
        plan_from_costs(costs, obj)


def test_latency_budget_trades_throughput():
    # an instance where the fastest plan and the highest-throughput plan differ
    costs = random_costs(1, 12, 4, 3, dag=True, units_per_device=2, npu_gaps=True, ram_mb=(16, 64))
    free = plan_from_costs(costs, Objective(objective="throughput", batch=8, microbatches=4), with_baselines=False)
    fastest = plan_from_costs(costs, Objective(objective="latency", batch=8, microbatches=4), with_baselines=False)
    assert fastest.predicted.latency_s < free.predicted.latency_s  # else there is nothing to trade
    budget = (fastest.predicted.latency_s + free.predicted.latency_s) / 2  # achievable, and binding
    tight = plan_from_costs(costs, Objective(objective="throughput", batch=8, microbatches=4,
                                             latency_budget_s=budget), with_baselines=False)
    assert tight.predicted.latency_s <= budget
    assert tight.latency_budget_s == pytest.approx(budget, rel=1e-5) and "budgets: latency <=" in format_plan(tight)
    assert tight.predicted.throughput <= free.predicted.throughput * (1 + 1e-9)
    assert any("DP heuristic" in n for n in tight.notes)


@pytest.mark.parametrize("kw,match", [
    ({"objective": "time"}, "does not apply to inference"),
    ({"batch": 10, "microbatches": 3}, "not divisible"),
    ({"mode": "training", "objective": "time", "schedule": "none2"}, "schedule"),
    ({"latency_budget_s": -1.0}, "must be > 0"),
])
def test_objective_errors(kw, match):
    with pytest.raises(PlanError, match=match):
        Objective(**kw)


def test_head_must_exist(costs):
    with pytest.raises(PlanError, match="head device 'nope'"):
        plan_from_costs(costs, Objective(head="nope"))


def test_quantities():
    assert parse_quantity("50ms", "time", "--latency-budget") == pytest.approx(0.05)
    assert parse_quantity("30mJ", "energy", "--energy-budget") == pytest.approx(0.03)
    with pytest.raises(PlanError, match="--latency-budget"):
        parse_quantity("50", "time", "--latency-budget")


def test_samples_are_integral_and_shares_sum_to_one(plan):
    for s in plan.stages:
        assert sum(r.samples for r in s.replicas) == plan.batch // plan.microbatches
        assert sum(r.share for r in s.replicas) == pytest.approx(1.0)
        assert all(r.samples >= 1 for r in s.replicas)


def test_npu_unit_only_runs_stages_it_supports():
    c = random_costs(9, 10, 3, 3, units_per_device=3, npu_gaps=True)
    p = plan_from_costs(c, Objective(objective="throughput", batch=4), with_baselines=False)
    for s in p.stages:
        for r in s.replicas:
            u = next(k for k, x in enumerate(c.units) if c.devices[x[0]] == r.device and x[1] == r.unit)
            assert np.all(c.supported[u, s.start:s.stop])


def test_training_plans_use_only_units_that_can_train():
    """The synthetic units are cpu/gpu/npu with target x86; make unit 1 of every device an NPU
    and a Mali GPU: a training plan must not place a replica there, and says so."""
    from dataclasses import replace as dc_replace

    c = random_costs(2, 8, 3, 2, units_per_device=2)
    targets = ("npu", "mali", "npu")
    units = tuple((d, n, targets[d] if k % 2 else t) for k, (d, n, t) in enumerate(c.units))
    fast = np.array([0.1 if k % 2 else 1.0 for k in range(len(units))])[:, None]  # accelerators win on speed
    c = dc_replace(c, units=units, fwd_s=c.fwd_s * fast, bwd_s=c.bwd_s * fast, fixed_s=c.fixed_s * fast)
    obj = Objective(mode="training", objective="time", batch=8, microbatches=2)
    p = plan_from_costs(c, obj, with_baselines=False)
    used = {(r.device, r.target) for s in p.stages for r in s.replicas}
    assert used and all(t == "x86" for _, t in used)
    assert any(n.startswith("training uses CPU and CUDA units only") for n in p.notes)
    inference = plan_from_costs(c, Objective(batch=8, microbatches=2), with_baselines=False)
    assert inference.notes == () or not any("training uses" in n for n in inference.notes)


def test_simulator_uses_the_cost_tables_forward_and_backward_times():
    """Issue 13 item 7: backward = 5 x forward here; the simulator's F and B actions take the cost table's
    times (by hand for the slowest replica), not a 1:2 split of the stage time."""
    from dataclasses import replace as dc_replace

    c = random_costs(4, 10, 3, 3, dag=True)
    c = dc_replace(c, bwd_s=5 * c.fwd_s)
    obj = Objective(mode="training", objective="time", batch=8, microbatches=4, schedule="gpipe")
    p = plan_from_costs(c, obj, with_baselines=False, min_gain=0.0)
    layout = layout_of(c, p)
    sim = simulate_plan(p)
    for s, st in zip(p.stages, layout, strict=True):
        times = []
        for u, k in st.replicas:
            copy = c.hop_byte_s[u] * (c.cut_bytes[st.start] + c.cut_bytes[st.stop])
            call = c.fixed_s[u, st.start:st.stop].sum() + c.hop_s[u]
            f = k * (c.fwd_s[u, st.start:st.stop].sum() + copy) + call
            b = k * (c.bwd_s[u, st.start:st.stop].sum() + copy) + call
            times.append((f + b, f))
        total, fwd = max(times)
        assert s.compute_s == pytest.approx(total, rel=1e-5) and s.forward_s == pytest.approx(fwd, rel=1e-5)
        for a in sim.actions:
            if a.stage == s.index:
                want = s.forward_s if a.kind == "F" else s.compute_s - s.forward_s
                assert a.end - a.start == pytest.approx(want, rel=1e-9)
        assert s.forward_s < s.compute_s / 3 * 0.9  # the old 1:2 split would be wrong here
