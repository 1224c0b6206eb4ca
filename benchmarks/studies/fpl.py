"""Study 4 (issue 16): flexible parallel learning vs federated averaging vs distributed SGD vs split learning.

Three source boards (cam-a, cam-b, cam-c of examples/clusters/fpl-five.yaml, Raspberry Pi 4)
hold aligned views of the same samples: scikit-learn's digits, each source seeing only
a band of rows (rows 0-2, 3-5, 5-7 of the 8x8 image: like three cameras on one scene;
``edgeplan.fpl.views``), with the same labels. A trunk board (``trunk``, Jetson Nano)
serves as FPL's trunk, split learning's server and the parameter server.

  fpl@LAYER    `edgeplan fpl` branches (one per source, on its board) before LAYER, the junction
               and the trunk on the trunk board; features out, gradients back each batch
  fpl@LAYER-leave  the same with cam-b's board away for the middle third of the epochs (deepest LAYER)
  split@LAYER  split learning: each client has its own copy of the layers before LAYER, the trunk
               on the server; clients take turns batch by batch (one branch per client in turn)
  fedavg       federated averaging: each board trains the whole model on its own view for an
               epoch, the server averages the parameters (one round per epoch)
  dsgd         distributed SGD: synchronous data parallel, each board's gradient on its own
               view every step, averaged through the parameter server

Per epoch: bytes sent (counted from the tensors each method sends: features, gradients,
parameters, in both directions), compute time per board (every board's work runs in this
process on one torch thread; its CPU seconds are counted per board with time.thread_time,
so other processes on this machine do not inflate them), energy (modelled: the power the
profiles add over idle while busy x that busy time, plus the links' energy per byte) and
test accuracy (FPL: all sources joined, as deployed; the others: the mean over the three
views, the model each board would run on its own camera). The comparison runs in-process,
not in `edgeplan emulate`: no shaped links, so transfer time is not part of it.

With --emulate (root) four runs also go through the real runtime on the emulated boards
(`edgeplan plan` / `compile` / `train --data` inside `edgeplan emulate`): fpl@<deepest junction>
with its trunk on one board and with the trunk split over two (the junction pinned to
``trunk``, the last layer to ``trunk-2``), and dsgd and fedavg as a one-stage data-parallel
plan over the three source boards, each replica reading its own board's view (`--data
BOARD=DIR`, training/sources.ReplicaDataEngine; same sample indices on every board per step,
so they train exactly as the in-process methods: tests/fpl/test_fpl_study_runtime.py) with
`--sync sync` and `--sync local-sgd` (weights averaged once per epoch). For each run the bytes
every board's network interface sent (measured-in-emulation) are printed beside the bytes
counted from the plan's cuts (FPL) or modelled for gloo's ring all-reduce (2 (k-1)/k x the
parameters per exchange; the in-process dsgd/fedavg count a parameter server instead), and
the epoch time measured (x dilation) beside the plan's prediction (modelled).

    python -m benchmarks.studies.fpl [--quick] [--epochs N] [--junctions conv2,fc1,fc] [--emulate]
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.studies import common as c

NAME = "fpl"
CLUSTER = c.CLUSTERS / "fpl-five.yaml"
SOURCES = ("cam-a", "cam-b", "cam-c")
SERVER = "trunk"
SMALL_CNN = '''"""The study's small CNN for 8x8 digits (conv 16, conv 32, pool, fc 64, fc 10)."""
import torch
from torch import nn

INPUT_SHAPE = (1, 1, 8, 8)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(512, 64)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(self.relu3(self.fc1(self.flatten(x))))


def build():
    """Seeded, so every method starts from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SmallCNN()
'''


@dataclass(frozen=True)
class Settings:
    epochs: int = 10
    batch: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    samples: int | None = None  # training samples per source (None: all 1438)
    junctions: tuple[str, ...] = ("conv2", "fc1", "fc")
    seed: int = 0
    emulate: bool = False  # also run fpl@<deepest junction> on the emulated boards (root)
    emulate_epochs: int = 2
    emulate_samples: int = 256
    emulate_runs: tuple[str, ...] = ("fpl", "fpl-2trunk", "dsgd", "fedavg")  # which runs --emulate makes
    host_gflops: float | None = None
    emulate_equal_boards: bool = False  # every emulated board at cam-a's speed (bytes only; times not the boards')


QUICK = {"epochs": 2, "samples": 320, "junctions": ("fc1", "fc")}


# --- what every method records ---------------------------------------------------------------------


class Ledger:
    """One epoch's counters: bytes each board sends, seconds each board computes."""

    def __init__(self):
        self.sent: dict[str, int] = {}
        self.busy: dict[str, float] = {}

    def send(self, board: str, *tensors) -> None:
        self.sent[board] = self.sent.get(board, 0) + sum(t.numel() * t.element_size() for t in tensors)

    def timed(self, board: str, fn, *args):
        t0 = time.thread_time()
        out = fn(*args)
        self.busy[board] = self.busy.get(board, 0.0) + time.thread_time() - t0
        return out


