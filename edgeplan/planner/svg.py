"""Draw a plan: the pipeline schedule as a Gantt chart over devices, and each device's memory vs its limit."""

from __future__ import annotations

from pathlib import Path

from edgeplan.planner.plan import Plan
from edgeplan.planner.schedule import simulate_plan


def draw(plan: Plan, path: str | Path) -> Path:
    """Write an SVG (or any matplotlib format, by suffix) of ``plan`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = simulate_plan(plan)
    devices = [r.device for s in plan.stages for r in s.replicas]
    row = {d: k for k, d in enumerate(devices)}
    fig, (ax, mx) = plt.subplots(2, 1, figsize=(10, 2.0 + 0.5 * len(devices) * 2), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for a in sim.actions:
        for r in plan.stages[a.stage].replicas:
            ax.barh(row[r.device], (a.end - a.start) * 1e3, left=a.start * 1e3, height=0.6,
                    color=colors(a.mb % 10), alpha=1.0 if a.kind == "F" else 0.55, edgecolor="black", linewidth=0.4)
            if (a.end - a.start) / max(sim.makespan, 1e-12) > 0.03:
                ax.text((a.start + a.end) / 2 * 1e3, row[r.device], f"{a.kind}{a.mb}", ha="center", va="center",
                        fontsize=7)
    ax.set_yticks(range(len(devices)), [f"{d} (stage {s.index})" for s in plan.stages for d in
                                       (r.device for r in s.replicas)])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(f"{plan.model}: {plan.mode} {plan.schedule} schedule, {plan.microbatches} micro-batch(es)")
    used = [r.memory_bytes / 2**20 for s in plan.stages for r in s.replicas]
    cap = [r.capacity_bytes / 2**20 for s in plan.stages for r in s.replicas]
    mx.barh(range(len(devices)), cap, color="#dddddd", edgecolor="black", linewidth=0.4, label="capacity")
    mx.barh(range(len(devices)), used, color="#4477aa", label="predicted use")
    mx.set_yticks(range(len(devices)), devices)
    mx.invert_yaxis()
    mx.set_xlabel("memory (MB)")
    mx.legend(loc="lower right")
    path = Path(path)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return path
