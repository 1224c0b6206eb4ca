"""The built-in demo (`make demo`): plan + compile + run ResNet-18 on the emulated 3-board cluster.

Steps, each printed as it goes:
1. calibrate this machine per op class and write the three-node cluster as it is
   emulated here (boards = this CPU x quota, links = shaped bandwidths);
2. plan ResNet-18 for throughput on that cluster (DP), with the baselines;
3. compile the plan, and the best-single-board baseline, for this CPU;
4. run both inside one emulated testbed (network namespaces, shaped links, CPU
   quotas) and print measured vs predicted figures and the measured speed-up of
   the plan over the best single board.
Without root (no namespaces), step 4 runs every worker as a local process
instead and says so: the speed-up is then not meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from edgeplan import jsonio

CLUSTER = Path(__file__).resolve().parent.parent / "examples" / "clusters" / "three-node-hetero.yaml"
LATENCY_REQUESTS = 8  # sent one at a time: the latency of a request alone, as the plan predicts it


def _say(msg: str) -> None:
    print(msg, flush=True)


def single_board_plan(plan):
    """The plan's best-single-device baseline as a runnable Plan (same model, batch, cluster)."""
    from edgeplan.planner.plan import Plan

    base = next(b for b in plan.baselines if b.name == "best-single-device")
    if not base.feasible:
        raise SystemExit(f"best single board is infeasible: {base.reason}")
    return Plan(**{**{f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)},
                   "stages": base.stages, "predicted": base.predicted, "baselines": (),
                   "notes": ("best-single-device baseline of the demo plan",)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeplan.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--cluster", type=Path, default=CLUSTER)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--backend", default="onnxruntime", help="auto | tvm | onnxruntime")
    args = ap.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)  # random-initialised nets hit denormals (50x slower eager)
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.graph.load import build
    from edgeplan.planner import report as plan_report
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.load import load_cluster
    from edgeplan.runtime import report as run_report
    from edgeplan.runtime.head import HeadConfig
    from edgeplan.runtime.local import run_local
    from edgeplan.testbed import calibrate, emulate, netns

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    real = load_cluster(args.cluster)
    try:
        netns.require_root()
        emulated = True
    except netns.EmulationError as e:
        emulated = False
        _say(f"NOTE: {e}\n      -> falling back to local processes without emulated links or CPU quotas;"
             " measured figures will not match the plan's board speeds.")

    _say(f"[1/4] calibrating this machine and emulating {real.name}")
    host = calibrate.measure()
    shp = emulate.shape(real, host.of("conv"))
    cluster_file = emulate.write_emulated_cluster(out / "cluster-emulated.yaml", real, shp, host)
    cluster = load_cluster(cluster_file)
    _say(f"      wrote {cluster_file} (dilation {shp.dilation:.3g}: the emulation runs "
         f"{1 / shp.dilation:.3g}x slower than the real boards)")

    _say(f"[2/4] planning {args.model} for throughput (batch {args.batch}, {args.microbatches} micro-batches)")
    traced = build(args.model, None)
    objective = Objective(mode="inference", objective="throughput", batch=args.batch,
                          microbatches=args.microbatches)
    plan = record_sources(make_plan(traced.graph, cluster, objective), model_ref=args.model, input_shape=None,
                          cluster_path=str(cluster_file), cluster=cluster)  # `edgeplan compile` needs no flags
    jsonio.write(out / "plan.json", plan.to_json())
    _say(plan_report.format_plan(plan))
    single = single_board_plan(plan)
    jsonio.write(out / "plan-single.json", single.to_json())

    _say(f"[3/4] compiling both plans for this CPU (backend {args.backend})")
    art = compile_plan(plan, args.model, out / "artifacts", cluster, args.backend, force=True, traced=traced)
    art1 = compile_plan(single, args.model, out / "artifacts-single", cluster, args.backend, force=True,
                        traced=traced)

    where = "the emulated testbed" if emulated else "local processes"
    _say(f"[4/4] running each: {args.requests} requests streamed (throughput), then "
         f"{LATENCY_REQUESTS} one at a time (latency), in {where}")
    reports, latency = {}, {}

    def measure(name, path, **where_kw):
        a, res = run_local(path, args.requests, **where_kw)
        reports[name] = run_report.build(a.plan, res, "emulated" if emulated else "local")
        _, res1 = run_local(path, LATENCY_REQUESTS, config=HeadConfig(window=1), **where_kw)
        latency[name] = run_report.build(a.plan, res1)["latency_s"]["p50"]

    if emulated:
        with emulate.testbed(real, host.of("conv"), echo=_say) as (bed, _):
            placement = {b.device: (b.launch_prefix(), b.address) for b in bed.boards}
            for name, path in (("plan", art), ("single", art1)):
                measure(name, path, placement=placement, head_host=bed.host_address)
    else:
        for name, path in (("plan", art), ("single", art1)):
            measure(name, path)
    for name, rep in reports.items():
        _say(f"\n--- {name}: {rep['model']} ---")
        _say(run_report.format_table(rep).rstrip())
        jsonio.write(out / f"run-{name}.json", {**rep, "unloaded_latency_p50_s": latency[name]})
    tp, tp1 = reports["plan"]["throughput"], reports["single"]["throughput"]
    pred, pred1 = plan.predicted.throughput, single.predicted.throughput
    lat, lat1 = latency["plan"], latency["single"]
    _say(f"\nsummary, in the emulation (the real boards are {1 / shp.dilation:.3g}x faster):")
    _say(f"  {'':22}{'samples/s':>10}{'predicted':>11}{'error':>8}   {'latency ms':>10}{'predicted':>11}{'error':>8}")
    for label, t, p, lt, lp in (("plan", tp, pred, lat, plan.predicted.latency_s),
                                ("best single board", tp1, pred1, lat1, single.predicted.latency_s)):
        _say(f"  {label:22}{t:10.2f}{p:11.2f}{100 * (t / p - 1):+7.0f}%   "
             f"{1e3 * lt:10.1f}{1e3 * lp:11.1f}{100 * (lt / lp - 1):+7.0f}%")
    _say(f"  measured speed-up of the plan over the best single board: {tp / tp1:.2f}x throughput "
         f"(predicted {pred / pred1:.2f}x)")
    failed = sum(r["failed"] for r in reports.values())
    if failed:
        _say(f"{failed} request(s) failed; see the tables above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
