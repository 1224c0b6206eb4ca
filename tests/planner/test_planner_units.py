"""Several units of one board at once (issue 13 item 4): shared RAM, shared NIC, hand-over copies, idle power once.

Expected figures are computed here from the raw CostTable arrays, and the period
of a board whose NIC carries two stages' transfers is measured by an event
simulation of micro-batches through the units and NICs (each a resource that
runs one task at a time), which shares no code with ``costmodel.evaluate``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.errors import PlanError
from edgeplan.planner import units
from edgeplan.planner.api import plan_from_costs
from edgeplan.planner.costmodel import StageSpec, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.report import format_plan
from edgeplan.profiles.cost import CostTable

MB = float(1 << 20)


def table(*, ram_mb=(4096.0, 4096.0, 4096.0), bw=100 * MB, lat=0.0, cut_kb=64.0, rock_targets=("arm-cpu", "npu"),
          hop_byte=(1e-9, 4e-10, 2e-10, 1e-9)) -> CostTable:
    """head (cpu) + rock (cpu, npu) + pi (cpu); 6 layers; the NPU is 4x the rock CPU."""
    n = 6
    units_ = ((0, "cpu", "x86"), (1, "cpu", rock_targets[0]), (1, "npu", rock_targets[1]), (2, "cpu", "arm-cpu"))
    base = np.array([2.0, 3.0, 1.0, 2.0, 3.0, 1.0]) * 1e-3
    speed = np.array([1.0, 1.0, 4.0, 1.5])
    fwd = base[None, :] / speed[:, None]
    cut = np.full(n + 1, cut_kb * 1024)
    bandwidth = np.full((3, 3), bw)
    np.fill_diagonal(bandwidth, np.inf)
    latency = np.full((3, 3), lat)
    np.fill_diagonal(latency, 0.0)
    return CostTable(
        layer_names=tuple(f"l{i}" for i in range(n)), layer_ops=("conv2d",) * n, devices=("head", "rock", "pi"),
        units=units_, fwd_s=fwd, bwd_s=2 * fwd, fixed_s=np.full((4, n), 1e-4), supported=np.ones((4, n), bool),
        param_bytes=np.full(n, 10 * MB), act_bytes=np.full(n, cut_kb * 1024), cut_bytes=cut,
        ram_bytes=np.array(ram_mb) * MB, idle_power_w=np.array([5.0, 3.0, 2.5]),
        busy_power_w=np.array([20.0, 8.5, 6.0, 6.0]), bandwidth=bandwidth, latency_s=latency,
        energy_per_byte_j=np.where(np.isfinite(bandwidth), 8e-9, 0.0),
        hop_s=np.full(4, 5e-4), hop_byte_s=np.array(hop_byte),
    )


CPU, NPU, PI = 1, 2, 3  # global unit indices in ``table``


def two_units(m: int = 1):
    return (StageSpec(0, 3, ((NPU, m),)), StageSpec(3, 6, ((CPU, m),)))


def call_s(c: CostTable, u: int, i: int, j: int, k: int) -> float:
    """One call of layers [i, j) on unit u with k samples, from the raw arrays."""
    return (k * (c.fwd_s[u, i:j].sum() + c.hop_byte_s[u] * (c.cut_bytes[i] + c.cut_bytes[j]))
            + c.fixed_s[u, i:j].sum() + c.hop_s[u])


def mem_b(c: CostTable, i: int, j: int, k: int) -> float:
    return c.param_bytes[i:j].sum() + k * (c.cut_bytes[i] + c.act_bytes[i:j].max())


def test_two_stages_on_two_units_of_one_board_are_valid_but_a_unit_runs_one_stage():
    c = table()
    obj = Objective(batch=1)
    ev = evaluate(c, two_units(), obj)
    assert ev.feasible and {r.device for s in ev.stages for r in s.replicas} == {1}
    with pytest.raises(PlanError, match=r"unit rock:npu is used by more than one stage"):
        evaluate(c, (StageSpec(0, 3, ((NPU, 1),)), StageSpec(3, 6, ((NPU, 1),))), obj)
    with pytest.raises(PlanError, match=r"stage 0: device 'rock' appears twice in one replica group"):
        evaluate(c, (StageSpec(0, 6, ((NPU, 1), (CPU, 1))),), Objective(batch=2))


def test_stages_on_one_board_share_its_ram():
    obj = Objective(batch=1)
    need = mem_b(table(), 0, 3, 1) + mem_b(table(), 3, 6, 1)
    each = max(mem_b(table(), 0, 3, 1), mem_b(table(), 3, 6, 1))
    ram = (each + need) / 2 / MB  # each stage alone fits, both together do not
    ev = evaluate(table(ram_mb=(4096.0, ram, 4096.0)), two_units(), obj)
    assert not ev.feasible
    assert ev.overflows == ((1, pytest.approx(need), pytest.approx(ram * MB)),)
    assert evaluate(table(ram_mb=(4096.0, need / MB * 1.01, 4096.0)), two_units(), obj).feasible


def test_handover_between_units_is_a_copy_unless_both_are_cpus():
    obj = Objective(batch=4, microbatches=1)
    c = table()
    ev = evaluate(c, two_units(4), obj)
    # stage 0 (npu) -> stage 1 (cpu) on one board: out of the NPU's memory, into the CPU's
    want = 4 * c.cut_bytes[3] * (c.hop_byte_s[NPU] + c.hop_byte_s[CPU]) / 2
    assert ev.stages[0].send_s == pytest.approx(want)
    cpus = table(rock_targets=("arm-cpu", "arm-cpu"))
    assert evaluate(cpus, two_units(4), obj).stages[0].send_s == 0.0


def test_a_board_with_two_busy_units_idles_once():
    obj = Objective(batch=1, objective="energy")
    c = table()
    ev = evaluate(c, two_units(), obj)
    t0, t1 = call_s(c, NPU, 0, 3, 1), call_s(c, CPU, 3, 6, 1)
    link_j = (c.cut_bytes[0] + c.cut_bytes[6]) * 8e-9  # head -> rock, rock -> head
    # rock's idle 3 W once (not once per busy unit); the head runs no stage, so its idle power is not counted
    want = (6.0 - 3.0) * t0 + (8.5 - 3.0) * t1 + 3.0 * ev.period_s + link_j
    assert ev.energy_j == pytest.approx(want)


# --- the oracle: micro-batches through units and NICs, event by event ------------------------------------------


def simulate(steps: list[tuple[frozenset, float]], jobs: int) -> float:
    """Makespan of ``jobs`` micro-batches, each running ``steps`` in order; a step holds all its resources.

    Non-delay list scheduling: repeatedly start the step (of any micro-batch whose previous
    step is done) that can start first, ties to the older micro-batch.
    """
    free: dict = {}
    nxt = [0] * jobs
    ready = [0.0] * jobs
    end = 0.0
    while True:
        best = None
        for j in range(jobs):
            if nxt[j] < len(steps):
                res, _ = steps[nxt[j]]
                start = max([ready[j]] + [free.get(r, 0.0) for r in res])
                if best is None or start < best[0] - 1e-15:
                    best = (start, j)
        if best is None:
            return end
        start, j = best
        res, dur = steps[nxt[j]]
        for r in res:
            free[r] = start + dur
        ready[j] = start + dur
        nxt[j] += 1
        end = max(end, start + dur)


def steps_of(c: CostTable, layout, m: int) -> list[tuple[frozenset, float]]:
    """The resources and seconds of each step of one micro-batch (single-replica stages, no latency)."""
    out = []
    where = [0] + [c.units[st.replicas[0][0]][0] for st in layout] + [0]
    unit = [0] + [st.replicas[0][0] for st in layout] + [0]
    bounds = [0] + [st.stop for st in layout]
    for s in range(len(layout) + 1):
        x, y, nbytes = where[s], where[s + 1], m * c.cut_bytes[bounds[s]]
        if x != y:
            out.append((frozenset({("out", x), ("in", y)}), nbytes / c.bandwidth[x, y]))
        elif unit[s] != unit[s + 1] and s > 0 and s < len(layout):
            out.append((frozenset({("copy", s)}), nbytes * (c.hop_byte_s[unit[s]] + c.hop_byte_s[unit[s + 1]]) / 2))
        if s < len(layout):
            st = layout[s]
            out.append((frozenset({("unit", unit[s + 1])}), call_s(c, unit[s + 1], st.start, st.stop, m)))
    return out


@pytest.mark.parametrize("bw_mb, nic_bound", [(2.0, True), (400.0, False)])
def test_shared_nic_period_matches_event_simulation(bw_mb, nic_bound):
    """rock hosts stages 0 (npu) and 2 (cpu) with stage 1 on pi: rock's NIC carries the input, both of its
    stages' sends and pi's answer; the model's period must be the simulated steady-state spacing."""
    c = table(bw=bw_mb * MB, cut_kb=128.0)
    layout = (StageSpec(0, 2, ((NPU, 1),)), StageSpec(2, 4, ((PI, 1),)), StageSpec(4, 6, ((CPU, 1),)))
    ev = evaluate(c, layout, Objective(batch=1))
    steps = steps_of(c, layout, 1)
    sim = (simulate(steps, 120) - simulate(steps, 60)) / 60
    assert ev.period_s == pytest.approx(sim, rel=1e-6)
    links = max(max(s.compute_s, s.send_s) for s in ev.stages)
    assert (ev.period_s > links * 1.5) == nic_bound  # NIC-bound: no single link or stage explains the period
    one = simulate(steps, 1)  # one micro-batch: the latency is the chain's sum
    assert ev.latency_s == pytest.approx(one, rel=1e-9)


