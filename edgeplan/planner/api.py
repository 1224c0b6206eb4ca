"""Public entry points of the planner: LayerGraph + Cluster + Objective -> Plan.

``make_plan`` prices the graph on the cluster (profiles.build_cost_table) and
calls ``plan_from_costs``, which tests call directly with synthetic CostTables.
Every figure in the Plan comes from ``costmodel.evaluate``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from edgeplan import jsonio
from edgeplan.errors import PlanError
from edgeplan.planner import dp as dp_mod
from edgeplan.planner import search
from edgeplan.planner import units as units_mod
from edgeplan.planner.baselines import baselines as make_baselines
from edgeplan.planner.costmodel import (
    Evaluation,
    Layout,
    Prefix,
    StageSpec,
    evaluate,
    head_index,
    untrainable_units,
)
from edgeplan.planner.objective import Objective
from edgeplan.planner.plan import Baseline, Plan, Predicted, Replica, Stage
from edgeplan.planner.textform import from_str, stage_str
from edgeplan.profiles.cost import CostTable

MB = float(1 << 20)
ILP_MAX_ARCS = 20000  # the ILP certifies heuristic DP results up to this many stage options
MIN_GAIN = 0.05  # default --min-gain: a bigger plan must beat the best simpler one by 5%

__all__ = ["Objective", "evaluate", "make_plan", "plan_from_costs", "layout_of", "layout_from_text", "plan_of"]


def make_plan(graph, cluster, objective: Objective, solver: str = "dp", min_gain: float = MIN_GAIN,
              ilp_time_limit: float = 60.0, pins: tuple[str, ...] = (), allow_raw: tuple[str, ...] = (),
              multi_unit: bool = True) -> Plan:
    """Plan ``graph`` (LayerGraph) on ``cluster`` (Cluster) for ``objective``.

    ``multi_unit``: after the solver, try idle units of the plan's boards (``planner/units.py``).

    ``pins`` (``--pin NAME=DEVICE`` texts) and ``allow_raw`` (``--allow-raw-transfer``) hand
    the request to planner/branches, which obeys them and plans parallel input branches.
    """
    from edgeplan.profiles.cost import build_cost_table

    check_min_gain(min_gain)
    costs = build_cost_table(graph, cluster)
    if pins or allow_raw:
        from edgeplan.planner.branches import plan_pinned

        return plan_pinned(graph, costs, objective, pins, allow_raw, model=graph.name,
                           graph_sha256=graph.digest(), cluster=cluster.name, cluster_sha256=cluster.digest())
    return plan_from_costs(costs, objective, solver=solver, model=graph.name, graph_sha256=graph.digest(),
                           cluster=cluster.name, cluster_sha256=cluster.digest(), min_gain=min_gain,
                           ilp_time_limit=ilp_time_limit, multi_unit=multi_unit)


def check_min_gain(min_gain: float) -> None:
    if not 0.0 <= min_gain < 1.0:
        raise PlanError(f"--min-gain {min_gain:g} is outside [0, 1): give a fraction, e.g. 0.05 for 5%")


def _solve(costs: CostTable, obj: Objective, solver: str, ilp_time_limit: float, **kw) -> search.Result:
    if solver == "dp":
        return search.solve(costs, obj, **kw)
    if solver == "ilp":
        from edgeplan.planner import ilp

        return ilp.solve(costs, obj, time_limit_s=ilp_time_limit)
    raise PlanError(f"solver {solver!r} is not one of dp, ilp")


def plan_from_costs(costs: CostTable, objective: Objective, *, solver: str = "dp", model: str = "model",
                    graph_sha256: str = "", cluster: str = "cluster", cluster_sha256: str = "",
                    work_budget: float = dp_mod.WORK_BUDGET, with_baselines: bool = True,
                    min_gain: float = MIN_GAIN, ilp_time_limit: float = 60.0, multi_unit: bool = False) -> Plan:
    """Best plan for ``objective`` on ``costs``; raises PlanError with alternatives when none fits.

    ``min_gain``: a plan with more boards or stages than a simpler candidate must
    be at least this much better (fraction, 0 <= min_gain < 1), else the simpler wins.
    ``multi_unit``: then let stages share a board on its idle units (``units.improve``, a local
    search under the same ``min_gain``); off here so the solvers' results stay comparable,
    on in ``make_plan``.
    """
    check_min_gain(min_gain)
    from edgeplan.planner.ilp import check_time_limit

    check_time_limit(ilp_time_limit)
    head_index(costs, objective)
    free = replace(objective, latency_budget_s=None, energy_budget_j=None)
    kw = {"work_budget": work_budget} if solver == "dp" else {}
    res = _solve(costs, free, solver, ilp_time_limit, **kw)
    if res.layout is None:
        raise diagnose(costs, free, solver)
    notes = list(res.notes)
    if objective.training and untrainable_units(costs):
        notes.append("training uses CPU and CUDA units only; not used: " + ", ".join(untrainable_units(costs)))
    layout = res.layout
    ev = evaluate(costs, layout, objective)
    exact = res.exact
    if not ev.ok:
        layout, ev, more = _meet_budgets(costs, objective, layout)
        notes += more
        exact = False
    layout, ev, more = final_choice(costs, objective, layout, ev, min_gain=min_gain)
    notes += more
    if multi_unit:  # the solvers search one unit per device; this local step puts idle units of used boards to work
        layout, ev, moves = units_mod.improve(costs, objective, layout, ev, min_gain=min_gain)
        notes += [mv.text(costs) for mv in moves]
    if solver == "dp" and (not exact or res.coarse):  # exact on a coarse graph: the gap on the full one
        notes += _ilp_gap(costs, objective, ev, ilp_time_limit)
    return plan_of(costs, layout, objective, ev, solver=solver, model=model, graph_sha256=graph_sha256,
                   cluster=cluster, cluster_sha256=cluster_sha256, notes=notes, with_baselines=with_baselines)


def _complexity(layout: Layout) -> tuple[int, int]:
    """(boards, stages): a plan is simpler than another when it uses fewer boards, then fewer stages."""
    return (sum(len(st.replicas) for st in layout), len(layout))


def _gain(better_v: float, base_v: float) -> float:
    """Relative improvement of ``better_v`` over ``base_v`` (objective values: lower is better)."""
    return (base_v - better_v) / base_v if base_v > 0 else 0.0


def final_choice(costs: CostTable, obj: Objective, layout: Layout, ev: Evaluation, *, min_gain: float = MIN_GAIN,
                 prefix: Prefix | None = None) -> tuple[Layout, Evaluation, list[str]]:
    """The plan a user gets: the solver's plan or a baseline, then the simplest one worth its boards.

    1. Never worse than a baseline: the baselines are priced by the same
       evaluator, so when a reduced (heuristic) search missed a plan as good as
       a feasible baseline within the budgets, the baseline is used and the note
       says by how much the search fell short.
    2. Prefer the simpler plan when the gain is noise: candidates (this plan and
       the feasible baselines) are walked from simplest to most complex; a more
       complex one replaces the current only if it is better by ``min_gain``.
       With ``min_gain = 0`` the result is the best candidate.
    """
    cands = [("the search's plan", layout, ev)]
    for bname, blay, bev, _ in make_baselines(costs, obj, prefix):
        if bev is not None and bev.ok:
            cands.append((f"baseline {bname}", blay, bev))
    notes: list[str] = []
    best = cands[0]
    for c in cands[1:]:
        if search.better(c[2], best[2], obj):
            best = c
    if best is not cands[0]:
        a, b = ev.value(obj), best[2].value(obj)
        notes.append(f"{best[0]} used: the search's plan ({_fmt_value(obj, a)}) is {(a - b) / b * 100:.2f}% "
                     f"worse than it ({_fmt_value(obj, b)})")
    if min_gain <= 0:
        return best[1], best[2], notes
    # walk up from the simplest candidate; ties in complexity: the better one first
    order = sorted(cands, key=lambda c: (_complexity(c[1]), c[2].score(obj)))
    cur = order[0]
    for c in order[1:]:
        if _complexity(c[1]) > _complexity(cur[1]) and _gain(c[2].value(obj), cur[2].value(obj)) >= min_gain:
            cur = c
        elif _complexity(c[1]) == _complexity(cur[1]) and search.better(c[2], cur[2], obj):
            cur = c
    if cur is not best:
        boards, stages = _complexity(best[1])
        b2, s2 = _complexity(cur[1])
        g = _gain(best[2].value(obj), cur[2].value(obj))
        notes.append(f"simpler plan used ({cur[0]}: {b2} board(s), {s2} stage(s)): the best plan found "
                     f"({boards} board(s), {stages} stage(s)) is only {g * 100:.2f}% better, less than "
                     f"--min-gain {min_gain * 100:g}%")
        notes = [n for n in notes if not n.startswith(best[0] + " used")] if best is not cands[0] else notes
    return cur[1], cur[2], notes


def _ilp_gap(costs: CostTable, obj: Objective, ev: Evaluation, time_limit_s: float = 60.0) -> list[str]:
    from edgeplan.planner import ilp

    if not ilp.applicable(costs, obj, ILP_MAX_ARCS):
        from edgeplan.planner.bound import lower_bound

        lb = lower_bound(costs, replace(obj, latency_budget_s=None, energy_budget_j=None))
        if lb is None or lb <= 0:
            return ["ILP bound not computed (instance too large for the ILP; use --solver ilp on a smaller one)"]
        a = ev.value(obj)
        return [f"lower bound {_fmt_value(obj, lb)} (relaxation: no stages, memory or links; the ILP does "
                f"not run at this size); this plan {_fmt_value(obj, a)} (gap {(a - lb) / lb * 100:.1f}%)"]
    relaxed = obj.latency_budget_s is not None or obj.energy_budget_j is not None
    try:
        got = ilp.solve(costs, replace(obj, latency_budget_s=None, energy_budget_j=None), time_limit_s=time_limit_s)
    except ilp.ILPTimeLimit:
        return [f"ILP bound not computed: time limit of {time_limit_s:g} s reached (--ilp-time-limit)"]
    if got.evaluation is None:
        return ["ILP found no feasible plan"]
    a, b = ev.value(obj), got.evaluation.value(obj)
    gap = (a - b) / b * 100 if b > 0 else 0.0
    what = "ILP bound (budgets relaxed)" if relaxed else "ILP optimum"
    if not got.exact:
        what = "ILP best plan within its time limit (not proven optimal)"
    return [f"{what} {_fmt_value(obj, b)}; this plan {_fmt_value(obj, a)} (gap {gap:.2f}%)"]


def _fmt_value(obj: Objective, v: float) -> str:
    if obj.objective == "energy":
        return f"{v * 1e3:.4g} mJ/sample"
    if obj.objective == "throughput":
        return f"{v * 1e3:.4g} ms bottleneck per micro-batch"
    return f"{v * 1e3:.4g} ms"


def _meet_budgets(costs: CostTable, obj: Objective, first: Layout) -> tuple[Layout, Evaluation, list[str]]:
    """Search trade-offs (Lagrangian weights x bottleneck thresholds) for a plan within the budgets."""
    solver = dp_mod.DPSolver(costs, obj)
    pf = solver.pf
    bkey = "p"  # training: the per-micro-batch bottleneck too (costmodel: T = sum p + (M-1) max p + max tail)
    cands = solver.candidates(bkey)
    thetas = [np.inf] + [float(cands[x]) for x in np.unique(np.linspace(0, len(cands) - 1, 12).round().astype(int))]
    weights = [(1.0, 0.0), (0.0, 1.0)]
    weights += [(1.0, 10.0 ** e) for e in range(-3, 5)] + [(10.0 ** e, 1.0) for e in range(-3, 5)]
    best: tuple | None = None
    closest = {"latency": math.inf, "energy": math.inf}
    for cp, ce in weights:
        for th in thetas:
            ti = th if np.isfinite(th) else (float(cands[-1]) if len(cands) else 0.0)
            got = solver.run_pass("sum", theta=th, cp=cp, ce=ce, theta_idle=ti, bkey=bkey)
            if got is None:
                continue
            ev = evaluate(costs, got[1], obj, prefix=pf)
            if not ev.feasible:
                continue
            closest["latency"] = min(closest["latency"], ev.iter_s if obj.training else ev.latency_s)
            closest["energy"] = min(closest["energy"], ev.energy_j)
            if ev.ok and (best is None or ev.score(obj) < best[1].score(obj)):
                best = (got[1], ev)
    if best is None:
        free = replace(obj, latency_budget_s=None, energy_budget_j=None)
        parts = []
        if obj.latency_budget_s is not None:
            what = "iteration time" if obj.training else "latency"
            fastest = search.solve(costs, replace(free, objective="time" if obj.training else "latency")).evaluation
            value = (fastest.iter_s if obj.training else fastest.latency_s) if fastest else closest["latency"]
            parts.append(f"the {what} budget of {obj.latency_budget_s * 1e3:.4g} ms cannot be met: the best "
                         f"achievable {what} is {value * 1e3:.4g} ms")
        if obj.energy_budget_j is not None:
            frugal = None if obj.training else search.solve(costs, replace(free, objective="energy")).evaluation
            value = frugal.energy_j if frugal else closest["energy"]
            parts.append(f"the energy budget of {obj.energy_budget_j * 1e3:.4g} mJ/sample cannot be met: the best "
                         f"achievable is {value * 1e3:.4g} mJ/sample")
        both = " (each budget alone may be reachable, not both at once)" if len(parts) == 2 else ""
        raise PlanError("; ".join(parts) + both + "; raise the budget, change the batch or add faster boards")
    return best[0], best[1], ["DP heuristic: budgets met by a Lagrangian search over bottleneck thresholds"]


def diagnose(costs: CostTable, obj: Objective, solver: str = "dp") -> PlanError:
    """Explain why no plan fits: who runs out of memory by how much, and the nearest feasible requests."""
    relaxed = search.solve(costs, obj, ignore_memory=True, work_budget=dp_mod.WORK_BUDGET / 4)
    if relaxed.layout is None:
        return PlanError("no plan exists: some layer is supported by no compute unit of any device "
                         "(check the boards' supported ops)")
    ev = evaluate(costs, relaxed.layout, obj)
    lines = []
    worst = sorted(ev.overflows, key=lambda o: (o[1] - o[2]), reverse=True)
    for dv, need, cap in worst[:3]:
        st = next(s for s in ev.stages if any(r.device == dv for r in s.replicas))
        lines.append(f"{costs.devices[dv]} runs out of memory by {(need - cap) / MB:.1f} MB (needs "
                     f"{ev.memory_text(dv, need)} of {cap / MB:.1f} MB for layers {costs.layer_names[st.spec.start]}.."
                     f"{costs.layer_names[st.spec.stop - 1]})")
    alts = []
    small = _try(costs, obj, [b for b in _halvings(obj.batch)], lambda b: _with_batch(obj, b))
    if small is not None:
        alts.append(f"--batch {small.batch}" + (f" --microbatches {small.microbatches}" if obj.training else ""))
    if obj.training:
        ms = [k for k in range(obj.microbatches + 1, obj.batch + 1) if obj.batch % k == 0]
        more = _try(costs, obj, ms[:6], lambda k: replace(obj, microbatches=k))
        if more is not None:
            alts.append(f"--microbatches {more.microbatches}")
    short = sum(need - cap for _, need, cap in ev.overflows)
    room = Prefix(costs, obj).dev_ram  # training: less a rank's torch reserve
    big = int(np.argmax(room))
    if short > 0 and room[big] > 0:
        k = max(1, math.ceil(short / float(room[big])))
        left = f", {room[big] / MB:.0f} MB for a training rank's model" if obj.training else ""
        alts.append(f"about {k} more board(s) like {costs.devices[big]} ({float(costs.ram_bytes[big]) / MB:.0f} MB"
                    f"{left})")
    head = ("no plan fits in memory; in the best plan ignoring memory, " + "; ".join(lines)) if lines else \
        "no plan fits in memory"
    return PlanError(head + ". Nearest feasible alternatives: " + (", ".join(alts) if alts else "none found"))


def _halvings(b: int) -> list[int]:
    out = []
    while b > 1:
        b //= 2
        out.append(b)
    return out[:6]


def _with_batch(obj: Objective, b: int) -> Objective:
    m = obj.microbatches
    while b % m:
        m -= 1
    return replace(obj, batch=b, microbatches=m)


def _try(costs, obj, values, make):
    for v in values:
        o = make(v)
        if search.solve(costs, o, work_budget=dp_mod.WORK_BUDGET / 4).layout is not None:
            return o
    return None


def layout_of(costs: CostTable, plan: Plan) -> Layout:
    """The Plan's stages as unit indices of ``costs`` (names must match the cluster)."""
    return _layout(costs, [(s.start, s.stop, [(r.device, r.unit, r.samples) for r in s.replicas])
                           for s in plan.stages])


