"""Study 2: data-parallel training on ten Raspberry Pi 3B at 100 Mbit/s, 1 to 10 boards, sync vs async.

Cluster examples/clusters/ten-rpi3b.yaml. Models: LeNet as an MLP (LeNet-300-100,
benchmarks/studies/lenet_mlp.py) and as a CNN (LeNet-5), and CIFAR ResNet-32/56/110;
global batch 32/64/128; the first n boards (n = 1..10), the model replicated on each
with the samples split by speed (the planner's data-parallel-all layout); synchronous
(gradients all-reduced every iteration) vs asynchronous (local SGD: each board steps on
its own samples, weights averaged every --sync-every iterations).

Two parts:
- modelled, for every case: the planner's predicted time per epoch and memory per board
  (its cost and memory model, profiles/rpi3b), which configurations do not fit in the
  Pi 3B's 1 GB (724 MB usable), and the board count edgeplan's planner would choose
  (`edgeplan plan --mode training` on all ten boards, one micro-batch) with its layout;
- measured, for the configurations chosen (--quick: a few minutes): `edgeplan compile` +
  `edgeplan train` with every rank inside `edgeplan emulate` (one network namespace and
  CPU quota per board, shaped links): time per epoch (scaled to the real boards by the
  emulation's dilation), test accuracy, per-board CPU utilisation (of the board's
  emulated capacity), peak memory and network bytes (the board's own interfaces).

The research found shallow models slower as boards are added (synchronisation outweighs
compute), ResNet-32 about 10x faster on ten boards, and ResNet-110 at batch 128 not
fitting; the verdicts say whether each held here, and whether the measured best board
count agrees with the planner's.

The full mode (no --quick, no --run-models/--run-batches/--boards/--syncs) trains the grid
``full_grid``: MLP, LeNet-5 and ResNet-32 on 1, 2, 4 and 10 boards, ResNet-56 and ResNet-110 on
1 and 10, all at batch 32 and synchronous; the shallow two also asynchronous (local-sgd) on 4 and
10; then each (model, batch)'s planner board count where the grid lacks it; ResNet-110 at batch
64/128 and ResNet-56 at 128 on one board are the fit check (not run when the planner's memory
model says they do not fit). 128 training + 32 test samples per epoch, one epoch. Every measured
row is saved to OUT/work/measured-rows.json as it ends and the report files are rewritten, so
a run cut short keeps what it measured, and running the same command again measures only the
rows still missing (--fresh starts over).

    python -m benchmarks.studies.rpi_scaling [--quick] [--models ...] [--batches 32,64] [--boards 1,2,4]
                                             [--syncs sync,local-sgd] [--dataset DIR] [--no-train] [--fresh]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.studies import common as c

NAME = "rpi-scaling"
CLUSTER = c.CLUSTERS / "ten-rpi3b.yaml"
LENET_MLP = str(Path(__file__).with_name("lenet_mlp.py")) + ":build"
MODELS = {"lenet-mlp": LENET_MLP, "lenet5": "lenet5", "resnet32": "resnet32-cifar", "resnet56": "resnet56-cifar",
          "resnet110": "resnet110-cifar"}
SHALLOW = ("lenet-mlp", "lenet5")
SYNCS = ("sync", "local-sgd")
CIFAR_TRAIN = 50_000  # samples per epoch the modelled epoch time is for (CIFAR-10's training set)


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = tuple(MODELS)
    batches: tuple[int, ...] = (32, 64, 128)
    plan_boards: tuple[int, ...] = tuple(range(1, 11))  # modelled sweep
    run_models: tuple[str, ...] = ("lenet-mlp", "lenet5", "resnet32")
    run_batches: tuple[int, ...] = (32,)
    run_boards: tuple[int, ...] = (1, 2, 4, 10)
    syncs: tuple[str, ...] = SYNCS
    sync_every: int = 4
    sync_bn: bool = False  # ResNets: BatchNorm statistics over all boards' samples (edgeplan train --sync-bn)
    dataset: str = "digits"
    train_samples: int = 512
    test_samples: int = 256
    epochs: int = 1
    train: bool = True
    emulate: bool | None = None
    host_gflops: float | None = None
    quick: bool = False
    full_grid: bool = False  # measure full_grid() instead of run_models x run_batches x run_boards x syncs
    resume: bool = True  # keep rows of OUT/work/measured-rows.json measured with the same settings


Case = tuple[str, int, int, str]  # (model, batch, boards, sync) of one measured run

QUICK = {"models": ("lenet-mlp", "lenet5", "resnet32", "resnet110"), "batches": (32, 128),
         "run_models": ("lenet-mlp", "lenet5"), "run_batches": (32,), "run_boards": (1, 4),
         "train_samples": 128, "test_samples": 64}
FULL = {"full_grid": True, "train_samples": 128, "test_samples": 32}  # the grid of full_grid(), ~1 h here


def _subset(n: int) -> list[str]:
    return [f"pi{i}" for i in range(n)]


def full_grid(choices: list[dict]) -> list[Case]:
    """The full mode's measured runs, most telling first (a run cut short loses the tail): sized to finish
    in about an hour on a 2-core machine, where one emulated run costs 1.5-5 min (a Pi 3B is 0.04 of a core
    here, so most of a run is torch starting up on each board)."""
    grid: list[Case] = []
    for model in ("lenet-mlp", "lenet5"):
        grid += [(model, 32, n, "sync") for n in (1, 2, 4, 10)] + [(model, 32, n, "local-sgd") for n in (4, 10)]
    grid += [("resnet32", 32, n, "sync") for n in (1, 2, 4, 10)]
    grid += [(m, 32, n, "sync") for m in ("resnet56", "resnet110") for n in (1, 10)]
    grid += [("resnet110", 64, 1, "sync"), ("resnet110", 128, 1, "sync"), ("resnet56", 128, 1, "sync")]
    return grid + _planner_cases(grid, choices)


def _planner_cases(grid: list[Case], choices: list[dict]) -> list[Case]:
    """Each measured (model, batch)'s run on the planner's own board count, where the grid lacks it, so
    whether the planner's choice is the measured best can be judged."""
    have = {(m, b, n) for m, b, n, sync in grid if sync == "sync"}
    extra = []
    for m, b in dict.fromkeys((m, b) for m, b, _n, _s in grid):
        ch = next((x for x in choices if x["model"] == m and x["batch"] == b), None)
        if ch and (m, b, ch["planner_boards"]) not in have and \
                any(r == (m, b) for r in ((x[0], x[1]) for x in grid if x[2] > 1)):
            extra.append((m, b, ch["planner_boards"], "sync"))
    return extra


