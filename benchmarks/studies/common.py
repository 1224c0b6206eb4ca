"""What every study shares: data subsets, cluster views, plans, runs inside `edgeplan emulate`, reports.

A study runs the real pipeline for each configuration it compares: a plan
(``plan_training``: the planner's choice or one of its baselines, on a cluster
file restricted to the boards the configuration may use), `edgeplan compile`,
then `edgeplan train` with every rank inside an emulated board (``Bed``). What
comes back is labelled by how it was obtained, because the three kinds of
figure mean different things:

- ``MEASURED``: timed inside the emulation on this machine (dilated time);
- ``SCALED``: a measured time multiplied by the emulation's dilation, i.e. the
  real boards' time if the emulation's speed ratios hold;
- ``MODELLED``: computed, not timed (energy = the profiles' idle/busy power x the
  measured busy time of each board, scaled like time; link energy per byte).

Without root (no network namespaces) a ``Bed`` runs the ranks as local
processes instead and says so (``LOCAL``): no dilation, no shaped links.

Outputs (``write_outputs``): NAME.json (every figure with its label),
NAME.txt (the printed table), NAME.png and NAME.svg (matplotlib).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "examples" / "clusters"

MEASURED = "measured in emulation"
SCALED = "scaled to the real boards (measured x dilation)"
MODELLED = "modelled (profiles' power x measured busy time)"
LOCAL = "measured as local processes on this machine (not emulated)"

TRAIN_TIMEOUT_S = 300.0  # slow emulated boards take long to trace and build their stages


class StudyError(RuntimeError):
    """A study step failed; the message names the configuration and the log to read."""


def echo_default(line: str) -> None:
    print(line, flush=True)


# --- data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """A fixed subset of a data set, written as train_x/train_y/test_x/test_y.npy for `edgeplan train`."""

    folder: Path
    source: str  # what was loaded (the data set's own name)
    train: int
    test: int
    input_shape: tuple[int, ...]  # per sample (C, H, W)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one stored sample: uint8 pixels + a label byte (a CIFAR-10 binary record for 3x32x32)."""
        return int(np.prod(self.input_shape)) + 1

    @property
    def train_bytes(self) -> int:
        return self.train * self.sample_bytes

    def describe(self) -> str:
        note = " (scikit-learn digits fitted to the model input; no data set directory given)" \
            if self.source == "digits" else ""
        return f"{self.source}{note}: {self.train} training + {self.test} test samples per epoch"

    def to_json(self) -> dict:
        return {"source": self.source, "train_samples": self.train, "test_samples": self.test,
                "input_shape": list(self.input_shape), "sample_bytes": self.sample_bytes}


def prepare_data(spec: str, input_shape: Sequence[int], train: int, test: int, out: Path, seed: int = 0) -> Data:
    """Load ``spec`` (anything `edgeplan train --dataset` takes) fitted to ``input_shape`` and keep a subset.

    The subset is the first ``train``/``test`` samples of a seeded permutation, the
    same for every configuration of a study, so accuracies compare like with like.
    """
    from edgeplan.training import data

    shape = tuple(int(d) for d in input_shape)
    ds = data.load(spec, shape, seed)
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(ds.x_train))[:train]
    te = rng.permutation(len(ds.x_test))[:test]
    if len(tr) < train or len(te) < test:
        raise StudyError(f"data set {spec!r} has {len(ds.x_train)} training and {len(ds.x_test)} test samples; "
                         f"the study asked for {train} and {test}: lower --train-samples/--test-samples")
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train_x", ds.x_train[tr]), ("train_y", ds.y_train[tr]),
                      ("test_x", ds.x_test[te]), ("test_y", ds.y_test[te])):
        np.save(out / f"{name}.npy", np.ascontiguousarray(arr))
    return Data(out, ds.name, len(tr), len(te), shape)


