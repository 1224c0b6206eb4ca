"""Planner speed over graph sizes (20 to 1,000 layers) and clusters (2 to 64 devices, 1 to 6 board types).

Synthetic DAG-shaped cost tables (edgeplan.planner.synthetic, seeded), so no
model tracing or profiles are timed: only ``dp.solve``. Targets: a
ResNet-50-sized graph (~170 layers) on 16 devices under 1 s; 1,000 layers on 64
devices under 30 s. ``exact`` says whether the DP needed no reductions.

Run: ``python -m benchmarks.bench_planner [--objective throughput] [--quick]``.
"""

from __future__ import annotations

import argparse
import time

from edgeplan.planner import dp
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs

CASES = [  # (layers, devices, board types)
    (20, 2, 1), (20, 4, 2), (50, 4, 4), (50, 8, 2), (170, 8, 3), (170, 16, 1), (170, 16, 2), (170, 16, 4),
    (170, 16, 6), (500, 32, 4), (1000, 16, 3), (1000, 64, 1), (1000, 64, 3), (1000, 64, 6),
]
QUICK = [(20, 2, 1), (50, 4, 4), (170, 16, 4)]
TARGETS = {(170, 16): 1.0, (1000, 64): 30.0}


def objectives(name: str) -> Objective:
    if name == "time":
        return Objective(mode="training", objective="time", batch=32, microbatches=4, schedule="1f1b")
    return Objective(objective=name, batch=8)


def run(cases, objective: Objective, on_row=None) -> list[dict]:
    rows = []
    for n, d, t in cases:
        costs = random_costs(n * 1000 + d * 10 + t, n, d, t, dag=True, units_per_device=2, ram_mb=(512, 4096))
        t0 = time.perf_counter()
        res = dp.solve(costs, objective)
        dt = time.perf_counter() - t0
        target = TARGETS.get((n, d))
        rows.append({"layers": n, "devices": d, "types": t, "seconds": dt, "passes": res.passes,
                     "stages": len(res.layout) if res.layout else 0, "exact": res.exact,
                     "target": target, "ok": target is None or dt < target})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="throughput", choices=["throughput", "latency", "energy", "time"])
    p.add_argument("--quick", action="store_true", help="three small cases only")
    args = p.parse_args(argv)
    obj = objectives(args.objective)
    print(f"planner: dp.solve, objective {obj.objective} ({obj.mode}, batch {obj.batch}, "
          f"{obj.microbatches} micro-batch(es)), synthetic DAG cost tables, 2 units per board")
    head = f"{'layers':>6} {'devices':>7} {'types':>5} {'seconds':>8} {'passes':>6} {'stages':>6} {'exact':>5}  target"
    print(head)
    print("-" * len(head), flush=True)

    def show(r: dict) -> None:
        tgt = "" if r["target"] is None else f"< {r['target']:g} s {'ok' if r['ok'] else 'MISSED'}"
        print(f"{r['layers']:>6} {r['devices']:>7} {r['types']:>5} {r['seconds']:>8.3f} {r['passes']:>6} "
              f"{r['stages']:>6} {('yes' if r['exact'] else 'no'):>5}  {tgt}", flush=True)

    run(QUICK if args.quick else CASES, obj, on_row=show)


if __name__ == "__main__":
    main()