def cases(s: Settings, choices: list[dict]) -> list[Case]:
    """The measured runs of ``s``: the full grid, or run_models x run_batches x run_boards x syncs (one board
    runs sync only: nothing to synchronise)."""
    if s.full_grid:
        return full_grid(choices)
    return [(m, b, n, sync) for m in s.run_models for b in s.run_batches for n in s.run_boards
            for sync in (s.syncs if n > 1 else ("sync",))]


def _signature(s: Settings) -> dict:
    """What a measured row depends on besides its case: rows saved under another signature are measured again."""
    return {"dataset": s.dataset, "train_samples": s.train_samples, "test_samples": s.test_samples,
            "epochs": s.epochs, "sync_every": s.sync_every, "sync_bn": s.sync_bn, "emulate": s.emulate,
            "host_gflops": s.host_gflops, "cluster_sha256": hashlib.sha256(CLUSTER.read_bytes()).hexdigest()}


def _case(r: dict) -> Case:
    return (r["model"], r["batch"], r["boards"], r["sync"] if "skipped" not in r else "sync")


class Progress:
    """OUT/work/measured-rows.json: the rows measured so far, rewritten after each one (resumable)."""

    def __init__(self, path: Path, s: Settings, echo):
        self.path, self.sig = path, _signature(s)
        self.rows: dict[Case, dict] = {}
        self.bed = {"notes": [], "dilation": 1.0, "emulated": False}  # the testbed the rows were measured on
        if s.resume and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("signature") == self.sig:
                self.rows = {_case(r): r for r in saved["rows"]}
                self.bed = saved["bed"]
                echo(f"resuming: {len(self.rows)} row(s) already measured in {path} (--fresh to measure again)")
            else:
                echo(f"{path}: measured with other settings ({saved.get('signature')}); measuring again")

    def add(self, row: dict) -> None:
        self.rows[_case(row)] = row
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"signature": self.sig, "bed": self.bed, "rows": list(self.rows.values())},
                                  indent=1))
        tmp.replace(self.path)