def model_input_shape(model: str) -> tuple[int, ...]:
    """Per-sample input shape of a zoo model (C, H, W)."""
    from edgeplan.graph.load import load_model

    return tuple(int(d) for d in load_model(model).default_input_shape[1:])


# --- clusters ------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def _write_yaml(path: Path, doc: dict, header: str) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return path


def sub_cluster(path: Path, devices: Sequence[str], out: Path) -> Path:
    """The cluster file ``path`` restricted to ``devices`` (links between them kept), written to ``out``."""
    doc = _read_yaml(path)
    names = [d["name"] for d in doc["devices"]]
    unknown = [d for d in devices if d not in names]
    if unknown:
        raise StudyError(f"{path}: no device {', '.join(unknown)}; devices: {', '.join(names)}")
    keep = set(devices)
    doc = dict(doc)
    doc["devices"] = [d for d in doc["devices"] if d["name"] in keep]
    net = dict(doc.get("network", {}))
    if "links" in net:
        net["links"] = [lk for lk in net["links"] if set(lk["between"]) <= keep]
    doc["network"] = net
    doc["name"] = f"{doc['name']}.{out.stem}"
    return _write_yaml(out, doc, f"# {path.name} restricted to {', '.join(devices)} (written by a study)\n")


def training_view(path: Path, out: Path) -> Path:
    """``path`` without the units torch cannot train on (NPU, Mali): what an emulated board should be.

    The emulator sizes each board's CPU quota by its fastest unit; a training rank
    runs on the CPU (or CUDA) unit, so the untrainable units are removed first.
    """
    from edgeplan.profiles.load import load_cluster
    from edgeplan.training.launch import TRAINING_TARGETS

    cluster = load_cluster(path)
    doc = _read_yaml(path)
    for d in doc["devices"]:
        drop = [u.name for u in cluster.device(d["name"]).units if u.target not in TRAINING_TARGETS]
        if drop:
            over = dict(d.get("overrides") or {})
            units = dict(over.get("units") or {})
            units.update({u: None for u in drop})
            over["units"] = units
            d["overrides"] = over
    doc["name"] = f"{doc['name']}-training"
    return _write_yaml(out, doc, f"# {path.name} without units that cannot train (written by a study)\n")


def equal_view(path: Path, out: Path) -> Path:
    """``path`` with every device given the first device's profile and overrides (names, addresses kept)."""
    doc = _read_yaml(path)
    first = doc["devices"][0]
    for d in doc["devices"]:
        d["profile"] = first["profile"]
        d.pop("overrides", None)
        if first.get("overrides"):
            d["overrides"] = first["overrides"]
    doc["name"] = f"{doc['name']}-equal"
    return _write_yaml(out, doc, f"# {path.name} with every board as {first['name']} (written by a study)\n")


def device_names(path: Path) -> list[str]:
    return [d["name"] for d in _read_yaml(path)["devices"]]


# --- plans ---------------------------------------------------------------------------------------------

CHOICES = ("planner", "best-single-device", "data-parallel-all", "uniform-split", "param-balanced")


def plan_training(model: str, cluster_path: Path, *, batch: int, microbatches: int, choice: str = "planner",
                  schedule: str = "1f1b"):
    """A --mode training plan of ``model`` on ``cluster_path``: the planner's choice or one of its baselines.

    Baselines are priced by the same cost model as the plan (planner.baselines), so
    their predictions compare like for like; the plan records its sources, so
    `edgeplan compile plan.json` needs nothing else.
    """
    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan, plan_of
    from edgeplan.planner.baselines import baselines
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.cost import build_cost_table
    from edgeplan.profiles.load import load_cluster

    if choice not in CHOICES:
        raise StudyError(f"plan choice {choice!r} is not one of {', '.join(CHOICES)}")
    cluster = load_cluster(cluster_path)
    graph = build(model).graph
    obj = Objective(mode="training", objective="time", batch=batch, microbatches=microbatches, schedule=schedule)
    if choice == "planner":
        plan = make_plan(graph, cluster, obj)
    else:
        costs = build_cost_table(graph, cluster)
        found = {name: (lay, ev, why) for name, lay, ev, why in baselines(costs, obj)}
        lay, ev, why = found[choice]
        if lay is None or why:
            raise StudyError(f"{cluster_path}: baseline {choice} of {model} is not feasible: {why}")
        plan = plan_of(costs, lay, obj, ev, model=graph.name, graph_sha256=graph.digest(), cluster=cluster.name,
                       cluster_sha256=cluster.digest(), notes=(f"baseline {choice} (study)",))
    return record_sources(plan, model_ref=model, input_shape=None, cluster_path=str(cluster_path), cluster=cluster)