# --- the local search ---------------------------------------------------------------------------------------------


def test_local_search_puts_an_idle_unit_of_a_used_board_to_work():
    """One board: the DP's plan runs on one unit; splitting it over NPU and CPU is the better pipeline."""
    c = table()
    solo = replace(c, devices=("rock",), units=((0, "cpu", "arm-cpu"), (0, "npu", "npu")),
                   fwd_s=c.fwd_s[1:3], bwd_s=c.bwd_s[1:3], fixed_s=c.fixed_s[1:3], supported=c.supported[1:3],
                   ram_bytes=c.ram_bytes[1:2], idle_power_w=c.idle_power_w[1:2], busy_power_w=c.busy_power_w[1:3],
                   bandwidth=np.full((1, 1), np.inf), latency_s=np.zeros((1, 1)),
                   energy_per_byte_j=np.zeros((1, 1)), hop_s=c.hop_s[1:3], hop_byte_s=c.hop_byte_s[1:3])
    obj = Objective(batch=8, microbatches=8)
    one = evaluate(solo, (StageSpec(0, 6, ((1, 1),)),), obj)
    lay, ev, moves = units.improve(solo, obj, (StageSpec(0, 6, ((1, 1),)),), one, min_gain=0.05)
    assert [sorted(u for u, _ in st.replicas) for st in lay] in ([[1], [0]], [[0], [1]])
    assert moves and moves[0].gain == pytest.approx((one.period_s - ev.period_s) / one.period_s)
    assert ev.throughput > one.throughput * 1.05
    plan = plan_from_costs(solo, obj, multi_unit=True)
    assert len(plan.stages) == 2 and {s.replicas[0].unit for s in plan.stages} == {"cpu", "npu"}
    assert any(n.startswith("multi-unit: stage ") and "beside stage" in n for n in plan.notes)
    assert plan.predicted.throughput == pytest.approx(ev.throughput, rel=1e-6)
    report = format_plan(plan)
    used = sum(r.memory_bytes for s in plan.stages for r in s.replicas)
    assert f"sharing its RAM ({used / MB:.1f} of {solo.ram_bytes[0] / MB:.1f} MB) and its NIC" in report
    assert format_plan(plan_from_costs(solo, obj)).count("sharing its RAM") == 0
    # a bar the gain cannot reach keeps the single-unit plan
    single = plan_from_costs(solo, obj, min_gain=0.9, multi_unit=True)
    assert len(plan_from_costs(solo, obj).stages) == 1  # off by default below make_plan
    assert len(single.stages) == 1 and not any(n.startswith("multi-unit") for n in single.notes)


