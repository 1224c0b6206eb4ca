"""Training predictions vs measurements on the emulated testbed, after calibration (tracker issue 14 item 5).

LeNet-5 on three emulated Pi 3B (examples/clusters/ten-rpi3b.yaml, first three boards; each a network
namespace with half a core of CPU quota and 94 Mbit/s links). Trains two calibration layouts on the datasheet
profile (stage 0 on pi0 | stage 1 on pi1 + pi2, and the whole model on pi0), fits the training figures from
both runs (`edgeplan calibrate`), then trains each evaluation layout priced on the fitted cluster. Prints per
run: layout, micro-batches, predicted and measured iteration (board ms), error; the fit's in-sample errors.

    python -m benchmarks.bench_truth_train [--iters 40] [--batch 32] [--keep DIR] [--pin]     # as root
        [--layouts "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/4;lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/1"]

Measured on this 2-core machine shared with other sessions, `--iters 40`, after the per-call fit and the
one-segment links (this session; two runs, load 5.2-6.5 and 3.3-4.1):

    layout                                   M  predicted     measured      error
    pi0 | pi1*0.75 + pi2*0.25 (calibration)  4  52.5, 52.7   50.0, 45.9   +5, +15%  (in-sample)
    pi0 (calibration)                        4  16.3, 16.6   17.3, 17.5   -6,  -5%  (in-sample)
    pi0 | pi1                                4  25.1, 25.3   22.6, 36.2  +11, -30%  (netns test: -3%)
    pi0 | pi1                                1  25.4, 25.7   15.0, 16.8  +69, +53%
    pi0*0.375 + pi1*0.375 + pi2*0.25         4  44.6, 44.9   43.6, 45.3   +2,  -1%

Before (last session: 12 iterations, the mean, a per-layer fit, links that passed a 64 KB GSO segment at
once): one board +27/+17%, pi0 | pi1+pi2 -22/-21%, pi0 | pi1 M=4 -6/-20%, data parallel +2/-2%,
pi0 | pi1 M=1 +85/+101%.

What is left: the M=1 pipeline. Each board idles while the other computes, so under its CFS quota (10 ms per
20 ms period) it runs each 2-4 ms phase at a whole core's speed, twice the half core the model (and a real
board of that speed) gives it. A shorter period does not help on this kernel (HZ 250: the quota is enforced
at 4 ms ticks): at 4 ms the M=4 pipeline read 45.6 ms against 28.8 at 20 ms (a throttled rank stalls the
other's receive), at 2 ms runs of one ping-pong read 25-31 ms for 26 expected. Run-to-run spread of one
layout in one testbed: 34.8 vs 42.4 ms at load 7-8.6 (the shared machine). The pi0 | pi1 M=4 layout is
bimodal across runs (~23 or ~36 ms, as last session's 22.9 vs 32.7): pi0 runs at its full quota (0.49-0.50
cores) in every run, but spends 12 ms of CPU per iteration in the fast runs and 18 in the slow ones, with every
measured figure (forward, backward, call, receive) 20-60% up together: the host's CPU per operation moved, not
a term the cost model leaves out; the median of the iterations does not remove it (the mode holds for a run).
Pinning each board to its own CPU (`--pin`, netns.pin_cpus: a board's CFS quota is handed out per CPU, and
threads wandering over both strand it) made that layout fast in 2 of 3 runs of one testbed (24.0, 32.0,
24.7 ms; unpinned, interleaved: 45.5, 33.8, 34.3) at load 3-4; at load 6-9 a pinned board cannot leave a
busy CPU and every layout ran slower (one board 25.4 ms vs 17.4 unpinned at load 7-8.6; errors after the
fit then +19, -1, -14, +15, -9%). So pinning stays opt-in.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

CAL = (("lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu*0.75+pi2:cpu*0.25", 4), ("lenet5 | 0-11@pi0:cpu", 4))
EVAL = ("lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/4;lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/1;"
        "lenet5 | 0-11@pi0:cpu*0.375+pi1:cpu*0.375+pi2:cpu*0.25/4")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clusters" / "ten-rpi3b.yaml"
BOARD_CORES = 0.5


def three_rpi3b(out: Path) -> Path:
    """The first three boards of ten-rpi3b as a cluster file in ``out`` (this bench's and the netns test's)."""
    import yaml

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["devices"], doc["name"] = doc["devices"][:3], "three-rpi3b"
    path = out / "three-rpi3b.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def plan_layout(graph, cluster_path: Path, text: str, microbatches: int, batch: int):
    """(plan of the layout ``text`` for 1F1B training, cluster) priced on ``cluster_path``."""
    from edgeplan.planner.api import evaluate, layout_from_text, plan_of
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(cluster_path)
    costs = build_cost_table(graph, cluster)
    obj = Objective(mode="training", objective="time", batch=batch, microbatches=microbatches, schedule="1f1b")
    lay = layout_from_text(costs, text, obj)
    plan = plan_of(costs, lay, obj, evaluate(costs, lay, obj), model=graph.name, graph_sha256=graph.digest(),
                   cluster=cluster.name, cluster_sha256=cluster.digest())
    return record_sources(plan, model_ref="lenet5", input_shape=None, cluster_path=str(cluster_path),
                          cluster=cluster), cluster


def replan(graph, cluster_path: Path, microbatches: int, batch: int):
    """(the planner's own 1F1B training plan on ``cluster_path``, cluster): issue 14's re-plan after calibration,
    priced by the planner (not re-evaluated), whatever layout it picks."""
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(cluster_path)
    obj = Objective(mode="training", objective="time", batch=batch, microbatches=microbatches, schedule="1f1b")
    return record_sources(make_plan(graph, cluster, obj), model_ref="lenet5", input_shape=None,
                          cluster_path=str(cluster_path), cluster=cluster), cluster


def train(plan, cluster, out: Path, tag: str, iters: int, batch: int) -> tuple[dict, Path]:
    """Train ``plan`` for ``iters`` iterations on synthetic data (in the testbed the caller set up): (report, path)."""
    from edgeplan import jsonio
    from edgeplan.training import launch
    from edgeplan.training.config import TrainConfig

    art = launch.prepare(plan, "lenet5", out / f"art-{tag}", cluster=cluster)
    cfg = TrainConfig(epochs=1, dataset="synthetic", samples=iters * batch, max_iters=iters, evaluate=False,
                      timeout_s=180)
    result = launch.run(art, cfg, local=False, run_dir=out / f"run-{tag}", echo=lambda *_: None)
    rep = launch.report(launch.load(art), result, cfg)
    return rep, jsonio.write(out / f"train-report-{tag}.json", rep)


def main(argv: list[str] | None = None) -> list[tuple]:

    from edgeplan import jsonio
    from edgeplan.graph.load import build
    from edgeplan.planner.textform import to_str
    from edgeplan.profiles import calibrate_train as ct
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import emulate
    from edgeplan.training import launch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layouts", default=EVAL, help="evaluation layouts, 'TEXT/M' separated by ';'")
    ap.add_argument("--keep", type=Path, help="keep plans, artifacts and reports in DIR")
    ap.add_argument("--pin", action="store_true", help="each board's processes on its own CPU (netns.pin_cpus)")
    args = ap.parse_args(argv)
    evals = [(text.strip(), int(m)) for text, m in (x.rsplit("/", 1) for x in args.layouts.split(";"))]
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-truth-train-"))
    out.mkdir(parents=True, exist_ok=True)
    cluster_path = three_rpi3b(out)
    spec = load_cluster(cluster_path)
    graph = build("lenet5").graph
    rows = []

    def run(text: str, m: int, cpath: Path, tag: str, kind: str, planned=None) -> Path:
        t0 = time.perf_counter()
        rep, path = train(*(planned or plan_layout(graph, cpath, text, m, args.batch)), out, tag, args.iters,
                          args.batch)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"  {tag}: {text}  M={m}  {time.perf_counter() - t0:.0f} s, load {load}", flush=True)
        rows.append((kind, text, m, rep["predicted_iter_s"], rep["measured_iter_s"], load))
        return path

    pi = emulate.board_speed(spec, "pi0")
    with emulate.testbed(spec, host_core_flops=pi / BOARD_CORES, echo=lambda *_: None,
                         max_board_cores=BOARD_CORES, pin=args.pin) as (bed, shape):
        os.environ[launch.TESTBED_ENV] = str(jsonio.write(out / "testbed.json", emulate.state_json(bed, shape)))
        paths = [run(text, m, cluster_path, f"cal{i}", "datasheet") for i, (text, m) in enumerate(CAL)]
        result, _ = ct.calibrate_files(paths, [], cluster_path, out / "calibrated.yaml", lambda p: graph)
        for (text, m), (_, meas, _, after) in zip(CAL, result.iteration_errors(), strict=True):
            rows.append(("in-sample", text, m, after, meas, "-"))
        planned = replan(graph, out / "calibrated.yaml", CAL[0][1], args.batch)
        print(f"  re-plan on the calibrated cluster: {to_str(planned[0])}  M={planned[0].microbatches}", flush=True)
        run(to_str(planned[0]), planned[0].microbatches, out / "calibrated.yaml", "replan", "re-plan", planned)
        for i, (text, m) in enumerate(evals):
            run(text, m, out / "calibrated.yaml", f"eval{i}", "unseen")
    print(ct.format_fit(result))
    print(f"\n{'priced on':<10} {'layout':<56} {'M':>2} {'predicted':>10} {'measured':>9} {'error':>6}  load")
    for kind, text, m, pred, meas, load in rows:
        print(f"{kind:<10} {text:<56} {m:>2} {pred * 1e3:>7.1f} ms {meas * 1e3:>6.1f} ms "
              f"{(pred - meas) / meas:>+6.0%}  {load}")
    print(f"(reports in {out})")
    return rows


if __name__ == "__main__":
    main()