def cached_model_rows(model: str, s: Settings, work: Path) -> tuple[list[dict], list[dict]]:
    """``model_rows``, kept in WORK/modelled.json (the ResNets' sweep takes minutes on a Pi-sized core)."""
    key = {"model": model, "batches": list(s.batches), "plan_boards": list(s.plan_boards),
           "cluster_sha256": hashlib.sha256(CLUSTER.read_bytes()).hexdigest()}
    cache = work / "modelled.json"
    if s.resume and cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["rows"], saved["choices"]
    rows, choices = model_rows(model, s, work)
    cache.write_text(json.dumps({"key": key, "rows": rows, "choices": choices}))
    return rows, choices


def model_rows(model: str, s: Settings, work: Path) -> tuple[list[dict], list[dict]]:
    """The modelled sweep of one model: a row per (batch, boards), and the planner's choice per batch."""
    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.baselines import baselines
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    graph = build(MODELS[model]).graph
    costs = {n: build_cost_table(graph, load_cluster(c.sub_cluster(CLUSTER, _subset(n), work / f"pi-{n}.yaml")))
             for n in s.plan_boards}
    rows, choices = [], []
    for batch in s.batches:
        obj = Objective(mode="training", objective="time", batch=batch, microbatches=1, schedule="1f1b")
        iters = CIFAR_TRAIN // batch
        for n in s.plan_boards:
            name, lay, ev, why = next(b for b in baselines(costs[n], obj) if b[0] == "data-parallel-all")
            # a rank's modelled memory with its torch reserve (train_reserve_mb): comparable with its peak RSS
            mem = max(r.memory_bytes + r.reserve_bytes for st in ev.stages for r in st.replicas) if ev else None
            ram = float(min(costs[n].ram_bytes))
            rows.append({"model": model, "batch": batch, "boards": n, "fits": not why, "why_not": why or None,
                         "memory_mb_per_board": None if mem is None else mem / 2**20, "usable_ram_mb": ram / 2**20,
                         "predicted_iter_s": ev.iter_s if ev else None,
                         "predicted_epoch_s": ev.iter_s * iters if ev and not why else None})
        plan = make_plan(graph, load_cluster(CLUSTER), obj)
        used = sorted({r.device for st in plan.stages for r in st.replicas})
        fits = [r for r in rows if r["model"] == model and r["batch"] == batch and r["fits"]]
        best_dp = min(fits, key=lambda r: r["predicted_iter_s"])["boards"] if fits else None
        choices.append({"model": model, "batch": batch, "planner_boards": len(used), "planner_layout":
                        c.layout_text(plan), "planner_iter_s": plan.predicted.iter_s,
                        "planner_epoch_s": plan.predicted.iter_s * (CIFAR_TRAIN // batch),
                        "best_data_parallel_boards": best_dp})
    return rows, choices


def measured_rows(bed: c.Bed, s: Settings, work: Path, echo, todo: list[Case] | None = None,
                  progress: Progress | None = None, modelled: list[dict] = (), checkpoint=None) -> list[dict]:
    """Compile and train each case of ``todo`` (default: ``cases(s, [])``) on ``bed``; one row per case.

    ``progress`` gets each row as it ends and ``checkpoint()`` is called after it (the report files), so a run
    cut short keeps its rows; a configuration not feasible on its boards (memory) is a row with ``skipped``; a
    training that fails is said and left out (the next run of the same command retries it)."""
    todo = cases(s, []) if todo is None else todo
    rows, data, arts, t0 = [], {}, {}, time.monotonic()
    for k, (model, batch, n, sync) in enumerate(todo, 1):
        spec = MODELS[model]
        if model not in data:
            data[model] = c.prepare_data(s.dataset, c.model_input_shape(spec), s.train_samples, s.test_samples,
                                         work / model / "data")
            echo(f"{model}: {data[model].describe()}")
        cfg = f"{model}-b{batch}-n{n}"
        eta = "" if k == 1 else f", ~{(time.monotonic() - t0) / (k - 1) * (len(todo) - k + 1) / 60:.0f} min left"
        echo(f"[{k}/{len(todo)}] {cfg} {sync} ({(time.monotonic() - t0) / 60:.1f} min in{eta})")
        if cfg not in arts:
            sub = c.sub_cluster(CLUSTER, _subset(n), work / model / f"pi-{n}.yaml")
            try:
                plan = c.plan_training(spec, sub, batch=batch, microbatches=1, choice="data-parallel-all")
            except c.StudyError as e:  # not feasible on n boards (memory): a result, saved
                arts[cfg] = (None, str(e))
            else:
                try:
                    arts[cfg] = (plan, c.compile_plan(plan, work / cfg, work / f"{cfg}-compile.log"))
                except c.StudyError as e:
                    echo(f"  {cfg}: compile FAILED, left out of the report ({e})")
                    continue
        plan, art = arts[cfg]
        if plan is None:
            row = {"model": model, "batch": batch, "boards": n, "sync": "-", "skipped": art}
            echo(f"  {model} b{batch} x{n}: not run ({art})")
        else:
            echo(f"  {cfg} {sync}: {c.layout_text(plan)}")
            extra = ("--sync", sync, "--sync-every", str(s.sync_every)) + (("--sync-bn",) if s.sync_bn else ())
            try:
                run = bed.train(art, data[model], s.epochs, work / cfg / f"run-{sync}", extra=extra)
            except c.StudyError as e:  # not saved: the same command again retries it
                echo(f"  {cfg} {sync}: FAILED, left out of the report ({e})")
                continue
            row = _measured(model, batch, n, sync, plan, run, bed, data[model])
            echo(f"  {cfg} {sync}: {c.fmt(row['epoch_s'])} s/epoch, test acc {row['test_accuracy']}, peak "
                 f"{row['peak_rss_mb_max']:.0f} MB")
        mod = next((x for x in modelled if (x["model"], x["batch"], x["boards"]) == (model, batch, n)), None)
        row["modelled_memory_mb"] = mod["memory_mb_per_board"] if mod else None
        rows.append(row)
        if progress is not None:
            progress.add(row)
        if checkpoint is not None:
            checkpoint()
    return rows


def _measured(model, batch, n, sync, plan, run: c.Run, bed: c.Bed, data: c.Data) -> dict:
    last = run.epochs[-1]
    boards = last.get("boards", {})
    quota = {}
    if bed.emulate:
        quota = {d: bed._bed.board(d).cpu_quota for d in boards}  # cores of this machine per emulated board
    util = [b["cpu_cores"] / quota[d] if quota.get(d) else b["cpu_cores"] for d, b in boards.items()]
    net = [(b["net_rx_bytes"] or 0) + (b["net_tx_bytes"] or 0) for b in boards.values()
           if b["net_rx_bytes"] is not None]
    return {"model": model, "batch": batch, "boards": n, "sync": sync, "layout": c.layout_text(plan),
            "dilation": run.dilation, "epoch_s_emulated": run.epoch_s, "epoch_s": run.real_epoch_s,
            "samples_per_epoch": data.train, "iterations": last["iterations"],
            "predicted_iter_s": run.predicted_iter_s, "iter_s": run.real_iter_s,
            "test_accuracy": run.accuracy,
            "cpu_utilisation_mean": sum(util) / len(util) if util else None,
            "cpu_utilisation_of": "the board's emulated capacity" if quota else "one core of this machine",
            "peak_rss_mb_max": max((b["peak_rss_bytes"] for b in boards.values()), default=0) / 2**20,
            "net_bytes_per_board_mean": sum(net) / len(net) if net else None,
            "per_board": boards, "log": run.log}


def run(s: Settings, out: Path, echo=c.echo_default, checkpoint: bool = False) -> dict:
    """The modelled sweep, then the measured cases not yet in OUT/work/measured-rows.json; ``checkpoint``:
    rewrite the report files after each measured row."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    modelled, choices = [], []
    for model in s.models:
        echo(f"planning {model} on 1..{max(s.plan_boards)} boards (cost and memory model)")
        rows, ch = cached_model_rows(model, s, work / "plans" / model)
        modelled += rows
        choices += ch
    progress = Progress(work / "measured-rows.json", s, echo)
    todo = cases(s, choices) if s.train else []
    state = progress.bed  # the same emulation settings give the same dilation in a resumed run

    def doc() -> dict:
        measured = [progress.rows[k] for k in todo if k in progress.rows]
        return _doc(s, modelled, choices, measured, state["notes"], state["dilation"], state["emulated"])

    def write() -> None:
        report(doc(), out)

    left = [k for k in todo if k not in progress.rows]
    if left:
        echo(f"measuring {len(left)} of {len(todo)} run(s): " + ", ".join(f"{m} b{b} x{n} {y}"
                                                                      for m, b, n, y in left))
        # emulate only the boards the measured runs use: fewer namespaces, and each board's CPU share is
        # not cut to make room for boards that never train
        used = c.sub_cluster(CLUSTER, _subset(max(n for _m, _b, n, _y in todo)), work / "emulated.yaml")
        with c.Bed(used, s.host_gflops, s.emulate, echo) as bed:
            state.update(notes=list(bed.notes), dilation=bed.dilation, emulated=bool(bed.emulate))
            measured_rows(bed, s, work, echo, left, progress, modelled, write if checkpoint else None)
    return doc()


def _doc(s: Settings, modelled: list[dict], choices: list[dict], measured: list[dict], notes: list[str],
         dilation: float, emulated: bool) -> dict:
    choices = [dict(ch) for ch in choices]
    time_kind = c.SCALED if emulated else c.LOCAL
    for ch in choices:
        runs = [r for r in measured if r["model"] == ch["model"] and r["batch"] == ch["batch"] and "skipped" not in r
                and r["sync"] == "sync"]
        if runs:
            best = min(runs, key=lambda r: r["epoch_s"])
            ch["measured_best_boards"] = best["boards"]
            ch["measured_boards_tried"] = sorted(r["boards"] for r in runs)
            # judged only when the planner's board count was among those run
            ch["agrees"] = best["boards"] == ch["planner_boards"] if ch["planner_boards"] in \
                ch["measured_boards_tried"] else None
    return {
        "study": NAME, "quick": s.quick, "cluster": str(CLUSTER.relative_to(c.ROOT)),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()
                     if k not in ("emulate", "host_gflops")},
        "emulated": emulated, "dilation": dilation, "notes": notes,
        "labels": {"predicted_epoch_s": f"modelled (planner cost model, real Pi 3B, {CIFAR_TRAIN} samples)",
                   "memory_mb_per_board": ("modelled (planner memory model: weights, grads, optimizer, "
                                           "activations, torch reserve)"),
                   "epoch_s": time_kind, "epoch_s_emulated": c.MEASURED if emulated else c.LOCAL,
                   "test_accuracy": c.MEASURED if emulated else c.LOCAL,
                   "cpu_utilisation_mean": c.MEASURED if emulated else c.LOCAL,
                   "peak_rss_mb_max": c.MEASURED if emulated else c.LOCAL,
                   "net_bytes_per_board_mean": c.MEASURED if emulated else "not measured (local processes)"},
        "modelled": modelled, "choices": choices, "measured": measured,
        "verdicts": verdicts(modelled, measured, choices),
    }


def _speedup(rows: list[dict], key: str, n_hi: int) -> float | None:
    lo = next((r for r in rows if r["boards"] == 1 and r.get(key)), None)
    hi = next((r for r in rows if r["boards"] == n_hi and r.get(key)), None)
    return lo[key] / hi[key] if lo and hi else None


def verdicts(modelled: list[dict], measured: list[dict], choices: list[dict]) -> list[dict]:
    """The research's three findings, each judged on the measured runs where they exist, else the model."""
    out = []
    sync_runs = [r for r in measured if r.get("sync") == "sync" and "skipped" not in r]
    for model in [m for m in SHALLOW if any(r["model"] == m for r in modelled + sync_runs)]:
        for batch in sorted({r["batch"] for r in sync_runs + modelled if r["model"] == model}):
            meas = [r for r in sync_runs if r["model"] == model and r["batch"] == batch]
            if len(meas) > 1:
                top = max(r["boards"] for r in meas)
                sp, src = _speedup(meas, "epoch_s", top), c.SCALED
            else:
                mod = [r for r in modelled if r["model"] == model and r["batch"] == batch]
                if not mod:
                    continue
                top = max(r["boards"] for r in mod)
                sp, src = _speedup(mod, "predicted_epoch_s", top), "modelled"
            if sp is not None:
                out.append({"finding": f"{model} (shallow) is slower with more boards", "batch": batch,
                            "boards": top, "speedup": sp, "held": sp < 1.0, "from": src})
    for batch in sorted({r["batch"] for r in modelled if r["model"] == "resnet32"}):
        meas = [r for r in sync_runs if r["model"] == "resnet32" and r["batch"] == batch]
        if any(r["boards"] == 10 for r in meas) and any(r["boards"] == 1 for r in meas):
            sp, src = _speedup(meas, "epoch_s", 10), c.SCALED
        else:
            sp, src = _speedup([r for r in modelled if r["model"] == "resnet32" and r["batch"] == batch],
                               "predicted_epoch_s", 10), "modelled"
        if sp is not None:
            out.append({"finding": "resnet32 is ~10x faster on ten boards (judged: at least 7x)", "batch": batch,
                        "boards": 10, "speedup": sp, "held": sp >= 7.0, "from": src})
    one = next((r for r in modelled if r["model"] == "resnet110" and r["batch"] == 128 and r["boards"] == 1), None)
    if one is not None:
        out.append({"finding": "resnet110 at batch 128 does not fit (one board)", "batch": 128, "boards": 1,
                    "held": not one["fits"], "from": "modelled (planner memory model)",
                    "detail": one["why_not"] or f"{one['memory_mb_per_board']:.0f} MB fits"})
    for ch in choices:
        if "agrees" in ch:
            out.append({"finding": "planner's board count is the measured best", "model": ch["model"],
                        "batch": ch["batch"], "planner": ch["planner_boards"], "measured": ch["measured_best_boards"],
                        "tried": ch["measured_boards_tried"], "held": ch["agrees"], "from": "measured vs modelled"})
    return out


def report(doc: dict, out: Path) -> tuple[list[str], dict]:
    lines = [f"study 2 ({NAME}): {doc['cluster']} (Raspberry Pi 3B, 724 MB usable of 1 GB, 94 Mbit/s)",
             f"modelled: planner cost/memory model for the real boards, epoch = {CIFAR_TRAIN} samples, "
             "data parallel over the first n boards, one micro-batch"]
    models = list(dict.fromkeys(r["model"] for r in doc["modelled"]))
    boards = sorted({r["boards"] for r in doc["modelled"]})
    header = ["model", "batch"] + [f"n={n}" for n in boards] + ["planner's boards"]
    body = []
    for m in models:
        for b in sorted({r["batch"] for r in doc["modelled"] if r["model"] == m}):
            cells = []
            for n in boards:
                r = next(x for x in doc["modelled"] if x["model"] == m and x["batch"] == b and x["boards"] == n)
                cells.append(c.fmt(r["predicted_epoch_s"]) if r["fits"] else
                             f"no fit {r['memory_mb_per_board']:.0f}MB")
            ch = next(x for x in doc["choices"] if x["model"] == m and x["batch"] == b)
            body.append([m, str(b), *cells, str(ch["planner_boards"])])
    lines.append("predicted seconds per epoch (\"no fit\": the planner's memory per board exceeds 724 MB):")
    lines += c.table(header, body, right=range(1, len(header)))
    if doc["measured"]:
        kind = doc["labels"]["epoch_s"]
        of = next((r["cpu_utilisation_of"] for r in doc["measured"] if "skipped" not in r), "-")
        lines.append(f"measured ({kind}" + (f", dilation {doc['dilation']:.3g}" if doc["emulated"] else "")
                     + f"; epoch = the study's subset; CPU utilisation of {of}):")
        mh = ["model", "batch", "boards", "sync", "samples", "s/epoch", "speed-up", "iter ms pred/meas", "test acc %",
              "CPU util %", "MB model/peak", "net MB/board"]
        mb = []
        for r in doc["measured"]:
            if "skipped" in r:
                mb.append([r["model"], str(r["batch"]), str(r["boards"]), "-", "-", "not run: " + r["skipped"][-60:],
                           *["-"] * 6])
                continue
            base = next((x for x in doc["measured"] if x["model"] == r["model"] and x["batch"] == r["batch"]
                         and x["boards"] == 1 and "skipped" not in x), None)
            acc = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}"
            net = "-" if r["net_bytes_per_board_mean"] is None else c.fmt(r["net_bytes_per_board_mean"] / 2**20)
            mb.append([r["model"], str(r["batch"]), str(r["boards"]), r["sync"], str(r["samples_per_epoch"]),
                       c.fmt(r["epoch_s"]), f"{base['epoch_s'] / r['epoch_s']:.2f}x" if base else "-",
                       f"{r['predicted_iter_s'] * 1e3:.0f}/{r['iter_s'] * 1e3:.0f}", acc,
                       c.fmt(100 * r["cpu_utilisation_mean"]) if r["cpu_utilisation_mean"] is not None else "-",
                       _mem_cell(r), net])
        lines += c.table(mh, mb, right=range(4, len(mh)))
        lines += _sync_lines(doc["measured"], doc["settings"]["sync_every"])
        usable = next((r["usable_ram_mb"] for r in doc["modelled"]), None)
        lines += _memory_lines(doc["measured"], usable)
    lines += [f"note: {n}" for n in doc["notes"]]
    for v in doc["verdicts"]:
        what = {k: v[k] for k in ("model", "batch", "boards", "planner", "measured", "tried") if k in v}
        extra = f", speed-up {v['speedup']:.2f}x" if "speedup" in v else ""
        extra += f", {v['detail']}" if "detail" in v else ""
        verdict = "not judged (the planner's board count was not run)" if v["held"] is None else \
            "held" if v["held"] else "did not hold"
        lines.append(f"research finding '{v['finding']}' {what}: {verdict}{extra} [{v['from']}]")
    return lines, c.write_outputs(out, NAME, doc, lines, figure(doc))