def layout_text(plan) -> str:
    """Stages as `device*samples+device*samples | ...` (samples per micro-batch), with each stage's
    layer range when there is more than one stage."""
    many = len(plan.stages) > 1
    return " | ".join((f"[{s.start}:{s.stop}) " if many else "") + "+".join(f"{r.device}*{r.samples}"
                                                                          for r in s.replicas)
                      for s in plan.stages)


def same_layout(a, b) -> bool:
    """Whether two plans run the same stages on the same units with the same sample shares."""
    def key(p):
        return tuple((s.start, s.stop, tuple((r.device, r.unit, r.samples) for r in s.replicas)) for s in p.stages)

    return key(a) == key(b) and a.batch == b.batch and a.microbatches == b.microbatches


def edgeplan_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeplan.cli", *args]


def compile_plan(plan, out: Path, log: Path) -> Path:
    """Write ``plan`` to OUT/plan.json and run `edgeplan compile` on it into OUT/art."""
    from edgeplan import jsonio

    out.mkdir(parents=True, exist_ok=True)
    plan_file = jsonio.write(out / "plan.json", plan.to_json())
    art = out / "art"
    _check_call(edgeplan_cmd("compile", str(plan_file), "--out", str(art), "--force"), log, f"compile {out.name}")
    return art


def _check_call(argv: list[str], log: Path, what: str, env: dict | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        code = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-6:])
        raise StudyError(f"{what} failed (exit {code}); log {log}:\n{tail}")


# --- running ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run: its epoch rows (metrics.json) and how they were measured."""

    epochs: tuple[dict, ...]
    dilation: float  # 1.0 for local runs
    emulated: bool
    log: str

    @property
    def epoch_s(self) -> float:
        """Mean measured seconds per epoch (this machine's time)."""
        return float(np.mean([e["epoch_s"] for e in self.epochs]))

    @property
    def real_epoch_s(self) -> float:
        return self.epoch_s * self.dilation

    @property
    def energy_j(self) -> float:
        """Mean modelled joules per epoch on the real boards (metrics scale busy time by the dilation)."""
        return float(np.mean([e["energy_j"]["joules"] for e in self.epochs]))

    @property
    def accuracy(self) -> float | None:
        return self.epochs[-1].get("test_accuracy")

    @property
    def predicted_iter_s(self) -> float:
        return float(self.epochs[-1]["predicted_iter_s"])

    @property
    def real_iter_s(self) -> float:
        return float(np.mean([e["board_iter_s"] for e in self.epochs]))


_RECEIVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = int(sys.argv[3]); got = 0
while got < n:
    b = c.recv(1 << 16)
    if not b: break
    got += len(b)
c.sendall(b"k"); c.close()
"""

_SENDER = r"""
import socket, sys, time
n = int(sys.argv[3]); chunk = b"\0" * (1 << 16)
t0 = time.perf_counter(); c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
left = n
while left > 0:
    k = min(left, len(chunk)); c.sendall(chunk[:k]); left -= k
