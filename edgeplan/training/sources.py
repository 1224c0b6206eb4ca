"""Training across data sources (flexible parallel learning): each branch learns from its own board's data.

An FPL model (``edgeplan fpl``) has one branch per source, a Junction and a trunk.
Sources are *aligned views*: sample ``i`` of every source is the same event seen
by a different board (camera, sensor), with the same label, so the branches'
features for one sample can be joined. Raw inputs stay with their source: a
branch reads only its own source's arrays; what leaves it is its feature tensor
(and, backwards, the gradient for it), which is what ``SourceTrainer`` counts as
bytes sent.

Sources join and leave between epochs: at each epoch start a source takes part
when its data folder is there and the run does not mark it away (``--absent
SOURCE=EPOCHS``, for what-if runs). An absent branch is not run, the junction
masks its weight (the others are renormalised) and its optimizer does not step;
when it comes back it continues from its own newest checkpoint (the weights its
board kept). Checkpoints are per branch (``epoch-NNNN/branch-<source>.pt``, what
each source board holds) plus ``epoch-NNNN/trunk.pt`` (junction + trunk).

``SourceTrainer`` runs every branch in this process, in the same order of
samples, batches and updates as the distributed run of the same model; it is the
single-process semantics the distributed run is checked against, and what the
FPL study trains with.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeplan import jsonio
from edgeplan.errors import ArtifactError, EdgeplanError
from edgeplan.training import data
from edgeplan.training.checkpoint import _atomic_save

_EPOCHS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class SourceError(EdgeplanError):
    """--data / --absent do not fit the model's sources, or the sources' data are not aligned."""


def parse_data(values: Sequence[str], sources: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--data SOURCE=DIR`` values -> ((source, dir), ...) in the model's source order (missing: absent)."""
    given: dict[str, str] = {}
    for v in values:
        name, sep, directory = v.partition("=")
        if not sep or not name or not directory:
            raise SourceError(f"--data {v!r}: give SOURCE=DIR (sources of this model: {', '.join(sources)})")
        if name not in sources:
            raise SourceError(f"--data {v!r}: {name!r} is not a source of this model; sources: {', '.join(sources)}")
        if name in given:
            raise SourceError(f"--data names source {name!r} twice; give one folder per source")
        given[name] = directory
    if not given:
        raise SourceError(f"give --data SOURCE=DIR for at least one of the model's sources: {', '.join(sources)}")
    return tuple((s, given[s]) for s in sources if s in given)


def parse_absent(values: Sequence[str], sources: Sequence[str]) -> dict[str, frozenset[int]]:
    """``--absent SOURCE=EPOCHS`` (1-based, e.g. ``2`` or ``2-3,5``) -> {source: 0-based epochs away}."""
    out: dict[str, set[int]] = {}
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or name not in sources or not _EPOCHS.match(spec.replace(" ", "")):
            raise SourceError(f"--absent {v!r}: give SOURCE=EPOCHS with SOURCE one of {', '.join(sources)} and "
                              "EPOCHS like 2 or 2-3,5 (1-based)")
        for part in spec.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 1 or b < a:
                raise SourceError(f"--absent {v!r}: epochs start at 1 and ranges go upwards")
            out.setdefault(name, set()).update(range(a - 1, b))
    return {k: frozenset(v) for k, v in out.items()}


def fpl_parts(model: nn.Module, spec: str = "the model") -> tuple[str, ...]:
    """The sources of an ``edgeplan fpl`` model (checks it has branches, junction and trunk)."""
    sources = getattr(model, "sources", None)
    ok = sources is not None and all(hasattr(model, a) for a in ("branches", "junction", "trunk")) \
        and len(model.branches) == len(sources) and hasattr(model.junction, "set_present")
    if not ok:
        raise SourceError(f"{spec} is not a flexible-parallel-learning model; make one with "
                          "`edgeplan fpl MODEL --sources A,B,.. --junction-before LAYER --out fpl_model.py`")
    return tuple(sources)


def aligned(datasets: dict[str, data.Dataset], folders: dict[str, str]) -> None:
    """Sources must be views of the same samples: same counts and labels in both splits."""
    names = list(datasets)
    ref = datasets[names[0]]
    for name in names[1:]:
        d = datasets[name]
        for split in ("train", "test"):
            ya, yb = getattr(ref, f"y_{split}"), getattr(d, f"y_{split}")
            if len(ya) != len(yb) or not np.array_equal(ya, yb):
                raise SourceError(
                    f"--data {name}={folders[name]}: its {split} labels differ from those of {names[0]} "
                    f"({folders[names[0]]}); the sources must be aligned views (sample i of every source is the "
                    "same event with the same label)")


