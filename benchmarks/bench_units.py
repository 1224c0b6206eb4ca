"""Several units of one board at once: predicted figures one unit per board vs multi-unit, side by side.

For zoo models on the example clusters with multi-unit boards (an RK3588 alone, two RK3588s, the
three-node-hetero cluster, a Pi 4 cluster with a Jetson Nano), ``edgeplan plan`` is run twice through
its API: ``--one-unit-per-board`` (the solvers' space) and the default (then ``planner/units.py``
puts idle units of the plan's boards to work when that gains ``--min-gain``, 5%). Printed per case:
the objective's figure both ways, the ratio (multi / one, >1 better), the seconds of the default
``edgeplan plan`` (solver, final choice and the multi-unit step), and the plan's multi-unit note.
Figures are the cost model's predictions from the boards' datasheet profiles, not measurements.

Run: ``python -m benchmarks.bench_units [--models resnet18,mobilenet_v2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ("rk3588-solo", "rk3588-duo", "three-node-hetero", "rpi4-jetson")


def main(argv: list[str] | None = None) -> None:  # argv: `python -m benchmarks` passes []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args(argv)

    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster
    from edgeplan.tables import text_table

    objectives = {
        "throughput b8 m8": Objective(objective="throughput", batch=8, microbatches=8),
        "throughput b8": Objective(objective="throughput", batch=8),
        "energy b8": Objective(objective="energy", batch=8),
        "latency b8 m8": Objective(objective="latency", batch=8, microbatches=8),
    }
    rows = []
    for model in args.models.split(","):
        graph = build(model).graph
        for cname in CLUSTERS:
            cluster = load_cluster(ROOT / "examples" / "clusters" / f"{cname}.yaml")
            for oname, obj in objectives.items():
                one = make_plan(graph, cluster, obj, multi_unit=False)
                t0 = time.perf_counter()
                multi = make_plan(graph, cluster, obj)
                dt = time.perf_counter() - t0
                key = {"throughput": "throughput", "energy": "energy_j", "latency": "latency_s"}[obj.objective]
                a, b = getattr(one.predicted, key), getattr(multi.predicted, key)
                ratio = b / a if key == "throughput" else a / b
                unit = {"throughput": "samples/s", "energy_j": "mJ/sample", "latency_s": "ms"}[key]
                scale = 1.0 if key == "throughput" else 1e3
                note = next((n for n in multi.notes if n.startswith("multi-unit")), "-")
                rows.append([model, cname, oname, f"{a * scale:.2f} {unit}", f"{b * scale:.2f} {unit}",
                             f"{ratio:.3f}", f"{dt:.2f}", note])
    print("edgeplan plan, one unit per board vs multi-unit (predicted; --min-gain 0.05)")
    for line in text_table(["model", "cluster", "objective", "one unit", "multi-unit", "multi/one", "plan s",
                            "note"], rows, right={3, 4, 5, 6}):
        print(line)


if __name__ == "__main__":
    main()
