"""Hybrid training: the planner's predicted time per iteration beside the measured one.

For each model: plan --mode training --objective time on the cluster, write the
training artifacts, run every rank as a local process (gloo on 127.0.0.1,
synthetic data, one thread per rank), and time a single-process iteration of
the same global batch on this machine. Predicted times are for the cluster's
boards; measured ones are this machine's cores shared by all ranks, so their
ratio says how far this machine is from the boards, not how good the plan is
(the emulated testbed, `edgeplan emulate ... edgeplan train`, compares like
with like).

    python benchmarks/bench_training.py [--models lenet5,resnet18-cifar] [--iters 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def single_iter_s(model: str, batch: int, iters: int) -> float:
    import torch
    import torch.nn.functional as F

    from edgeplan.graph.load import load_model

    torch.set_num_threads(1)
    m = load_model(model).module.train()
    shape = load_model(model).default_input_shape
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape[1:]), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(sorted(times[1:])[len(times[1:]) // 2])


def bench(model: str, cluster_path: Path, batch: int, microbatches: int, iters: int, out: Path) -> dict:
    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster
    from edgeplan.training import launch
    from edgeplan.training.config import TrainConfig

    cluster = load_cluster(cluster_path)
    obj = Objective(mode="training", objective="time", batch=batch, microbatches=microbatches, schedule="1f1b")
    plan = make_plan(build(model).graph, cluster, obj)
    art = launch.prepare(plan, model, out / model, cluster=cluster)
    res = launch.run(art, TrainConfig(epochs=1, dataset="synthetic", max_iters=iters, evaluate=False,
                                      timeout_s=300), echo=lambda _line: None)
    row = res.epochs[-1]
    layout = " | ".join("+".join(f"{r.device}:{r.unit}*{r.samples}" for r in s.replicas) for s in plan.stages)
    return {"model": model, "layout": layout, "ranks": sum(len(s.replicas) for s in plan.stages),
            "predicted_ms": plan.predicted.iter_s * 1e3, "measured_ms": row["measured_iter_s"] * 1e3,
            "samples_per_s": row["samples_per_s"], "single_ms": single_iter_s(model, batch, iters) * 1e3}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet18-cifar")
    ap.add_argument("--cluster", type=Path, default=ROOT / "examples/clusters/three-node-hetero.yaml")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    args = ap.parse_args(argv)
    print(f"cluster {args.cluster.name}, batch {args.batch} as {args.microbatches} micro-batches, 1f1b, sync; "
          "measured = all ranks as local processes on this machine (synthetic data)")
    print(f"{'model':<16} {'ranks':>5} {'predicted ms':>12} {'measured ms':>11} {'1-proc ms':>9} "
          f"{'samples/s':>9}  plan")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for model in args.models.split(","):
            r = bench(model, args.cluster, args.batch, args.microbatches, args.iters, Path(tmp))
            print(f"{r['model']:<16} {r['ranks']:>5} {r['predicted_ms']:>12.1f} {r['measured_ms']:>11.1f} "
                  f"{r['single_ms']:>9.1f} {r['samples_per_s']:>9.1f}  {r['layout']}", flush=True)


if __name__ == "__main__":
    main()