def present_at(epoch: int, folders: dict[str, str], absent: dict[str, frozenset[int]],
               sources: Sequence[str]) -> tuple[bool, ...]:
    """Who takes part in ``epoch`` (0-based): data folder there and not marked away."""
    return tuple(s in folders and Path(folders[s]).is_dir() and epoch not in absent.get(s, ()) for s in sources)


def branch_file(ckpt_dir: Path, epoch: int, source: str) -> Path:
    return Path(ckpt_dir) / f"epoch-{epoch:04d}" / f"branch-{source}.pt"


def trunk_file(ckpt_dir: Path, epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch-{epoch:04d}" / "trunk.pt"


def newest(ckpt_dir: Path, upto: int | None, source: str | None) -> int | None:
    """Newest epoch (<= ``upto`` when given) with a checkpoint of ``source``'s branch (None: of the trunk)."""
    d = Path(ckpt_dir)
    epochs = sorted((int(p.name[6:]) for p in d.iterdir() if re.fullmatch(r"epoch-\d{4,}", p.name)),
                    reverse=True) if d.is_dir() else []
    for e in epochs:
        if upto is not None and e > upto:
            continue
        if (branch_file(d, e, source) if source is not None else trunk_file(d, e)).exists():
            return e
    return None


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ArtifactError(f"{path}: cannot read checkpoint ({e}); delete that epoch folder") from e


@dataclass(frozen=True)
class SourceRun:
    """What a training run across sources does (the model file says which sources exist)."""

    epochs: int = 1
    batch: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    samples: int | None = None  # fixed seeded subset per split
    max_iters: int | None = None
    resume: bool = False
    absent: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (source, 0-based epochs away)


@dataclass
class _Counters:
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    sent: dict = field(default_factory=dict)  # source -> bytes (features out, gradients back)
    busy: dict = field(default_factory=dict)  # part (source or "trunk") -> seconds


class SourceTrainer:
    """All branches in this process (see the module docstring); ``run`` returns one row per epoch."""

    def __init__(self, model: nn.Module, datasets: dict[str, data.Dataset], folders: dict[str, str],
                 run: SourceRun, run_dir: str | Path, spec: str = "the model"):
        self.model, self.run_cfg = model.train(), run
        self.sources = fpl_parts(model, spec)
        self.datasets, self.folders = datasets, folders
        if not datasets:
            raise SourceError(f"no source has data; sources: {', '.join(self.sources)}")
        aligned(datasets, folders)
        ref = next(iter(datasets.values()))
        self.input_shape = tuple(ref.x_train.shape[1:])
        self.n_train = len(ref.y_train)
        self.y_train, self.y_test = ref.y_train, ref.y_test
        self.absent = {s: frozenset(e) for s, e in run.absent}
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

        def sgd(params):
            return torch.optim.SGD(list(params), lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay)

        self.branch_opt = [sgd(b.parameters()) for b in model.branches]
        self.trunk_opt = sgd(list(model.junction.parameters()) + list(model.trunk.parameters()))
        with torch.no_grad():
            sample = torch.from_numpy(ref.x_train[:1])
            self.feature_shape = tuple(model.branches[0].eval()(sample).shape[1:])
            model.branches[0].train()

    # --- checkpoints --------------------------------------------------------------------------

    def _save(self, epoch: int, present: tuple[bool, ...]) -> None:
        for i, s in enumerate(self.sources):
            if present[i]:  # an absent board writes nothing; its newest file stays the one it left with
                _atomic_save({"epoch": epoch, "source": s, "state": self.model.branches[i].state_dict(),
                              "optimizer": self.branch_opt[i].state_dict()}, branch_file(self.ckpt_dir, epoch, s))
        _atomic_save({"epoch": epoch, "junction": self.model.junction.state_dict(),
                      "trunk": self.model.trunk.state_dict(), "optimizer": self.trunk_opt.state_dict()},
                     trunk_file(self.ckpt_dir, epoch))

    def _restore_branch(self, i: int, upto: int) -> bool:
        e = newest(self.ckpt_dir, upto, self.sources[i])
        if e is None:
            return False
        state = _load(branch_file(self.ckpt_dir, e, self.sources[i]))
        self.model.branches[i].load_state_dict(state["state"])
        self.branch_opt[i].load_state_dict(state["optimizer"])
        return True

    def _resume(self) -> int:
        e = newest(self.ckpt_dir, None, None)
        if e is None:
            return 0
        state = _load(trunk_file(self.ckpt_dir, e))
        self.model.junction.load_state_dict(state["junction"])
        self.model.trunk.load_state_dict(state["trunk"])
        self.trunk_opt.load_state_dict(state["optimizer"])
        for i in range(len(self.sources)):
            self._restore_branch(i, e)
        return e + 1

    # --- one epoch ----------------------------------------------------------------------------

    def _time(self, ct: _Counters, part: str, t0: float) -> None:
        """CPU seconds of this thread since ``t0``: a part's compute, not inflated by other processes here."""
        ct.busy[part] = ct.busy.get(part, 0.0) + time.thread_time() - t0

    def _step(self, idx: np.ndarray, present: tuple[bool, ...], ct: _Counters) -> None:
        """One batch: branches forward on their own sources, the trunk steps, gradients go back to the branches."""
        y = torch.from_numpy(self.y_train[idx])
        outs: dict[int, torch.Tensor] = {}
        feats = []
        for i, s in enumerate(self.sources):
            if not present[i]:
                feats.append(torch.zeros((len(idx), *self.feature_shape)))
                continue
            t0 = time.thread_time()
            outs[i] = self.model.branches[i](torch.from_numpy(self.datasets[s].x_train[idx]))
            self._time(ct, s, t0)
            feats.append(outs[i].detach().requires_grad_(True))  # what crosses the link to the trunk
            ct.sent[s] = ct.sent.get(s, 0) + 2 * outs[i].numel() * outs[i].element_size()  # out + gradient back
        t0 = time.thread_time()
        out = self.model.trunk(self.model.junction(*feats))
        loss = F.cross_entropy(out, y)
        self.trunk_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.trunk_opt.step()
        self._time(ct, "trunk", t0)
        for i, f_out in outs.items():  # each source board: backward of its branch from the gradient it got
            t0 = time.thread_time()
            self.branch_opt[i].zero_grad(set_to_none=True)
            f_out.backward(feats[i].grad)
            self.branch_opt[i].step()
            self._time(ct, self.sources[i], t0)
        ct.loss_sum += float(loss.detach()) * len(idx)
        ct.correct += int((out.detach().argmax(1) == y).sum())
        ct.count += len(idx)

    @torch.no_grad()
    def evaluate(self, present: tuple[bool, ...], chunk: int = 256) -> float:
        """Test accuracy with the sources that are present (each branch on its own source's test view)."""
        self.model.eval()
        self.model.junction.set_present(present)
        correct, n = 0, len(self.y_test)
        for a in range(0, n, chunk):
            feats = [self.model.branches[i](torch.from_numpy(self.datasets[s].x_test[a:a + chunk])) if present[i]
                     else torch.zeros((min(chunk, n - a), *self.feature_shape)) for i, s in enumerate(self.sources)]
            out = self.model.trunk(self.model.junction(*feats))
            correct += int((out.argmax(1) == torch.from_numpy(self.y_test[a:a + chunk])).sum())
        self.model.train()
        return correct / max(n, 1)

    def run(self, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train ``epochs`` epochs (from the newest checkpoint with ``resume``); one row per epoch."""
        cfg = self.run_cfg
        iters = data.iterations(self.n_train, cfg.batch)
        if cfg.max_iters:
            iters = min(iters, cfg.max_iters)
        start = self._resume() if cfg.resume else 0
        metrics_path = self.run_dir / "metrics.json"
        rows = [r for r in jsonio.read(metrics_path).get("epochs", []) if r["epoch"] <= start] \
            if cfg.resume and metrics_path.exists() else []
        before = present_at(start - 1, self.folders, self.absent, self.sources) if start else \
            tuple(True for _ in self.sources)
        for epoch in range(start, cfg.epochs):
            present = present_at(epoch, self.folders, self.absent, self.sources)
            if not any(present):
                raise SourceError(f"epoch {epoch + 1}: no source has data (folders missing or all --absent); "
                                  f"sources: {', '.join(self.sources)}")
            for i, s in enumerate(self.sources):
                if present[i] and s not in self.datasets:  # first time its folder is there: load it on its board
                    self.datasets[s] = data.load(self.folders[s], self.input_shape, cfg.seed, cfg.samples)
                    aligned(self.datasets, self.folders)
                if present[i] and not before[i]:  # a board that comes back continues from what it kept
                    self._restore_branch(i, epoch - 1)
            self.model.junction.set_present(present)
            order = data.epoch_order(self.n_train, cfg.seed, epoch)
            ct = _Counters()
            t_epoch = time.perf_counter()
            for it in range(iters):
                self._step(order[it * cfg.batch:(it + 1) * cfg.batch], present, ct)
            epoch_s = time.perf_counter() - t_epoch
            test = self.evaluate(present)
            self._save(epoch, present)
            mix = self.model.junction.mixture().detach()
            row = {"epoch": epoch + 1, "present": [s for i, s in enumerate(self.sources) if present[i]],
                   "loss": ct.loss_sum / max(ct.count, 1), "accuracy": ct.correct / max(ct.count, 1),
                   "test_accuracy": test, "junction": {s: round(float(mix[i]), 6) for i, s in enumerate(self.sources)},
                   "bytes_sent": dict(sorted(ct.sent.items())), "busy_s": dict(sorted(ct.busy.items())),
                   "epoch_s": epoch_s, "iterations": iters}
            rows.append(row)
            jsonio.write(metrics_path, {"epochs": rows, "sources": list(self.sources)})
            if on_epoch:
                on_epoch(row)
            before = present
        return rows


def format_epoch(row: dict) -> str:
    mix = " ".join(f"{s}={w:.2f}" for s, w in row["junction"].items())
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  acc {row['accuracy'] * 100:.2f}%  "
            f"test acc {row['test_accuracy'] * 100:.2f}%  sources {','.join(row['present'])}  junction {mix}  "
            f"sent {sum(row['bytes_sent'].values()) / 1e6:.2f} MB  time {row['epoch_s']:.2f} s")


def load_sources(folders: dict[str, str], input_shape: tuple[int, ...], seed: int = 0,
                 samples: int | None = None) -> dict[str, data.Dataset]:
    """Each source's data set from its own folder (any format ``data.load`` reads); missing folders skipped."""
    out = {}
    for s, d in folders.items():
        if Path(d).is_dir():
            out[s] = data.load(d, input_shape, seed, samples)
    return out


def train(model_spec: str, data_args: Sequence[str], run: SourceRun, run_dir: str | Path,
          absent_args: Sequence[str] = (), echo=print) -> list[dict]:
    """``model_spec`` (an ``edgeplan fpl`` file ``path.py:build``) trained on ``--data`` folders in this process."""
    from edgeplan.graph.load import load_model

    loaded = load_model(model_spec)
    sources = fpl_parts(loaded.module, model_spec)
    folders = dict(parse_data(data_args, sources))
    absent = parse_absent(absent_args, sources)
    shape = tuple(loaded.default_input_shape[1:]) if loaded.default_input_shape else None
    if shape is None:
        raise SourceError(f"{model_spec}: the model file sets no INPUT_SHAPE; regenerate it with `edgeplan fpl`")
    datasets = load_sources(folders, shape, run.seed, run.samples)
    import dataclasses

    run = dataclasses.replace(run, absent=tuple((s, tuple(sorted(e))) for s, e in sorted(absent.items())))
    trainer = SourceTrainer(loaded.module, datasets, folders, run, run_dir, model_spec)
    return trainer.run(on_epoch=lambda row: echo(format_epoch(row)))


# --- across boards: the ranks of a plan whose stage 0 holds the branches ---------------------------------


def has_branches(plan) -> bool:
    return bool(plan.stages) and plan.stages[0].kind == "branches"


def configure(model_spec: str, plan, config, data_args: Sequence[str], absent_args: Sequence[str] = ()):
    """``config`` with the branches' data folders (``--data``) and away epochs (``--absent``) resolved.

    Input ``inputK`` of an ``edgeplan fpl`` model reads source ``sources[K]``; a plan without a
    branch stage is refused (train it with --dataset), and so is a branch plan without --data.
    """
    import dataclasses

    if not has_branches(plan):
        return _configure_replicas(plan, config, data_args, absent_args)
    from edgeplan.graph.load import load_model

    srcs = fpl_parts(load_model(model_spec).module, model_spec)
    folders = dict(parse_data(data_args, srcs))
    absent = parse_absent(absent_args, srcs)
    rows = []
    for r in plan.stages[0].replicas:
        k = int(r.input[5:]) if r.input.startswith("input") and r.input[5:].isdigit() else -1
        if not 0 <= k < len(srcs):
            raise SourceError(f"branch input {r.input!r} of the plan is not one of the model's inputs "
                              f"input0..input{len(srcs) - 1}; re-plan the `edgeplan fpl` model")
        folder = folders.get(srcs[k], "")
        rows.append((r.input, srcs[k], str(Path(folder).resolve()) if folder else ""))
    return dataclasses.replace(config, sources=tuple(rows),
                               absent=tuple((s, tuple(sorted(e))) for s, e in sorted(absent.items())))


def _configure_replicas(plan, config, data_args: Sequence[str], absent_args: Sequence[str]):
    """Data parallel over source boards (distributed SGD / federated averaging across sources, issue 16).

    ``--data BOARD=DIR`` per replica of a one-stage plan: each replica reads its own board's view, all
    replicas take the SAME sample indices every step (aligned views: sample i is one event seen by each
    board), so a step averages the boards' mean gradients (sync) or their weights (local-sgd).
    """
    import dataclasses

    if absent_args:
        raise SourceError("--absent applies to plans with parallel input branches (an `edgeplan fpl` model planned "
                          "with --pin inputK=BOARD); drop it for a data-parallel plan")
    if not data_args:
        return config
    boards = [r.device for r in plan.stages[0].replicas]
    if len(plan.stages) != 1 or plan.microbatches != 1:
        raise SourceError(f"--data BOARD=DIR on a plan without input branches needs a one-stage data-parallel plan "
                          f"with --microbatches 1 (this one: {len(plan.stages)} stages, {plan.microbatches} "
                          "micro-batches); re-plan, or use --dataset")
    if len(set(boards)) != len(boards):
        raise SourceError(f"--data BOARD=DIR: the plan has several replicas on one board ({', '.join(boards)}); "
                          "a board's view feeds one replica — re-plan with one replica per board")
    for v in data_args:
        if v.partition("=")[0] not in boards:
            raise SourceError(f"--data {v!r}: give BOARD=DIR for each replica board of this data-parallel plan "
                              f"({', '.join(boards)}), or train it on one data set with --dataset")
    folders = dict(parse_data(data_args, boards))
    missing = [b for b in boards if b not in folders]
    if missing:
        raise SourceError(f"--data: every replica needs its board's folder; missing {', '.join(missing)} "
                          f"(replicas: {', '.join(boards)})")
    rows = tuple(("", b, str(Path(folders[b]).resolve())) for b in boards)
    return dataclasses.replace(config, sources=rows)


def engine_class(job):
    """The engine a rank runs: ``SourceEngine`` for a plan with parallel input branches, ``ReplicaDataEngine``
    for a data-parallel plan given a folder per replica (``--data BOARD=DIR``), else ``Engine``."""
    from edgeplan.planner.plan import Plan
    from edgeplan.training.engine import Engine

    if has_branches(Plan.from_json(job.plan)):
        return _source_engine()
    return _replica_data_engine() if job.config.sources else Engine


def _replica_data_engine():
    from edgeplan.training.engine import Engine

    class ReplicaDataEngine(Engine):
        """A replica of a one-stage data-parallel plan that trains on its own board's view.

        Each replica runs its own ``samples`` per step on the same sample indices as the others
        (its view of them), so the run is the in-process distributed SGD of the FPL study:
        the sum all-reduce of per-replica mean gradients is divided by the group size.
        Evaluation: every replica scores the whole test split on its own view (mean over views).
        """

        def __init__(self, job, rank):
            super().__init__(job, rank)
            self.folder = {b: f for _, b, f in self.cfg.sources}[self.me.device]
            self.B = self.m = self.me.hi - self.me.lo  # this replica's own samples per step

        def _range(self, r, size: int) -> tuple[int, int]:
            return 0, min(self.m, size)

        def _own_data(self, built):
            ds = data.load(self.folder, tuple(built.input_shape), self.cfg.seed, self.cfg.samples)
            print(f"{self.me.device}: {ds.description}", flush=True)
            return ds

        def _joined(self) -> None:
            """Every view must hold the same samples (same count, same labels), or the steps would differ."""
            import torch.distributed as dist

            y = np.concatenate([self.dataset.y_train, self.dataset.y_test]).astype(np.int64)
            mine = torch.tensor([len(self.dataset.y_train), len(y), int(np.sum(y * np.arange(1, len(y) + 1)))],
                                dtype=torch.int64)
            lo, hi = mine.clone(), mine.clone()
            self.comm.all_reduce(lo, None, self.ranks, "checking the views are aligned", op=dist.ReduceOp.MIN)
            self.comm.all_reduce(hi, None, self.ranks, "checking the views are aligned", op=dist.ReduceOp.MAX)
            if not torch.equal(lo, hi):
                raise SourceError(f"{self.me.label}: the views in the --data folders are not aligned (sample counts "
                                  f"or labels differ; {self.folder}: {int(mine[0])} training samples); give every "
                                  "board a view of the same samples")

        def _all_reduce_grads(self) -> None:
            super()._all_reduce_grads()
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(len(self.group_members))

    return ReplicaDataEngine


def _source_engine():
    from edgeplan.training.engine import Engine

    class SourceEngine(Engine):
        """A rank of a branch plan: stage 0 ranks each run one source's branch on that board's own data.

        The first trunk stage gathers every present branch's features by name (zeros for an
        absent one, whose junction weight is masked) and sends each branch its own gradients;
        labels come once from a source board (only labels: inputs never leave their board).
        At each epoch start the ranks agree on who is present (all-reduce of each branch's flag).
        """

        def __init__(self, job, rank):
            super().__init__(job, rank)
            self.branch = self.me.stage == 0
            if self.branch:
                self.group_members = (self.me,)  # different weights per branch: nothing to average
            by_input = {inp: (src, folder) for inp, src, folder in self.cfg.sources}
            self.branch_ranks = routing_stage(self.ranks, 0)
            self.source_of = {r.rank: by_input.get(r.input, (r.input, ""))[0] for r in self.branch_ranks}
            self.folder = by_input.get(self.me.input, ("", ""))[1] if self.branch else ""
            self.absent = {s: frozenset(e) for s, e in self.cfg.absent}
            self.present = tuple(True for _ in self.branch_ranks)

        # --- set-up ---------------------------------------------------------------------------

        def _stage_module(self, built):
            from edgeplan.training import stages

            graph = built.traced.graph
            self.branch_out = stages.branch_modules(built.traced, self.plan)
            self.trunk_inputs = graph.live_at(self.plan.stages[0].stop)
            self.shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in graph.layers}
            if self.branch:
                return self.branch_out[self.me.replica][0], 1
            return super()._stage_module(built)

        def _here(self, epoch: int) -> bool:
            return bool(self.folder) and Path(self.folder).is_dir() and epoch not in self.absent.get(
                self.source_of[self.me.rank], ())

        def _own_data(self, built):
            shape = tuple(built.input_shape)
            self._shape = shape
            if self.branch and self.folder and Path(self.folder).is_dir():
                ds = data.load(self.folder, shape, self.cfg.seed, self.cfg.samples)
                print(f"{self.source_of[self.me.rank]} ({self.me.device}): {ds.description}", flush=True)
                return ds
            return data.Dataset("labels", np.zeros((0, 0), np.float32), np.zeros(0, np.int64),
                                np.zeros((0, 0), np.float32), np.zeros(0, np.int64), 0)

        def _joined(self) -> None:
            """Labels from the first source board that has data, to every rank (the trunk needs them)."""
            import torch.distributed as dist

            has = self.branch and len(self.dataset.y_train) > 0
            src = torch.tensor([self.me.rank if has else len(self.ranks)], dtype=torch.int64)
            self.comm.all_reduce(src, None, self.ranks, "finding a source board with data", op=dist.ReduceOp.MIN)
            src = int(src.item())
            if src == len(self.ranks):
                raise SourceError(f"{self.me.label}: no source board has data; give --data SOURCE=DIR for at "
                                  f"least one of {', '.join(self.source_of.values())}")
            sizes = torch.tensor([len(self.dataset.y_train), len(self.dataset.y_test)], dtype=torch.int64)
            self.comm.broadcast(sizes, src, None, self.ranks, "sharing the number of samples")
            n_tr, n_te = (int(v) for v in sizes)
            labels = torch.from_numpy(np.concatenate([self.dataset.y_train, self.dataset.y_test])) \
                if self.me.rank == src else torch.zeros(n_tr + n_te, dtype=torch.int64)
            self.comm.broadcast(labels, src, None, self.ranks, "sharing the labels")
            y = labels.numpy()
            if has and not np.array_equal(y, np.concatenate([self.dataset.y_train, self.dataset.y_test])):
                raise SourceError(f"{self.me.label}: the labels in {self.folder} differ from those of "
                                  f"{self.source_of[src]}; the sources must be aligned views of the same samples")
            if not has:  # trunk ranks and sources without data: the labels, and sample counts for the order
                self.dataset = data.Dataset("labels", np.zeros((n_tr, 0), np.float32), y[:n_tr].copy(),
                                            np.zeros((n_te, 0), np.float32), y[n_tr:].copy(), 0)

        def _begin_epoch(self, epoch: int) -> None:
            """Agree on who is present; the junction's holder masks the absent; a joining source loads its data."""
            import torch.distributed as dist

            here = self.branch and self._here(epoch)
            if here and self.dataset.x_train.shape[1:] == (0,):
                self.dataset = data.load(self.folder, self._shape, self.cfg.seed, self.cfg.samples)
            flags = torch.zeros(len(self.branch_ranks), dtype=torch.int64)
            if here:
                flags[self.me.replica] = 1
            self.comm.all_reduce(flags, None, self.ranks, f"agreeing on the sources of epoch {epoch + 1}",
                                 op=dist.ReduceOp.SUM)
            self.present = tuple(bool(f) for f in flags.tolist())
            if not any(self.present):
                raise SourceError(f"epoch {epoch + 1}: no source board has data (folders missing or --absent); "
                                  f"sources: {', '.join(self.source_of.values())}")
            for name, buf in self.module.named_parameters():
                if name.endswith("junction.present"):
                    order = [int(r.input[5:]) for r in self.branch_ranks]
                    mask = torch.zeros_like(buf)
                    for j, k in enumerate(order):
                        mask[k] = float(self.present[j])
                    with torch.no_grad():
                        buf.copy_(mask)
                    away = [self.source_of[r.rank] for r, p in zip(self.branch_ranks, self.present, strict=True)
                            if not p]
                    print(f"epoch {epoch + 1}: sources "
                          + ", ".join(self.source_of[r.rank] for r, p in zip(self.branch_ranks, self.present,
                                                                             strict=True) if p)
                          + (f" ({', '.join(away)} away: junction weight masked)" if away else ""), flush=True)

        # --- the branch / trunk boundary -------------------------------------------------------------

        @property
        def _idle(self) -> bool:
            return self.branch and not self.present[self.me.replica]

        def _iteration(self, order, it, ep) -> None:
            if not self._idle:  # an absent source's branch neither computes nor steps
                super()._iteration(order, it, ep)

        def _evaluate(self):
            return (0.0, 0, 0) if self._idle else super()._evaluate()

        def _gather(self, peers, kind: str, k: int, size: int):
            if self.me.stage != 1 or kind == "B":
                return super()._gather(peers, kind, k, size)
            lo, hi = self._range(self.me, size)
            if hi == lo:
                return []
            got: dict[str, torch.Tensor] = {}
            for j, p in enumerate(self.branch_ranks):
                names = self.branch_out[j][1]
                if self.present[j]:
                    got.update(zip(names, self.comm.recv(p, kind, k), strict=True))
                else:
                    got.update({n: torch.zeros((hi - lo, *self.shapes[n])) for n in names})
            return [got[n].to(self.device) for n in self.trunk_inputs]

        def _scatter(self, tensors, peers, kind: str, k: int, size: int) -> None:
            if self.me.stage != 1 or kind != "B":
                return super()._scatter(tensors, peers, kind, k, size)
            by_name = dict(zip(self.trunk_inputs, tensors, strict=True))
            for j, p in enumerate(self.branch_ranks):
                if self.present[j]:
                    self.comm.send([by_name[n] for n in self.branch_out[j][1]], p, kind, k)

    return SourceEngine


def routing_stage(ranks, stage: int):
    from edgeplan.training import routing

    return routing.stage_ranks(ranks, stage)