def _sgd(params, s: Settings):
    import torch

    return torch.optim.SGD(list(params), lr=s.lr, momentum=s.momentum)


def _batches(n: int, s: Settings, epoch: int) -> list[np.ndarray]:
    from edgeplan.training import data

    order = data.epoch_order(n, s.seed, epoch)
    return [order[i * s.batch:(i + 1) * s.batch] for i in range(n // s.batch)]


def _accuracy(predict, views, idx=None) -> float:
    """Mean test accuracy over the views of ``predict(i, x)`` (the model board ``i`` runs on its view)."""
    import torch

    accs = []
    with torch.no_grad():
        for i, v in enumerate(views):
            out = predict(i, torch.from_numpy(v.x_test))
            accs.append(float((out.argmax(1) == torch.from_numpy(v.y_test)).float().mean()))
    return float(np.mean(accs))


# --- the methods -----------------------------------------------------------------------------------


def run_fpl(model_file: Path, views, s: Settings, work: Path, absent=()) -> list[dict]:
    """edgeplan's own trainer across sources (training/sources.py): its counted bytes and per-board busy time.

    ``absent``: (source, 0-based epochs) a source's board is away (its branch skipped, junction weight masked).
    """
    from edgeplan.fpl import build
    from edgeplan.training.sources import SourceRun, SourceTrainer

    model = build.load_file(model_file)
    datasets = dict(zip(SOURCES, views, strict=True))
    work.mkdir(parents=True, exist_ok=True)
    folders = {src: str(work) for src in SOURCES}  # the views are in memory: every source's "folder" is there
    run = SourceRun(epochs=s.epochs, batch=s.batch, lr=s.lr, momentum=s.momentum, seed=s.seed, absent=tuple(absent))
    rows = SourceTrainer(model, datasets, folders, run, work).run()
    out = []
    for r in rows:
        busy = {(SERVER if k == "trunk" else k): v for k, v in r["busy_s"].items()}
        # the trunk sends the features' gradients back: half of each source's counted (out + back) bytes
        sent = {k: v // 2 for k, v in r["bytes_sent"].items()}
        sent[SERVER] = sum(v - v // 2 for v in r["bytes_sent"].values())
        out.append({"epoch": r["epoch"], "test_accuracy": r["test_accuracy"], "sent": sent, "busy": busy,
                    "junction": r["junction"], "present": r["present"]})
    return out


def run_split(model_file: Path, views, s: Settings) -> list[dict]:
    """Each client its own branch, the server the trunk (no junction); clients take turns batch by batch."""
    import torch
    import torch.nn.functional as F

    from edgeplan.fpl import build

    model = build.load_file(model_file).train()
    branches, trunk = list(model.branches), model.trunk
    opts = [_sgd(b.parameters(), s) for b in branches]
    t_opt = _sgd(trunk.parameters(), s)
    n = len(views[0].y_train)
    rows = []
    for epoch in range(s.epochs):
        led = Ledger()
        for batch in _batches(n, s, epoch):
            for i, src in enumerate(SOURCES):  # in turn: client i's batch through its branch and the trunk
                x = torch.from_numpy(views[i].x_train[batch])
                y = torch.from_numpy(views[i].y_train[batch])
                feat = led.timed(src, branches[i], x)
                led.send(src, feat)
                f_in = feat.detach().requires_grad_(True)

                def server_step(f_in=f_in, y=y):
                    t_opt.zero_grad(set_to_none=True)
                    F.cross_entropy(trunk(f_in), y).backward()
                    t_opt.step()

                led.timed(SERVER, server_step)
                led.send(SERVER, f_in.grad)

                def client_back(i=i, feat=feat, g=f_in.grad):
                    opts[i].zero_grad(set_to_none=True)
                    feat.backward(g)
                    opts[i].step()

                led.timed(src, client_back)
        rows.append(_epoch_row(epoch, model, lambda i, x: trunk(branches[i](x)), views, led))
    return rows


def _epoch_row(epoch: int, model, predict, views, led: Ledger) -> dict:
    """One epoch's row of an in-process method: test accuracy of ``predict`` (source index, x) with ``model`` in
    eval mode (back to training after), the ledger's bytes and busy seconds."""
    model.eval()
    acc = _accuracy(predict, views)
    model.train()
    return {"epoch": epoch + 1, "test_accuracy": acc, "sent": led.sent, "busy": led.busy}


def _flat(module):
    """All parameters as one vector: what a parameter exchange sends."""
    import torch

    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def run_fedavg(base_file: Path, views, s: Settings, keep: dict | None = None) -> list[dict]:
    """Each board trains the whole model on its view for an epoch; the server averages the parameters.

    A board keeps its optimizer (momentum) between rounds and starts each round from the averaged
    weights, as the runtime's ``--sync local-sgd`` does (so the emulated run trains the same).
    """
    import torch
    import torch.nn.functional as F

    from edgeplan.graph.load import load_model

    global_model = load_model(f"{base_file}:build").module.train()
    n = len(views[0].y_train)
    boards = [copy.deepcopy(global_model) for _ in SOURCES]
    opts = [_sgd(b.parameters(), s) for b in boards]
    rows = []
    for epoch in range(s.epochs):
        led = Ledger()
        locals_ = []
        for i, src in enumerate(SOURCES):
            local, opt = boards[i], opts[i]
            local.load_state_dict(global_model.state_dict())
            led.send(SERVER, _flat(global_model))  # the server sends the global model down

            def local_epoch(i=i, local=local, opt=opt, epoch=epoch):
                for batch in _batches(n, s, epoch):
                    x, y = torch.from_numpy(views[i].x_train[batch]), torch.from_numpy(views[i].y_train[batch])
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(local(x), y).backward()
                    opt.step()

            led.timed(src, local_epoch)
            led.send(src, _flat(local))  # and gets the local model back
            locals_.append(local)

        def average(locals_=locals_):
            with torch.no_grad():
                for name, p in global_model.named_parameters():
                    p.copy_(torch.stack([dict(m.named_parameters())[name] for m in locals_]).mean(0))

        led.timed(SERVER, average)
        rows.append(_epoch_row(epoch, global_model, lambda i, x: global_model(x), views, led))
    if keep is not None:  # the trained model, for the runtime's check against it
        keep["model"] = global_model
    return rows


def run_dsgd(base_file: Path, views, s: Settings, keep: dict | None = None) -> list[dict]:
    """Synchronous data parallel: every step each board's gradient goes to the server, the new weights come back."""
    import torch
    import torch.nn.functional as F

    from edgeplan.graph.load import load_model

    model = load_model(f"{base_file}:build").module.train()
    params = list(model.parameters())
    opt = _sgd(params, s)
    n = len(views[0].y_train)
    rows = []
    for epoch in range(s.epochs):
        led = Ledger()
        for batch in _batches(n, s, epoch):
            grads = []
            for i, src in enumerate(SOURCES):
                x, y = torch.from_numpy(views[i].x_train[batch]), torch.from_numpy(views[i].y_train[batch])

                def grad(x=x, y=y):
                    model.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    return torch.cat([p.grad.reshape(-1) for p in params])

                grads.append(led.timed(src, grad))
                led.send(src, grads[-1])

            def step(grads=grads):
                g = torch.stack(grads).mean(0)
                off = 0
                for p in params:
                    p.grad = g[off:off + p.numel()].view_as(p).clone()
                    off += p.numel()
                opt.step()

            led.timed(SERVER, step)
            for _ in SOURCES:
                led.send(SERVER, _flat(model))
        rows.append(_epoch_row(epoch, model, lambda i, x: model(x), views, led))
    if keep is not None:  # the trained model, for the runtime's check against it
        keep["model"] = model
    return rows


def run_emulated(fpl_file: Path, views_, s: Settings, work: Path, epochs: int, samples: int, bed,
                 extra_pins: tuple[str, ...] = ()) -> dict:
    """fpl@LAYER through the real pipeline on the boards of ``bed``: plan (pins), compile, train --data.

    ``extra_pins``: more ``--pin LAYER=BOARD`` (e.g. the junction on ``trunk`` and the last layer on
    ``trunk-2``: the trunk split over two boards). Returns the runtime's per-board network bytes per
    epoch (each emulated board's interface counters) over the epoch's training (the probe stops
    before evaluation) beside the bytes counted from the plan's cuts for the same samples (features
    out, gradients back, and between trunk stages); the difference is the wire's overhead (message
    headers, TCP/IP) and the few collectives (metrics, presence).
    """
    from edgeplan import jsonio
    from edgeplan.fpl import views
    from edgeplan.graph.load import build
    from edgeplan.planner.plan import load as load_plan

    folders = views.write(views_, [work / "data" / src for src in SOURCES])  # the full views: --samples subsets
    pins = [a for i, src in enumerate(SOURCES) for a in ("--pin", f"input{i}={src}")]
    pins += [a for p in extra_pins for a in ("--pin", p)]
    plan_file = work / "plan.json"
    c._check_call(c.edgeplan_cmd("plan", f"{fpl_file.resolve()}:build", "--cluster", str(CLUSTER), "--mode",
                                 "training", "--objective", "time", *pins, "--batch", str(s.batch),
                                 "--microbatches", "1", "--out", str(plan_file.resolve())), work / "plan.log", "plan")
    art = work / "art"
    c._check_call(c.edgeplan_cmd("compile", str(plan_file.resolve()), "--out", str(art.resolve()), "--force"),
                  work / "compile.log", "compile")
    run_dir = (work / "run").resolve()
    data_args = [a for src, d in zip(SOURCES, folders, strict=True) for a in ("--data", f"{src}={d.resolve()}")]
    argv = c.edgeplan_cmd("train", str(art.resolve()), "--epochs", str(epochs), "--samples", str(samples),
                          "--lr", str(s.lr), "--timeout", str(c.TRAIN_TIMEOUT_S), "--run-dir", str(run_dir),
                          *data_args)
    env = dict(os.environ)
    if bed.emulate:
        env["EDGEPLAN_TESTBED"] = str(bed._state)
    else:
        argv.append("--local")
        env.pop("EDGEPLAN_TESTBED", None)
    c._check_call(argv, work / "train.log", "FPL training through the runtime", env=env)
    rows = jsonio.read(run_dir / "metrics.json")["epochs"]
    plan = load_plan(str(plan_file))
    trunk_boards = [st.replicas[0].device for st in plan.stages[1:]]
    graph = build(f"{fpl_file.resolve()}:build").graph
    size = {x.name: int(np.prod(x.output.shape[1:])) * 4 for x in graph.layers}
    samples = min(samples, len(views_[0].y_train))
    per_epoch = samples // s.batch * s.batch
    counted = {src: per_epoch * sum(size[n] for n in out) for src, (_, out) in zip(
        SOURCES, _branch_outputs(fpl_file, plan), strict=True)}  # features out, per source board
    for k, st in enumerate(plan.stages[1:], start=1):
        back = sum(size[n] for n in graph.live_at(st.start))  # the gradients of what it received
        fwd = sum(size[n] for n in graph.live_at(st.stop)) if k < len(plan.stages) - 1 else 0
        counted[st.replicas[0].device] = per_epoch * (back + fwd)
    measured = {b: float(np.mean([r["boards"][b]["net_tx_bytes"] for r in rows])) for b in rows[0]["boards"]} \
        if bed.emulate else None
    return {"epochs": epochs, "samples": samples, "dilation": bed.dilation if bed.emulate else 1.0,
            "emulated": bool(bed.emulate), "trunk_boards": trunk_boards, "plan_text": c.layout_text(plan),
            "predicted_iter_s": plan.predicted.iter_s, "iters": samples // s.batch,
            "measured_tx_bytes_per_epoch": measured, "counted_training_bytes_per_epoch": counted,
            "test_accuracy": [r["test_accuracy"] for r in rows],
            "epoch_s": [r["epoch_s"] for r in rows], "board_iter_s": [r["board_iter_s"] for r in rows]}


def _two_trunk_pins(fpl_file: Path) -> tuple[str, ...]:
    """The junction's last layer on ``trunk``, the model's last layer on ``trunk-2``: a trunk of two stages."""
    from edgeplan.graph.load import build

    names = [x.name for x in build(f"{fpl_file.resolve()}:build").graph.layers]
    first = next(i for i, n in enumerate(names) if n.startswith("trunk_"))
    return (f"{names[first - 1]}={SERVER}", f"{names[-1]}=trunk-2")


def _branch_outputs(fpl_file: Path, plan):
    from edgeplan.codegen.split import split_branches
    from edgeplan.graph.load import build

    return [(b.inputs, b.outputs) for b in split_branches(build(f"{fpl_file.resolve()}:build"), plan)]


RUNTIME_METHODS = {"dsgd": "sync", "fedavg": "local-sgd"}


def _dp_plan(base_file: Path, boards: tuple[str, ...], per_board: int, work: Path):
    """One stage, one replica per source board, ``per_board`` samples each: the data-parallel layout priced by
    the planner's cost model (its prediction recorded), compiled like any plan (no search: the layout is given)."""
    from edgeplan.graph.load import build
    from edgeplan.planner.api import layout_from_text, plan_of
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(str(CLUSTER))
    spec = f"{base_file.resolve()}:build"
    graph = build(spec).graph
    obj = Objective(mode="training", objective="time", batch=per_board * len(boards), microbatches=1,
                    schedule="1f1b")
    costs = build_cost_table(graph, cluster)
    share = 1.0 / len(boards)
    text = f"{graph.name} | 0-{len(graph.layers) - 1}@" + "+".join(f"{b}:cpu*{share:.9f}" for b in boards)
    plan = plan_of(costs, layout_from_text(costs, text, obj), obj, model=graph.name, graph_sha256=graph.digest(),
                   cluster=cluster.name, cluster_sha256=cluster.digest(), with_baselines=False,
                   notes=("data parallel over the source boards, one view each (FPL study)",))
    return record_sources(plan, model_ref=spec, input_shape=None, cluster_path=str(CLUSTER), cluster=cluster)


def run_runtime(method: str, base_file: Path, views_, s: Settings, work: Path, epochs: int, samples: int,
                bed) -> dict:
    """``method`` (dsgd / fedavg) through the real runtime: `edgeplan compile` of a data-parallel plan over the three
    source boards, `edgeplan train --data BOARD=DIR` (each replica reads its own board's view; every step all take
    the same sample indices, so it is the in-process method's semantics), inside ``bed`` (emulated or local).

    dsgd: ``--sync sync`` (gradients all-reduced every step); fedavg: ``--sync local-sgd --sync-every ITERS``
    (each board trains on its view for an epoch; weights averaged after its last step: one round).
    The runtime all-reduces over gloo's ring, not through a parameter server, so its modelled bytes per board
    are 2 (k-1)/k x the parameters per exchange.
    """
    from edgeplan import jsonio
    from edgeplan.fpl import views

    n = min(samples, len(views_[0].y_train))
    sub = [replace(v, x_train=v.x_train[:n], y_train=v.y_train[:n]) for v in views_]
    folders = views.write(sub, [work / "data" / src for src in SOURCES])
    plan = _dp_plan(base_file, SOURCES, s.batch, work)
    art = c.compile_plan(plan, work, work / "compile.log")
    iters = n // s.batch
    # fedavg: the round in the epoch's last step, inside the window of the boards' interface counters (they stop
    # before the epoch-end average, which then repeats it on equal weights: a no-op up to rounding)
    sync = ["--sync", RUNTIME_METHODS[method]] + (["--sync-every", str(iters)] if method == "fedavg" else [])
    run_dir = (work / "run").resolve()
    argv = c.edgeplan_cmd("train", str(art.resolve()), "--epochs", str(epochs), "--lr", str(s.lr),
                          "--momentum", str(s.momentum), "--seed", str(s.seed), "--timeout", str(c.TRAIN_TIMEOUT_S),
                          "--run-dir", str(run_dir), *sync,
                          *[a for src, d in zip(SOURCES, folders, strict=True)
                            for a in ("--data", f"{src}={d.resolve()}")])
    env = dict(os.environ)
    if bed.emulate:
        env["EDGEPLAN_TESTBED"] = str(bed._state)
    else:
        argv.append("--local")
        env.pop("EDGEPLAN_TESTBED", None)
    c._check_call(argv, work / "train.log", f"{method} through the runtime", env=env)
    rows = jsonio.read(run_dir / "metrics.json")["epochs"]
    k, params = len(SOURCES), sum(int(np.prod(p.shape)) for p in _base_params(base_file))
    exchanges = iters if method == "dsgd" else 1
    ring = 2 * (k - 1) / k * params * 4 * exchanges
    measured = {b: float(np.mean([r["boards"][b].get("net_tx_bytes", 0.0) for r in rows])) for b in SOURCES} \
        if bed.emulate else None
    return {"method": method, "sync": RUNTIME_METHODS[method], "epochs": epochs, "samples": n, "iters": iters,
            "emulated": bool(bed.emulate), "dilation": bed.dilation if bed.emulate else 1.0,
            "plan_text": c.layout_text(plan), "predicted_iter_s": plan.predicted.iter_s,
            "measured_tx_bytes_per_epoch": measured,
            "modelled_ring_bytes_per_epoch": {b: ring for b in SOURCES},
            "test_accuracy": [r["test_accuracy"] for r in rows], "epoch_s": [r["epoch_s"] for r in rows],
            "board_iter_s": [r["board_iter_s"] for r in rows]}


def _base_params(base_file: Path):
    from edgeplan.graph.load import load_model

    return list(load_model(f"{base_file}:build").module.parameters())


def _feature_shape(fpl_file: Path) -> tuple[int, ...]:
    text = fpl_file.read_text()
    line = next(x for x in text.splitlines() if x.startswith("FEATURE_SHAPE = "))
    return tuple(int(v) for v in line.split("=", 1)[1].split("#")[0].strip(" []").split(","))[1:]


# --- energy and the study --------------------------------------------------------------------------


def _power() -> tuple[dict[str, float], float]:
    """Power each board's CPU adds while busy (busy - idle W, the cluster's profiles) and link energy (J/byte)."""
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(str(CLUSTER))
    cpu = {d.name: next(u for u in d.units if u.kind == "cpu") for d in cluster.devices}
    added = {d.name: cpu[d.name].busy_power_w - d.idle_power_w for d in cluster.devices}
    return added, cluster.link(SOURCES[0], SERVER).energy_per_byte_j


def _energy(row: dict, busy_w: dict[str, float], j_per_byte: float) -> float:
    return sum(busy_w[b] * t for b, t in row["busy"].items()) + j_per_byte * sum(row["sent"].values())


def run(s: Settings, out: Path, echo=c.echo_default) -> dict:
    import torch

    from edgeplan.fpl import build, views

    torch.set_num_threads(1)  # each board's work timed alone, as on a board's core
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    base = work / "small_cnn.py"
    base.write_text(SMALL_CNN)
    data = full = views.digits_views(len(SOURCES), s.seed)
    if s.samples:
        data = [replace(v, x_train=v.x_train[:s.samples], y_train=v.y_train[:s.samples]) for v in data]
    busy_w, j_per_byte = _power()
    echo(f"data: {data[0].description.split(',')[0]} in {len(SOURCES)} row bands, {len(data[0].y_train)} "
         f"training / {len(data[0].y_test)} test samples per source; {s.epochs} epochs, batch {s.batch}")
    methods: dict[str, list[dict]] = {}
    for layer in s.junctions:
        fpl_file = build.write(build.split(f"{base}:build", SOURCES, layer), work / f"fpl_{layer}.py")
        with c.timed(f"fpl@{layer}", echo):
            methods[f"fpl@{layer}"] = run_fpl(fpl_file, data, s, work / f"run-{layer}")
        with c.timed(f"split@{layer}", echo):
            methods[f"split@{layer}"] = run_split(fpl_file, data, s)
        if layer == s.junctions[-1] and s.epochs >= 3:  # sources that leave: cam-b away for the middle third
            away = tuple(range(s.epochs // 3, 2 * s.epochs // 3))
            with c.timed(f"fpl@{layer} cam-b away", echo):
                methods[f"fpl@{layer}-leave"] = run_fpl(fpl_file, data, s, work / f"run-{layer}-leave",
                                                        absent=(("cam-b", away),))
    with c.timed("fedavg", echo):
        methods["fedavg"] = run_fedavg(base, data, s)
    with c.timed("dsgd", echo):
        methods["dsgd"] = run_dsgd(base, data, s)
    for rows in methods.values():
        for r in rows:
            r["energy_j"] = _energy(r, busy_w, j_per_byte)
    emulated, runtime = None, {}
    if s.emulate:
        layer = s.junctions[-1]
        fpl_file = work / f"fpl_{layer}.py"
        echo(f"on the emulated boards: fpl@{layer} (trunk on one board, then on two), dsgd and fedavg through "
             "edgeplan plan / compile / train --data inside emulate ...")
        with c.Bed(CLUSTER, s.host_gflops, emulate=True, echo=echo, equal_boards=s.emulate_equal_boards) as bed:
            if "fpl" in s.emulate_runs:
                with c.timed(f"emulated fpl@{layer}", echo):
                    emulated = run_emulated(fpl_file, full, s, work / "emulated", s.emulate_epochs,
                                            s.emulate_samples, bed)
                    emulated["junction"] = layer
                    runtime[f"fpl@{layer}"] = emulated
            if "fpl-2trunk" in s.emulate_runs:
                with c.timed(f"emulated fpl@{layer}, trunk on two boards", echo):
                    two = run_emulated(fpl_file, full, s, work / "emulated-2trunk", s.emulate_epochs,
                                       s.emulate_samples, bed, extra_pins=_two_trunk_pins(fpl_file))
                    runtime[f"fpl@{layer} 2 trunk boards"] = {**two, "junction": layer}
            for method in (m for m in RUNTIME_METHODS if m in s.emulate_runs):
                with c.timed(f"emulated {method}", echo):
                    runtime[method] = run_runtime(method, base, full, s, work / f"emulated-{method}",
                                                  s.emulate_epochs, s.emulate_samples, bed)
        for r in runtime.values():
            r["equal_boards"] = s.emulate_equal_boards
    return {"study": NAME, "settings": {**s.__dict__, "junctions": list(s.junctions)},
            "data": "scikit-learn digits, aligned row-band views per source (edgeplan.fpl.views)",
            "labels": {"bytes": "counted (tensors each method sends)",
                       "busy_s": "CPU seconds per board, measured here (1 torch thread, time.thread_time)",
                       "energy_j": "modelled: (busy - idle W of the profiles) x busy time + link J/byte x bytes",
                       "accuracy": "fpl: all sources joined; others: mean over the three views"},
            "power_w": busy_w, "methods": methods, "emulated": emulated, "runtime": runtime}


def summary(rows: list[dict]) -> dict:
    last = rows[-1]
    per_epoch = {k: float(np.mean([sum(r[k].values()) for r in rows])) for k in ("sent", "busy")}
    return {"accuracy": last["test_accuracy"], "best_accuracy": max(r["test_accuracy"] for r in rows),
            "mb_per_epoch": per_epoch["sent"] / 1e6, "busy_s_per_epoch": per_epoch["busy"],
            "max_board_busy_s": float(np.mean([max(r["busy"].values()) for r in rows])),
            "energy_j_per_epoch": float(np.mean([r["energy_j"] for r in rows]))}


def report(doc: dict, out: Path) -> tuple[list[str], dict]:
    sums = {m: summary(rows) for m, rows in doc["methods"].items()}
    header = ["method", "test acc", "best acc", "MB sent/epoch", "busy s/epoch (all boards)",
              "slowest board s/epoch", "energy J/epoch"]
    body = [[m, f"{v['accuracy'] * 100:.1f}%", f"{v['best_accuracy'] * 100:.1f}%", c.fmt(v["mb_per_epoch"]),
             c.fmt(v["busy_s_per_epoch"]), c.fmt(v["max_board_busy_s"]), c.fmt(v["energy_j_per_epoch"])]
            for m, v in sums.items()]
    epochs = len(next(iter(doc["methods"].values())))
    acc_rows = [[m] + [f"{r['test_accuracy'] * 100:.1f}" for r in rows] for m, rows in doc["methods"].items()]
    lines = [f"FPL study: {doc['data']}; {doc['settings']['epochs']} epochs",
             *c.table(header, body, right=range(1, 7)), "", "test accuracy (%) per epoch:",
             *c.table(["method"] + [str(e + 1) for e in range(epochs)], acc_rows, right=range(1, epochs + 1)),
             "", "compute (CPU s/epoch) and bytes sent (MB/epoch) per board:",
             *c.table(["method"] + [f"{b} s" for b in (*SOURCES, SERVER)] + [f"{b} MB" for b in (*SOURCES, SERVER)],
                      [[m] + [c.fmt(float(np.mean([r["busy"].get(b, 0.0) for r in rows])))
                              for b in (*SOURCES, SERVER)]
                       + [c.fmt(float(np.mean([r["sent"].get(b, 0) for r in rows])) / 1e6)
                          for b in (*SOURCES, SERVER)] for m, rows in doc["methods"].items()],
                      right=range(1, 9)),
             "", "bytes: " + doc["labels"]["bytes"] + "; busy: " + doc["labels"]["busy_s"] + "; energy: "
             + doc["labels"]["energy_j"] + "; accuracy: " + doc["labels"]["accuracy"]]
    lines += _runtime_lines(doc.get("runtime") or {})
    for m, rows in doc["methods"].items():
        if m.endswith("-leave"):
            lines.append(f"{m}: cam-b away in epochs "
                         + ", ".join(str(r["epoch"]) for r in rows if "cam-b" not in r["present"])
                         + " (its branch skipped, its junction weight masked; accuracy with the sources present)")
        if "junction" in rows[-1]:
            lines.append(f"{m} junction weights after the last epoch: "
                         + ", ".join(f"{k} {w:.2f}" for k, w in rows[-1]["junction"].items()))
    doc["summary"] = sums
    fig = _figure(doc)
    return lines, c.write_outputs(out, NAME, doc, lines, fig)


def _runtime_lines(runs: dict) -> list[str]:
    """The runs through the real runtime: per board, bytes its interface sent (measured-in-emulation) beside the
    bytes expected (counted from the plan's cuts for FPL; modelled for gloo's ring all-reduce for dsgd/fedavg),
    and per run the epoch time measured (x dilation: the boards' time) beside the plan's prediction."""
    if not runs:
        return []
    body, times = [], []
    for name, r in runs.items():
        expected = r.get("counted_training_bytes_per_epoch") or r["modelled_ring_bytes_per_epoch"]
        label = "counted" if "counted_training_bytes_per_epoch" in r else "modelled (ring)"
        measured = r["measured_tx_bytes_per_epoch"] or {}
        for b in expected:
            got = measured.get(b)
            body.append([name, b, c.fmt(got / 1e6) if got is not None else "-", c.fmt(expected[b] / 1e6), label,
                         c.fmt(got / expected[b]) if got is not None and expected[b] else "-"])
        d = r["dilation"]
        times.append([name, r.get("plan_text", ""), f"{r['samples']} x {r['epochs']}",
                      c.fmt(float(np.mean(r["epoch_s"]))), c.fmt(float(np.mean(r["epoch_s"])) * d),
                      c.fmt(r["predicted_iter_s"] * r["iters"]),
                      ", ".join(f"{a * 100:.1f}" for a in r["test_accuracy"])])
    first = next(iter(runs.values()))
    where = (f"the emulated fpl-five boards (dilation {first['dilation']:.3g}"
             + ("; every board at cam-a's speed, so times are not the boards'" if first.get("equal_boards") else "")
             + ")" if first["emulated"] else "local processes (not emulated)")
    return ["", f"through the real runtime (edgeplan plan / compile / train --data) on {where}: bytes sent per epoch "
                "of training (measured-in-emulation: each board's network interface; the probe stops before "
                "evaluation) vs expected",
            *c.table(["run", "board", "measured tx MB", "expected MB", "expected is", "measured / expected"], body,
                     right=(2, 3, 5)),
            "", "time per epoch there (measured-in-emulation; boards' s = host s x dilation) vs the plan's prediction "
                "(modelled: predicted iteration x iterations), test accuracy (%) per epoch:",
            *c.table(["run", "plan", "samples x epochs", "host s/epoch", "boards' s/epoch", "predicted s/epoch",
                      "test acc"], times, right=(3, 4, 5))]


def _figure(doc: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for m, rows in doc["methods"].items():
        axes[0].plot([r["epoch"] for r in rows], [r["test_accuracy"] * 100 for r in rows], marker="o", label=m)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test accuracy (%)")
    names = list(doc["summary"])
    axes[1].bar(names, [doc["summary"][m]["mb_per_epoch"] for m in names])
    axes[1].set_ylabel("MB sent per epoch (counted)")
    axes[2].bar(names, [doc["summary"][m]["energy_j_per_epoch"] for m in names])
    axes[2].set_ylabel("energy per epoch (J, modelled)")
    for ax in axes[1:]:
        ax.tick_params(axis="x", rotation=45)
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("FPL vs federated averaging vs distributed SGD vs split learning (3 sources, digits row bands)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = c.parser(__doc__, NAME)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None, help="training samples per source")
    ap.add_argument("--junctions", default=None, help="comma-separated layer names of the small CNN")
    ap.add_argument("--emulate", action="store_true",
                    help="also train fpl@<deepest junction> (trunk on one board and on two), dsgd and fedavg "
                         "through the runtime on the emulated boards (root); report the bytes their network "
                         "interfaces sent and the epoch times")
    ap.add_argument("--emulate-runs", default=None,
                    help="with --emulate: comma-separated subset of fpl,fpl-2trunk,dsgd,fedavg (default: all)")
    args = ap.parse_args(argv)
    s = Settings(**QUICK) if args.quick else Settings()
    s = replace(s, **{k: v for k, v in (("epochs", args.epochs), ("samples", args.samples)) if v is not None})
    if args.junctions:
        s = replace(s, junctions=tuple(args.junctions.split(",")))
    if args.emulate:
        s = replace(s, emulate=True, host_gflops=args.host_gflops)
    if args.emulate_runs:
        runs = tuple(args.emulate_runs.split(","))
        bad = [r for r in runs if r not in Settings.emulate_runs]
        if bad:
            ap.error(f"--emulate-runs {','.join(bad)}: not a run; choose from {','.join(Settings.emulate_runs)}")
        s = replace(s, emulate_runs=runs)
    out = c.out_dir(args, NAME)
    doc = run(s, out)
    lines, paths = report(doc, out)
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
