"""Adaptive runtime: served throughput of static / heuristic / oracle plan choice over a scripted trace (simulated).

Issue 12 item 4's policies, without the runtime: each second the boards of the running plan report what
they measured (stage times = prediction x the true slowdown, sends = bandwidth x the true scale, each with
5% log-normal noise) in the head's status() format; the Estimator and the heuristic decide; the second
serves the evaluator's throughput of the running plan under the true condition, less ``SWITCH_S`` of
service per switch. ``oracle`` runs the best plan under the true condition every second at no switch
cost (an upper bound); ``static`` keeps the nominal plan. Printed: samples served and each policy's
ratio to the oracle, and the heuristic's switches.

Family: resnet18 on examples/clusters/three-node-hetero.yaml (throughput, batch 4), the default family.
Trace: examples/traces/alternating.yaml (every link x0.25, then gpu-board at 33% CPU = 3x slower, ...).

Run: ``python -m benchmarks.bench_adapt_policy [--seeds N]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _condition_at(trace, t: float):
    from edgeplan.planner.family import ALL, Condition

    bw, cpu, down = 1.0, {}, set()
    for ev in trace.events:
        if ev.at_s > t:
            break
        if ev.kind == "link" and ev.link is None and ev.scale is not None:
            bw = ev.scale
        elif ev.kind == "cpu":
            cpu[ev.device] = 1.0 / ev.scale
        elif ev.kind == "down":
            (down.add if ev.down else down.discard)(ev.device)
    return Condition(bandwidth=(((ALL, ALL), bw),), slowdown=tuple(cpu.items()), absent=tuple(down))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()

    from edgeplan.adapt.estimate import Estimator
    from edgeplan.adapt.policy import SWITCH_S, Pricer, heuristic, oracle
    from edgeplan.graph.load import build
    from edgeplan.planner import family as fm
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import trace as tr

    graph = build("resnet18").graph
    cluster = load_cluster(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")
    obj = Objective(objective="throughput", batch=4)
    fam, plans = fm.make_family(graph, cluster, obj, fm.default_conditions(cluster, "npu-board"))
    pricer = Pricer.from_family(graph, cluster, plans)
    trace = tr.load(ROOT / "examples" / "traces" / "alternating.yaml", cluster)
    seconds = int(trace.duration_s)
    conds = [_condition_at(trace, t + 0.5) for t in range(seconds)]

    def served(name: str, cond) -> float:
        v = pricer.value_of(name, cond)
        return 0.0 if math.isinf(v) else obj.micro / v  # samples per second

    static = sum(served("plan-0.json", c) for c in conds)
    best = sum(served(oracle(pricer, c), c) for c in conds)
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        est = Estimator(cluster, head="npu-board")
        acc: dict[str, list[float]] = {}
        current, last, switches, total = "plan-0.json", -1, 0, 0.0
        for t, cond in enumerate(conds):
            plan = plans[current]
            workers = {}
            for s in plan.stages:
                for r in s.replicas:
                    key = f"{r.device}/stage{s.index}"
                    a = acc.setdefault(key, [0.0, 0])
                    a[0] += 10 * s.compute_s * cond.slowdown_of(r.device) * math.exp(rng.normal(0, 0.05))
                    a[1] += 10
                    nxt = plan.stages[s.index + 1].replicas[0].device if s.index + 1 < len(plan.stages) else None
                    dst = nxt or plan.head
                    bw = cluster.link(r.device, dst).bandwidth * cond.bandwidth_scale(r.device, dst) * \
                        math.exp(rng.normal(0, 0.05))
                    workers[key] = {"device": r.device, "stage": s.index, "alive": True,
                                    "predicted_compute_s": s.compute_s,
                                    "monitor": {"compute_seconds": {"sum": a[0], "count": a[1]},
                                                "links": {f"{nxt}/stage{s.index + 1}" if nxt else "head":
                                                          {"throughput_bytes_per_second": bw}}}}
            d = heuristic(pricer, est.update({"workers": workers}), current, last)
            lost = 0.0
            if d.switch:
                current, last, switches, lost = d.plan, d.change_id, switches + 1, SWITCH_S
            total += served(current, cond) * (1.0 - lost)
            if t == 0:
                est.calibrate()
        rows.append((total, switches))
    print(f"trace {trace.source}: {seconds} s; family: {len(plans)} plans; switch cost {SWITCH_S:g} s of service")
    print(f"\n{'policy':<12}{'samples':>10}{'vs oracle':>11}{'switches':>10}")
    print(f"{'oracle':<12}{best:>10.0f}{1.0:>11.3f}{'-':>10}")
    h = np.array([r[0] for r in rows])
    sw = [r[1] for r in rows]
    print(f"{'heuristic':<12}{h.mean():>10.0f}{h.mean() / best:>11.3f}{np.mean(sw):>10.1f}"
          f"   ({args.seeds} noise seeds: {h.min() / best:.3f}..{h.max() / best:.3f})")
    print(f"{'static':<12}{static:>10.0f}{static / best:>11.3f}{0:>10}")


if __name__ == "__main__":
    main()
