"""The plan report as a text table: stages, predicted figures, baselines side by side, notes."""

from __future__ import annotations

from edgeplan.planner.plan import Plan, Predicted
from edgeplan.planner.textform import to_str
from edgeplan.tables import text_table

MB = float(1 << 20)


def _main_value(plan: Plan, p: Predicted) -> float:
    return {"latency": p.latency_s, "throughput": p.throughput, "energy": p.energy_j,
            "time": p.iter_s or 0.0}[plan.objective]


def speedup(plan: Plan, base: Predicted) -> float:
    """How many times better the plan is than ``base`` on the plan's objective (>1: better)."""
    mine, theirs = _main_value(plan, plan.predicted), _main_value(plan, base)
    if plan.objective == "throughput":
        return mine / theirs if theirs > 0 else float("inf")
    return theirs / mine if mine > 0 else float("inf")


def _fig(p: Predicted, training: bool) -> list[str]:
    cols = [f"{p.latency_s * 1e3:.3f}", f"{p.throughput:.2f}", f"{p.energy_j * 1e3:.3f}"]
    if training:
        cols.append(f"{(p.iter_s or 0.0) * 1e3:.3f}")
    return cols


def shared_boards(plan: Plan) -> list[str]:
    """One line per board running several stages on different units (planner/units.py): they share its RAM
    and NIC, so the per-replica memory above adds up against one capacity."""
    on: dict[str, list] = {}
    for s in plan.stages:
        for r in s.replicas:
            on.setdefault(r.device, []).append((s.index, r))
    out = []
    for dev, items in on.items():
        if len({i for i, _ in items}) < 2:
            continue
        used = sum(r.memory_bytes + r.reserve_bytes for _, r in items)
        cap = items[0][1].capacity_bytes
        what = ", ".join(f"stage {i} on {r.unit}" for i, r in items)
        room = f"{used / MB:.1f} of {cap / MB:.1f} MB" if cap else f"{used / MB:.1f} MB"
        out.append(f"board {dev}: {what} at once, sharing its RAM ({room}) and its NIC")
    return out


def format_plan(plan: Plan) -> str:
    train = plan.mode == "training"
    lines = [
        f"plan: {plan.model} on {plan.cluster} ({plan.mode}, objective {plan.objective}, batch {plan.batch} as "
        f"{plan.microbatches} micro-batch(es) of {plan.batch // plan.microbatches}, schedule {plan.schedule}, "
        f"solver {plan.solver}, head {plan.head})",
        f"text: {to_str(plan)}",
    ]
    budgets = []
    if plan.latency_budget_s is not None:
        budgets.append(f"{'iteration' if train else 'latency'} <= {plan.latency_budget_s * 1e3:.4g} ms")
    if plan.energy_budget_j is not None:
        budgets.append(f"energy <= {plan.energy_budget_j * 1e3:.4g} mJ/sample")
    if budgets:
        lines.append("budgets: " + ", ".join(budgets))
    lines.append("")
    rows = [["stage", "layers", "replica (unit, samples, share)", "compute ms", "send ms", "memory MB used/cap",
             "energy mJ/sample"]]
    for s in plan.stages:
        for k, r in enumerate(s.replicas):
            cap = f"{r.capacity_bytes / MB:.1f}" if r.capacity_bytes else "?"
            # training: + the torch reserve its rank holds (the board's train_reserve_mb)
            mem = f"{r.memory_bytes / MB:.1f}" + (f"+{r.reserve_bytes / MB:.0f}" if r.reserve_bytes else "") + f"/{cap}"
            if k == 0:
                rows.append([str(s.index), f"{s.start}-{s.stop - 1} {s.first_layer}..{s.last_layer}",
                             f"{r.device}:{r.unit} {r.samples} ({r.share:.3f})", f"{s.compute_s * 1e3:.3f}",
                             f"{s.send_s * 1e3:.3f}", mem, f"{s.energy_j * 1e3:.3f}"])
            else:
                rows.append(["", "", f"{r.device}:{r.unit} {r.samples} ({r.share:.3f})", "", "", mem, ""])
    lines += text_table(rows[0], rows[1:], right={3, 4, 6})
    if any(r.reserve_bytes for s in plan.stages for r in s.replicas):
        lines.append("memory: the stage's + the torch framework each training rank holds (the board's "
                     "train_reserve_mb; `edgeplan cluster check CLUSTER` shows where it comes from)")
    lines += shared_boards(plan)
    lines.append("")
    head = ["plan", "latency ms", "samples/s", "energy mJ/sample"] + (["iteration ms"] if train else [])
    rows = [head + ["speed-up"], ["chosen"] + _fig(plan.predicted, train) + ["1.00x"]]
    for b in plan.baselines:
        if b.feasible and b.predicted is not None:
            rows.append([b.name] + _fig(b.predicted, train) + [f"{speedup(plan, b.predicted):.2f}x"])
        else:
            rows.append([b.name] + ["-"] * (len(head) - 1) + [f"infeasible: {b.reason}"])
    lines += text_table(rows[0], rows[1:], right=set(range(1, len(head))))
    if plan.notes:
        lines.append("")
        lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"