def _mem_cell(r: dict) -> str:
    """Modelled memory per board (planner) / measured peak resident memory of the board's ranks, MB."""
    mod = r.get("modelled_memory_mb")
    return f"{'-' if mod is None else f'{mod:.0f}'}/{r['peak_rss_mb_max']:.0f}"


def _memory_lines(measured: list[dict], usable_mb: float | None) -> list[str]:
    """Runs the planner's memory model lets fit whose measured peak exceeds the board's usable memory: the
    model counts tensors, a rank also holds its framework (~300 MB of torch here)."""
    if usable_mb is None:
        return []
    return [f"memory: {r['model']} b{r['batch']} on {r['boards']} board(s) peaked at {r['peak_rss_mb_max']:.0f} MB "
            f"measured, over the {usable_mb:.0f} MB usable, although modelled at {r['modelled_memory_mb']:.0f} MB "
            "(the memory model leaves out the framework the rank runs on)"
            for r in measured if "skipped" not in r and r.get("modelled_memory_mb") is not None
            and r["modelled_memory_mb"] <= usable_mb < r["peak_rss_mb_max"]]


def _sync_lines(measured: list[dict], every: int) -> list[str]:
    """Asynchronous (local-sgd) vs synchronous on the same boards: time, network bytes, accuracy."""
    out = []
    for r in measured:
        if r.get("sync") != "local-sgd":
            continue
        s = next((x for x in measured if x.get("sync") == "sync" and
                  (x["model"], x["batch"], x["boards"]) == (r["model"], r["batch"], r["boards"])), None)
        if s is None:
            continue
        net = "" if not s["net_bytes_per_board_mean"] or r["net_bytes_per_board_mean"] is None else \
            f", network bytes {r['net_bytes_per_board_mean'] / s['net_bytes_per_board_mean']:.2f}x"
        acc = "" if s["test_accuracy"] is None or r["test_accuracy"] is None else \
            f", test acc {100 * r['test_accuracy']:.1f}% vs {100 * s['test_accuracy']:.1f}%"
        out.append(f"local-sgd (weights averaged every {every} iterations) vs sync, {r['model']} b{r['batch']} on "
                   f"{r['boards']} boards: {s['epoch_s'] / r['epoch_s']:.2f}x the speed{net}{acc}")
    return out