def test_golden_multi_unit_plan_on_one_rk3588(golden):
    """ResNet-18 on one RK3588 (examples/clusters/rk3588-solo.yaml): the NPU and the Mali GPU run a stage each,
    predicted 19% more samples/s than the NPU alone; plan.json holds two stages on one device."""
    pytest.importorskip("torch", reason="traces a zoo model with torch")
    from pathlib import Path

    from edgeplan import jsonio
    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.plan import Plan
    from edgeplan.profiles.load import load_cluster

    root = Path(__file__).resolve().parents[2]
    graph = build("resnet18").graph
    cluster = load_cluster(root / "examples" / "clusters" / "rk3588-solo.yaml")
    obj = Objective(objective="throughput", batch=8)
    plan = make_plan(graph, cluster, obj)
    data = plan.to_json()  # the solver's own notes belong to its golden plans (test_planner_golden), not here
    data["notes"] = [n for n in data["notes"] if n.startswith("multi-unit")]
    golden.check("plans/resnet18--rk3588-solo--throughput.json", jsonio.dumps(data))
    assert Plan.from_json(plan.to_json()) == plan
    assert [(s.replicas[0].device, s.replicas[0].unit) for s in plan.stages] == [("rock5b", "gpu"), ("rock5b", "npu")]
    one = make_plan(graph, cluster, obj, multi_unit=False)
    assert len(one.stages) == 1 and plan.predicted.throughput > one.predicted.throughput * 1.05