c.recv(1); print(time.perf_counter() - t0)
"""


@dataclass
class Bed:
    """Where a configuration's ranks run: the emulated ``cluster`` (root) or local processes.

    Use as a context manager; several trainings and transfers may run in one bed
    (they share its dilation). ``emulate=None`` picks emulation when it can run.
    ``equal_boards``: every emulated board gets the first board's speed (one CPU quota), for runs whose
    checks do not depend on the boards' relative speeds (bytes on the wire): a 0.03-core camera next to a
    one-core trunk takes minutes to start torch; measured times are then not the real boards'.
    """

    cluster: Path
    host_gflops: float | None = None
    emulate: bool | None = None
    echo: Callable[[str], None] = echo_default
    equal_boards: bool = False
    dilation: float = 1.0
    notes: list[str] = field(default_factory=list)
    _state: Path | None = None
    _bed: object = None
    _stack: contextlib.ExitStack | None = None

    def __enter__(self) -> Bed:
        if self.emulate is None:
            self.emulate = emulation_unavailable() is None
        if not self.emulate:
            self.notes.append(f"not emulated: {emulation_unavailable() or 'asked for local processes'}")
            return self
        from edgeplan import jsonio
        from edgeplan.profiles.load import load_cluster
        from edgeplan.testbed import emulate

        self._stack = contextlib.ExitStack()
        try:
            tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeplan-study-bed-")))
            view = training_view(self.cluster, tmp / "training-view.yaml")
            if self.equal_boards:
                view = equal_view(view, view)
            flops = (self.host_gflops or host_gflops()) * 1e9
            bed, shape = self._stack.enter_context(emulate.testbed(load_cluster(view), flops, echo=self.echo))
            self._bed, self.dilation = bed, shape.dilation
            self.notes += list(bed.notes)
            self._state = jsonio.write(tmp / "testbed.json", emulate.state_json(bed, shape))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    @property
    def kind(self) -> str:
        return MEASURED if self.emulate else LOCAL

    def train(self, art: Path, data: Data, epochs: int, run_dir: Path, *, extra: Sequence[str] = (),
              timeout_s: float = TRAIN_TIMEOUT_S) -> Run:
        """`edgeplan train ART` on this bed; the epoch rows from RUN_DIR/metrics.json."""
        from edgeplan import jsonio

        argv = edgeplan_cmd("train", str(art), "--dataset", str(data.folder), "--epochs", str(epochs),
                            "--timeout", str(timeout_s), "--run-dir", str(run_dir), *extra)
        env = dict(os.environ)
        if self.emulate:
            env["EDGEPLAN_TESTBED"] = str(self._state)
        else:
            argv.append("--local")
            env.pop("EDGEPLAN_TESTBED", None)
        shutil.rmtree(run_dir, ignore_errors=True)
        log = run_dir.parent / f"{run_dir.name}.log"
        log.unlink(missing_ok=True)
        _check_call(argv, log, f"training {art}", env=env)
        rows = tuple(jsonio.read(run_dir / "metrics.json")["epochs"])
        if len(rows) != epochs:
            raise StudyError(f"training {art}: {len(rows)} epoch rows in {run_dir / 'metrics.json'}, expected "
                             f"{epochs}; log {log}")
        return Run(rows, self.dilation if self.emulate else 1.0, bool(self.emulate), str(log))

    def transfer(self, src: str, dst: str, nbytes: int, port: int = 29901) -> float | None:
        """Seconds to send ``nbytes`` from board ``src`` to board ``dst`` over the shaped link (this
        machine's time; x dilation for the real boards); None when not emulated."""
        if not self.emulate:
            return None
        a, b = self._bed.board(src), self._bed.board(dst)
        recv = subprocess.Popen(b.launch_prefix() + [sys.executable, "-c", _RECEIVER, b.address, str(port),
                                                     str(nbytes)], stdout=subprocess.PIPE, text=True)
        try:
            if recv.stdout.readline().strip() != "ready":
                raise StudyError(f"transfer {src}->{dst}: the receiver on {dst} did not start")
            out = subprocess.run(a.launch_prefix() + [sys.executable, "-c", _SENDER, b.address, str(port),
                                                      str(nbytes)], capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                raise StudyError(f"transfer {src}->{dst} failed: {out.stderr.strip().splitlines()[-1:]}")
            return float(out.stdout.strip())
        finally:
            try:
                recv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                recv.kill()
                recv.wait()


def run_configs(bed: Bed, plans: dict, data: Data, epochs: int, work: Path,
                echo: Callable[[str], None] = echo_default,
                extra: Sequence[str] = ()) -> tuple[dict[str, Run], dict[str, str]]:
    """Compile and train each configuration's plan on ``bed`` (in ``plans`` order); ``extra``: more
    `edgeplan train` options for every run (e.g. --sync-bn).

    A plan with the same layout as an earlier configuration's is not run again: that
    run stands for both (returned in the second dict, config -> the earlier config).
    """
    runs: dict[str, Run] = {}
    same_as: dict[str, str] = {}
    for cfg, plan in plans.items():
        earlier = next((k for k in runs if same_layout(plans[k], plan)), None)
        if earlier is not None:
            runs[cfg], same_as[cfg] = runs[earlier], earlier
            echo(f"  {cfg}: same plan as {earlier} ({layout_text(plan)}), not run twice")
            continue
        echo(f"  {cfg}: {layout_text(plan)}")
        art = compile_plan(plan, work / cfg, work / f"{cfg}-compile.log")
        runs[cfg] = bed.train(art, data, epochs, work / cfg / "run", extra=extra)
    return runs, same_as


def emulation_unavailable() -> str | None:
    """Why `edgeplan emulate` cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the emulated testbed needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the emulated testbed needs `{tool}` (apt-get install iproute2)"
    return None


_HOST_GFLOPS: list[float] = []


def host_gflops() -> float:
    """This machine's single-core conv GFLOP/s (measured once per process; every bed of a study shares it)."""
    if not _HOST_GFLOPS:
        from edgeplan.testbed import calibrate

        _HOST_GFLOPS.append(calibrate.conv_flops() / 1e9)
    return _HOST_GFLOPS[0]


def modelled_transfer_s(nbytes: int, cluster_path: Path, a: str, b: str) -> float:
    """bytes / link bandwidth + latency from the cluster file (what a transfer costs when not emulated)."""
    from edgeplan.profiles.load import load_cluster

    link = load_cluster(cluster_path).link(a, b)
    return nbytes / link.bandwidth + link.latency_s


def link_energy_j(nbytes: int, cluster_path: Path, a: str, b: str) -> float:
    from edgeplan.profiles.load import load_cluster

    return nbytes * load_cluster(cluster_path).link(a, b).energy_per_byte_j


# --- reporting -------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 3) -> str:
    """A figure for a table cell: ``digits`` significant digits, '-' for none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    from edgeplan.tables import text_table

    return text_table(header, rows, right=right)


def bar_panels(panels: Sequence[tuple[str, str, dict[str, dict[str, float | None]]]], title: str):
    """A figure of grouped bar charts: one panel per (title, y label, {group: {config: value}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (ptitle, ylabel, groups) in zip(axes[0], panels, strict=True):
        configs = list(dict.fromkeys(c for g in groups.values() for c in g))
        width = 0.8 / max(len(configs), 1)
        for k, cfg in enumerate(configs):
            xs = [i + (k - (len(configs) - 1) / 2) * width for i in range(len(groups))]
            ys = [groups[g].get(cfg) for g in groups]
            ax.bar(xs, [y if y is not None else 0.0 for y in ys], width, label=cfg)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_title(ptitle, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def row_cells(r: dict) -> tuple[str, str]:
    """A training study row's layout cell (naming the row whose run it shares) and test-accuracy cell (%)."""
    layout = r["layout"] + (f" (= {r['same_run_as']})" if r["same_run_as"] else "")
    return layout, "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}"


def report_lines(number: int, name: str, doc: dict, speedup: str, header: Sequence[str],
                 body: Sequence[Sequence[str]], finding: str, verdicts: Sequence[tuple[str, str]]) -> list[str]:
    """A training study's printed report: what ran, how each figure was obtained (``speedup``: what the
    speed-up divides), the table, the notes and, per (model, verdict), whether the research ``finding`` held."""
    s, kind = doc["settings"], doc["labels"]["epoch_s"]
    lines = [f"study {number} ({name}): {doc['cluster']}, {doc['data']['description']}, {s['epochs']} epoch(s), "
             f"batch {s['batch']} as {s['microbatches']} micro-batches, BatchNorm statistics "
             f"{'synchronised over replicas (--sync-bn)' if s.get('sync_bn') else 'per replica'}",
             f"times: {kind}" + (f", dilation {doc['dilation']:.3g}" if doc["emulated"] else "")
             + f"; energy: {MODELLED}; accuracy: measured; speed-up = {speedup} s / row s (incl. upload)"]
    lines += table(header, body, right=range(3, len(header)))
    lines += [f"note: {n}" for n in doc["notes"]]
    return lines + [f"research finding ({finding}) for {model}: {v}" for model, v in verdicts]


def per_model(rows: Sequence[dict], key: str, scale: float = 1.0) -> dict[str, dict[str, float | None]]:
    """One bar panel's data: per model, each configuration's ``key`` (x ``scale``; None where it has none)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    return {m: {r["config"]: (None if r[key] is None else r[key] * scale) for r in rows if r["model"] == m}
            for m in models}


def write_outputs(out_dir: Path, name: str, doc: dict, lines: Sequence[str], fig) -> dict[str, Path]:
    """NAME.json, NAME.txt, NAME.png, NAME.svg in ``out_dir``; returns their paths by suffix."""
    from edgeplan import jsonio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": jsonio.write(out_dir / f"{name}.json", doc)}
    paths["txt"] = out_dir / f"{name}.txt"
    paths["txt"].write_text("\n".join(lines) + "\n")
    for ext in ("png", "svg"):
        paths[ext] = out_dir / f"{name}.{ext}"
        fig.savefig(paths[ext], dpi=110 if ext == "png" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


@contextlib.contextmanager
def timed(label: str, echo: Callable[[str], None] = echo_default) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    echo(f"  {label}: {time.perf_counter() - t0:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- command line ------------------------------------------------------------------------------------------


def parser(doc: str, name: str):
    """The options every study takes: --quick, --out, --dataset, --local, --host-gflops."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.studies {name}", description=doc.splitlines()[0],
                                 epilog="\n".join(doc.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subsets and one epoch (minutes), as CI runs it")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default study-out/{name})")
    ap.add_argument("--dataset", default="digits",
                    help="what `edgeplan train --dataset` takes (default digits: scikit-learn's, fitted to the "
                         "model input)")
    ap.add_argument("--local", action="store_true",
                    help="run the ranks as local processes instead of inside `edgeplan emulate` (no root needed; "
                         "no shaped links, no dilation)")
    ap.add_argument("--host-gflops", type=float, default=None,
                    help="this machine's single-core conv GFLOP/s for the emulation's quotas (default: measured)")
    return ap


def out_dir(args, name: str) -> Path:
    return args.out if args.out is not None else Path("study-out") / name


def training_options(ap, configs: Sequence[str], required: str) -> None:
    """The options of the studies that compare training configurations (hybrid, three-tier)."""
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=None)
    ap.add_argument("--configs", default=",".join(configs),
                    help=f"comma-separated configurations to run (at least {required})")
    ap.add_argument("--sync-bn", action="store_true",
                    help="BatchNorm statistics all-reduced over each replica group (`edgeplan train --sync-bn`)")


def overrides(args, *names: str) -> dict:
    """The numeric options the user gave (None means 'the mode's default'), keyed by Settings field."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def finish(args, name: str, run: Callable, report: Callable, settings) -> int:
    """Run a study with its settings, print its table and say which files it wrote."""
    out = out_dir(args, name)
    lines, paths = report(run(settings, out), out)
    print("\n".join(lines))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
