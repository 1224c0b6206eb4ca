"""Training predictions vs measurements on the emulated testbed, after calibration (tracker issue 14 item 5).

LeNet-5 on three emulated Pi 3B (examples/clusters/ten-rpi3b.yaml, first three boards; each a network
namespace with half a core of CPU quota and 94 Mbit/s links). Trains two calibration layouts on the datasheet
profile (stage 0 on pi0 | stage 1 on pi1 + pi2, and the whole model on pi0), fits the training figures from
both runs (`edgeplan calibrate`), then trains each evaluation layout priced on the fitted cluster. Prints per
run: layout, micro-batches, predicted and measured iteration (board ms), error; the fit's in-sample errors.

    python -m benchmarks.bench_truth_train [--iters 40] [--batch 32] [--keep DIR] [--pin]     # as root
        [--layouts "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/4;lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu/1"]

After calibrating, the planner re-plans on the fitted cluster (`make_plan`, priced by the planner itself) and
that plan is trained: the row "re-plan". Measured on this 2-core machine shared with other sessions,
`--iters 40`, three runs on 2026-11-30 23:32-23:52 UTC at load 1.0-2.1 (reports kept with --keep):

    layout                                   M  predicted ms        measured ms         error
    pi0 | pi1*0.75 + pi2*0.25 (calibration)  4  54.5, 50.7, 53.1    45.7, 42.3, 49.9    +19, +20,  +6%  (in-sample)
    pi0 (calibration)                        4  18.8, 17.6, 17.0    18.8, 18.1, 17.3     -0,  -3,  -2%  (in-sample)
    re-plan (planner's choice): pi1          4  18.8, 17.6, 17.0    16.4, 19.3, 17.2    +15,  -9,  -1%
    pi0 | pi1                                4  27.7, 25.0, 25.8    23.3, 21.4, 25.5    +19, +17,  +1%
    pi0 | pi1                                1  27.1, 26.0, 26.2    14.7, 15.9, 15.8    +85, +63, +66%
    pi0*0.375 + pi1*0.375 + pi2*0.25         4  45.0, 43.1, 45.0    43.9, 50.7, 48.7     +2, -15,  -7%

The re-plan is within 10% in 2 of 3 runs (and in the netns test's run: 20.5 predicted, 20.8 measured). The
planner picks the whole model on one board: on three equal boards a pipeline or data parallelism costs more
per iteration (the fitted 0.5-1 ms per call and per all-reduce step) than it saves. Its misses are the
board-to-board, run-to-run spread of one layout: the same work read 18.8 / 18.1 / 17.3 ms on pi0 and 16.4 /
19.3 / 17.2 on pi1 in the same runs.

Previous session (before the re-plan row; two runs, load 5.2-6.5 and 3.3-4.1): pi0 | pi1+pi2 +5/+15%, one board
-6/-5%, pi0 | pi1 M=4 +11/-30% (bimodal), M=1 +69/+53%, data parallel +2/-1%.

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

The slow mode, measured per thread this session (/proc/<pid>/task/*/schedstat and sched of both ranks of
pi0 | pi1 M=4 every 0.2 s, 40 iterations, datasheet plan): quiet (load 0.3-0.8, 4 runs) 25.0, 25.6, 25.8,
29.0 ms; with a 1-core busy loop on the host (load 2.3-2.8, 3 runs) 31.2, 31.5, 34.5 ms, never bimodal here.
- Not OpenMP/intra-op spinning: a rank has 8-9 threads, and all but the main thread and gloo's two
  gloo_tcp_loop threads ran <= 4 ms CPU in a whole run (the rank sets torch.set_num_threads(1)).
- pi0's main thread never blocks (0-4 voluntary switches per run): the stage is quota-bound, so any CPU
  added per operation lengthens the iteration one for one. Quiet it ran in 45-70 slices with 0-1 CPU
  migrations per run; loaded 193-217 slices, 4-8 migrations, and ~22% more CPU per iteration.
- gloo's busier tcp loop thread, billed to the same quota, took 72-189 ms per run quiet (1150-1580 wakeups,
  57-120 us each) and 152-214 ms loaded (up to 141 us a wakeup): 2-5 ms of the board's 12.5 ms per iteration.
- A CFS quota may inflate the CPU per operation by itself: LeNet-5's conv part, forward + backward of 8
  samples, one thread pinned to one CPU (load 1.3, blocks of 100): 1.08-1.17 ms CPU free, 1.20-1.93 ms under a
  10 ms / 20 ms quota, 1.15-1.49 ms free beside a busy loop on the same CPU. Not confirmed at load 3.9 (three
  interleaved pairs: free 1.12-3.48 ms, quota 1.20-1.81: other tenants' load swamps it). A throttled process
  comes back to caches (and, in this KVM guest, a vCPU) others used while it waited; a real board is never
  throttled. So the spread is the emulation's and the host's, growing with host load; not fixed (a 4 ms
  period was worse, last session).
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
        os.environ[emulate.ENV_VAR] = str(jsonio.write(out / "testbed.json", emulate.state_json(bed, shape)))
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