def layout_from_text(costs: CostTable, text: str, objective: Objective) -> Layout:
    """Parse a plan's text form into a layout on ``costs`` (samples = share x micro-batch)."""
    _, stages = from_str(text)
    m = objective.micro
    return _layout(costs, [(s.start, s.stop, [(d, u, int(round(share * m))) for d, u, share in s.replicas])
                           for s in stages])


def _layout(costs: CostTable, stages) -> Layout:
    index = {(costs.devices[d], name): u for u, (d, name, _) in enumerate(costs.units)}
    out = []
    for k, (i, j, reps) in enumerate(stages):
        rr = []
        for dev, unit, samples in reps:
            if (dev, unit) not in index:
                valid = ", ".join(f"{a}:{b}" for a, b in index)
                raise PlanError(f"stage {k}: {dev}:{unit} is not a unit of this cluster (valid: {valid})")
            rr.append((index[(dev, unit)], samples))
        out.append(StageSpec(i, j, tuple(rr)))
    return tuple(out)


def _predicted(ev: Evaluation) -> Predicted:
    return Predicted(latency_s=ev.latency_s, throughput=ev.throughput, energy_j=ev.energy_j, iter_s=ev.iter_s)


def _stages(costs: CostTable, ev: Evaluation, m: int, training: bool = False) -> tuple[Stage, ...]:
    out = []
    for k, st in enumerate(ev.stages):
        reps = tuple(
            Replica(device=costs.devices[r.device], unit=costs.units[r.unit][1], target=costs.units[r.unit][2],
                    share=r.samples / m, samples=r.samples, memory_bytes=int(math.ceil(r.memory_bytes)),
                    capacity_bytes=int(costs.ram_bytes[r.device]), reserve_bytes=int(math.ceil(r.reserve_bytes)))
            for r in st.replicas)
        out.append(Stage(index=k, start=st.spec.start, stop=st.spec.stop,
                         first_layer=costs.layer_names[st.spec.start], last_layer=costs.layer_names[st.spec.stop - 1],
                         replicas=reps, compute_s=st.compute_s, send_s=st.send_s, energy_j=st.energy_j,
                         forward_s=st.forward_s if training else None, module_s=st.module_s))
    return tuple(out)