def figure(doc: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if doc["measured"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.4), squeeze=False)
    ax = axes[0][0]
    for m in dict.fromkeys(r["model"] for r in doc["modelled"]):
        for b in sorted({r["batch"] for r in doc["modelled"] if r["model"] == m}):
            pts = [(r["boards"], r["predicted_epoch_s"]) for r in doc["modelled"]
                   if r["model"] == m and r["batch"] == b and r["fits"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=f"{m} b{b}")
    ax.set_yscale("log")
    ax.set_xlabel("boards")
    ax.set_ylabel(f"s per epoch ({CIFAR_TRAIN} samples)")
    ax.set_title("modelled (planner cost model, real Pi 3B)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    if doc["measured"]:
        ax = axes[0][1]
        runs = [r for r in doc["measured"] if "skipped" not in r]
        # speed-up over the same model and batch on one board: the research's claims are ratios, and the
        # ResNets' seconds would flatten the LeNets' on one axis
        one = {(r["model"], r["batch"]): r["epoch_s"] for r in runs if r["boards"] == 1}
        top = max((r["boards"] for r in runs), default=1)
        ax.plot([1, top], [1, top], color="0.6", lw=0.8, ls=":", label="ideal (n x)")
        for key in dict.fromkeys((r["model"], r["batch"], r["sync"]) for r in runs):
            if key[:2] not in one:
                continue
            pts = sorted((r["boards"], one[key[:2]] / r["epoch_s"]) for r in runs
                         if (r["model"], r["batch"], r["sync"]) == key)
            if key[2] != "sync":
                pts = [(1, 1.0)] + pts  # one board runs sync only: the same run is the local-sgd line's start
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{key[0]} b{key[1]} {key[2]}",
                    ls="-" if key[2] == "sync" else "--")
        ax.set_xlabel("boards")
        ax.set_ylabel("speed-up over one board (s per epoch of the subset)")
        ax.set_title(f"measured [{doc['labels']['epoch_s']}]", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Study 2: data-parallel training on ten Raspberry Pi 3B", fontsize=10)
    fig.tight_layout()
    return fig


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    ap = c.parser(__doc__, NAME)
    ap.add_argument("--models", default=None, help=f"modelled sweep, comma-separated of {', '.join(MODELS)}")
    ap.add_argument("--batches", default=None, help="modelled sweep batches, e.g. 32,64,128")
    ap.add_argument("--run-models", default=None, help="models trained in emulation")
    ap.add_argument("--run-batches", default=None)
    ap.add_argument("--boards", default=None, help="board counts trained in emulation, e.g. 1,2,4,10")
    ap.add_argument("--syncs", default=None, help="sync,local-sgd")
    ap.add_argument("--sync-every", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=None)
    ap.add_argument("--sync-bn", action="store_true",
                    help="train with `edgeplan train --sync-bn` (ResNets: BatchNorm over every board's samples)")
    ap.add_argument("--no-train", action="store_true", help="the modelled part only (no emulation)")
    ap.add_argument("--fresh", action="store_true",
                    help="measure every run again (default: keep the rows OUT/work/measured-rows.json holds)")
    args = ap.parse_args(argv)
    s = Settings(dataset=args.dataset, emulate=False if args.local else None, host_gflops=args.host_gflops,
                 quick=args.quick, train=not args.no_train, sync_bn=args.sync_bn, resume=not args.fresh)
    if args.quick:
        s = replace(s, **QUICK)
    elif not (args.run_models or args.run_batches or args.boards or args.syncs):
        s = replace(s, **FULL)
    given = {"models": args.models and tuple(args.models.split(",")), "batches": args.batches and _ints(args.batches),
             "run_models": args.run_models and tuple(args.run_models.split(",")),
             "run_batches": args.run_batches and _ints(args.run_batches),
             "run_boards": args.boards and _ints(args.boards), "syncs": args.syncs and tuple(args.syncs.split(",")),
             "sync_every": args.sync_every, "epochs": args.epochs, "train_samples": args.train_samples,
             "test_samples": args.test_samples}
    s = replace(s, **{k: v for k, v in given.items() if v})
    unknown = [m for m in (*s.models, *s.run_models) if m not in MODELS]
    if unknown or any(x not in SYNCS for x in s.syncs):
        ap.error(f"models must be of {', '.join(MODELS)} (got {', '.join(unknown)}); syncs of {', '.join(SYNCS)}")
    return c.finish(args, NAME, lambda s_, out: run(s_, out, checkpoint=True), report, s)


if __name__ == "__main__":
    sys.exit(main())