def plan_of(costs: CostTable, layout: Layout, objective: Objective, ev: Evaluation | None = None, *,
            solver: str = "dp", model: str = "model", graph_sha256: str = "", cluster: str = "cluster",
            cluster_sha256: str = "", notes=(), with_baselines: bool = True) -> Plan:
    """Wrap a priced layout (and the baselines) into a Plan."""
    pf = Prefix(costs, objective)
    ev = ev or evaluate(costs, layout, objective, prefix=pf)
    bls = []
    if with_baselines:
        for name, _lay, bev, reason in make_baselines(costs, objective, pf):
            feasible = bev is not None and bev.feasible
            stages = _stages(costs, bev, objective.micro, objective.training) if bev is not None else ()
            bls.append(Baseline(name=name, feasible=feasible, predicted=_predicted(bev) if feasible else None,
                                stages=stages, reason=reason))
    head = costs.devices[head_index(costs, objective)]
    plan = Plan(
        model=model, graph_sha256=graph_sha256, cluster=cluster, cluster_sha256=cluster_sha256,
        mode=objective.mode, objective=objective.objective, batch=objective.batch,
        microbatches=objective.microbatches, schedule=objective.schedule, solver=solver, head=head,
        stages=_stages(costs, ev, objective.micro, objective.training), predicted=_predicted(ev), baselines=tuple(bls),
        notes=tuple(notes), latency_budget_s=objective.latency_budget_s, energy_budget_j=objective.energy_budget_j,
        optimizer_states=objective.optimizer_states,
    )
    # what the caller holds is exactly what plan.json will hold (floats rounded by jsonio)
    return Plan.from_json(json.loads(jsonio.dumps(plan.to_json())))


def objective_of(plan: Plan) -> Objective:
    """The Objective a plan was made for (to re-price it, e.g. after editing its text form)."""
    return Objective(mode=plan.mode, objective=plan.objective, batch=plan.batch, microbatches=plan.microbatches,
                     schedule=plan.schedule, head=plan.head, latency_budget_s=plan.latency_budget_s,
                     energy_budget_j=plan.energy_budget_j, optimizer_states=plan.optimizer_states)


def text_of_layout(costs: CostTable, layout: Layout, m: int, model: str = "model") -> str:
    parts = [model]
    for st in layout:
        parts.append(stage_str(st.start, st.stop, [(costs.devices[costs.units[u][0]], costs.units[u][1], k / m)
                                                   for u, k in st.replicas]))
    return " | ".join(parts)
