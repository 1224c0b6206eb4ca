"""Training artifacts (``prepare``) and the launcher that starts and watches the ranks (``run``).

Artifacts folder::

    plan.json               the training plan
    training.json           model spec, input shape, rank table, master address, board power
    <device>/start-training.sh   on each board: runs that board's ranks (`edgeplan train .. --device <it>`)

``run`` starts one worker process per rank — all of them with ``local=True``
(TCP store on 127.0.0.1), only the given boards' otherwise, inside the emulated
boards' namespaces when ``EDGEPLAN_TESTBED`` is set — and watches them: the
first rank that dies stops the run, the others are terminated, and the error
names the board and stage that failed (a killed rank is named as the cause
before the ranks that merely lost it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeplan import jsonio
from edgeplan.codegen import manifest
from edgeplan.errors import ArtifactError, PlanError, RuntimeFault
from edgeplan.planner.plan import Plan
from edgeplan.planner.plan import load as load_plan
from edgeplan.training import data, routing
from edgeplan.training.config import SYNC_MODES, Job, TrainConfig

SCHEMA_VERSION = 1
DEFAULT_PORT = 29517
TRAINING_TARGETS = ("x86", "arm-cpu", "cuda")  # units torch can train on; others fall back to the CPU
GRACE_S = 5.0  # after the first failure, how long the others get to report their own view

# The same script on every board: its folder's name is the board's name, its parent the artifacts folder.
START_SCRIPT = """#!/bin/sh
# Runs this board's training ranks; pass `edgeplan train` options after it (e.g. --epochs 2 --resume).
here=$(cd "$(dirname "$0")" && pwd)
exec edgeplan train "$(dirname "$here")" --device "$(basename "$here")" "$@"
"""


def prepare(plan: Plan, model_spec: str, out_dir: str | os.PathLike[str], *,
            input_shape: tuple[int, ...] | None = None, cluster=None, provider: str | None = None,
            port: int = DEFAULT_PORT, sync: str = "sync", force: bool = True) -> Path:
    """Write the training artifacts of ``plan`` to ``out_dir`` (atomically: temp folder, manifest, rename).

    ``cluster`` (profiles.model.Cluster), when given, supplies the boards' addresses and
    power figures (energy estimates); ``provider`` is an optional
    ``package.module:function`` that builds (model, stage modules, inputs per stage);
    ``sync`` the default synchronisation mode (``edgeplan train --sync`` overrides it).
    """
    ranks = routing.rank_table(plan)
    if input_shape is None:  # record the model's input shape so boards and the data loader agree on it
        from edgeplan.training.stages import build_traced

        input_shape = tuple(build_traced(model_spec, None).graph.inputs[0].shape)
    if sync not in SYNC_MODES:
        raise PlanError(f"sync mode {sync!r} is not one of {', '.join(SYNC_MODES)}")
    addresses, power = {}, []
    if cluster is not None:
        for dev in sorted({r.device for r in ranks}):
            d = cluster.device(dev)
            unit = next((u for r in ranks if r.device == dev for u in d.units if u.name == r.unit), d.units[0])
            addresses[dev] = d.address
            power.append([dev, d.idle_power_w, unit.busy_power_w])
    master = ranks[0].device
    predicted = _predictions(plan, model_spec, input_shape, cluster, provider)
    table = {
        "schema_version": SCHEMA_VERSION,
        "model": model_spec,
        "input_shape": list(input_shape),
        "provider": provider,
        "master": {"device": master, "address": addresses.get(master, "127.0.0.1"), "port": port},
        "addresses": addresses,
        "power": power,
        "plan_sha256": plan.digest(),
        "sync": sync,
        "predicted": predicted,
        "ranks": [{"rank": r.rank, "device": r.device, "stage": r.stage, "replica": r.replica, "unit": r.unit,
                   "target": r.target, "lo": r.lo, "hi": r.hi} for r in ranks],
    }
    out = Path(out_dir)
    manifest.check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        jsonio.write(tmp / "plan.json", plan.to_json())
        jsonio.write(tmp / "training.json", table)
        for dev in sorted({r.device for r in ranks}):
            script = tmp / dev / "start-training.sh"
            script.parent.mkdir()
            script.write_text(START_SCRIPT)
            script.chmod(0o755)
        manifest.publish(tmp, out, force, plan.digest(), plan.model)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _predictions(plan: Plan, model_spec: str, input_shape, cluster, provider) -> dict | None:
    """The cost model's figures per stage replica (metrics.predict) when the cluster the plan was made on is
    given; None without it, for a provider-built model, when the model traced now is not the planned one, or
    for a plan with branch stages (their replicas hold different input branches, priced by planner/branches, not
    by the per-replica predictor)."""
    if cluster is None or provider or not plan.graph_sha256 or cluster.digest() != plan.cluster_sha256:
        return None
    if any(st.kind == "branches" for st in plan.stages):
        return None
    from edgeplan.graph.load import build
    from edgeplan.training import metrics

    graph = build(model_spec, tuple(input_shape) if input_shape else None).graph
    if graph.digest() != plan.graph_sha256:
        return None
    return metrics.predict(plan, graph, cluster)


@dataclass(frozen=True)
class Artifacts:
    plan: Plan
    table: dict
    path: Path


def load(artifacts: str | os.PathLike[str]) -> Artifacts:
    path = Path(artifacts)
    for name in ("plan.json", "training.json"):
        if not (path / name).is_file():
            raise ArtifactError(f"{path}: no {name}; build training artifacts with "
                                "`edgeplan compile PLAN --model MODEL --out DIR` from a --mode training plan")
    table = jsonio.read(path / "training.json")
    if table.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path / 'training.json'}: schema_version {table.get('schema_version')!r} is not "
                            f"{SCHEMA_VERSION}; recompile with this edgeplan")
    plan = load_plan(str(path / "plan.json"))
    if plan.digest() != table["plan_sha256"]:
        raise ArtifactError(f"{path / 'plan.json'}: changed since compile (sha256 differs); recompile")
    return Artifacts(plan, table, path)


@dataclass(frozen=True)
class TrainResult:
    epochs: tuple[dict, ...]  # one row per epoch (see metrics.format_epoch)
    run_dir: Path
    state_dict: Path | None  # assembled full-model state_dict (local runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run(artifacts: str | os.PathLike[str], config: TrainConfig, *, local: bool = True,
        devices: tuple[str, ...] = (), run_dir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None, echo=print) -> TrainResult:
    """Start the ranks (all if ``local``, else those of ``devices``), watch them, assemble the model at the end.

    ``config.sync`` None means the mode written at compile time (training.json).
    """
    art = load(artifacts)
    if config.sync is None:
        config = dataclasses.replace(config, sync=art.table.get("sync", "sync"))
    config.check()
    ranks = routing.rank_table(art.plan, source=str(art.path / "plan.json"))
    if art.plan.stages[0].kind == "branches" and not config.sources:
        raise RuntimeFault(f"{art.path}: the plan trains parallel input branches, one per data source; give each "
                           "source's folder with --data SOURCE=DIR")
    run_path = Path(run_dir) if run_dir else art.path / "run"
    run_path.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_path / "errors", ignore_errors=True)

    from edgeplan.testbed.emulate import read_state  # the one reader of the state file (one-line errors)

    testbed = None if local else read_state()
    if local:
        mine = ranks
        master_addr, port = "127.0.0.1", _free_port()
    else:
        known = {r.device for r in ranks}
        chosen = set(devices) if devices else (known if testbed else set())
        if not chosen:
            raise RuntimeFault("say which board this is (--device NAME) or run all ranks here with --local")
        unknown = sorted(chosen - known)
        if unknown:
            raise RuntimeFault(f"device(s) {', '.join(unknown)} have no rank in this plan; "
                               f"boards in the plan: {', '.join(sorted(known))}")
        mine = tuple(r for r in ranks if r.device in chosen)
        master = art.table["master"]
        master_addr, port = master["address"], int(master["port"])
        if testbed:
            master_addr = testbed["boards"][master["device"]]["address"]
    cache = None
    if local and not config.sources:  # load (and check) the data once here instead of once per rank
        shape = tuple(art.table["input_shape"][1:])
        loaded = data.load(config.dataset, shape, config.seed, config.samples)
        echo(f"data: {loaded.description}")
        cache = str(data.save(loaded, run_path / "data.npz").resolve())
    job = Job(plan=art.plan.to_json(), model=art.table["model"],
              input_shape=tuple(art.table["input_shape"]),
              provider=art.table.get("provider"), config=config, master_addr=master_addr, master_port=port,
              run_dir=str(run_path.resolve()), power=tuple(tuple(p) for p in art.table.get("power", ())),
              dilation=float(testbed["dilation"]) if testbed else 1.0, local=local, data_cache=cache,
              addresses=tuple((dev, b["address"]) for dev, b in sorted(testbed["boards"].items())) if testbed
              else tuple(sorted(art.table.get("addresses", {}).items())))
    job_file = jsonio.write(run_path / "job.json", job.to_json())

    cpu_fallback = sorted({f"{r.device}:{r.unit}" for r in mine if r.target not in TRAINING_TARGETS})
    if cpu_fallback:
        echo(f"note: {', '.join(cpu_fallback)} cannot train (no backward on that unit); those ranks train in "
             "torch on the board's CPU, so measured times differ from the plan's for them")
    procs: dict[int, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    child_env = {**os.environ, **(env or {})}
    try:
        for r in mine:
            prefix = list(testbed["boards"][r.device]["prefix"]) if testbed else []
            argv = prefix + [sys.executable, "-m", "edgeplan.training.worker", str(job_file), str(r.rank)]
            procs[r.rank] = subprocess.Popen(argv, env=child_env, cwd=os.getcwd(), stdout=subprocess.PIPE,
                                             text=True, bufsize=1)
            pumps.append(threading.Thread(target=_pump, args=(procs[r.rank].stdout, echo), daemon=True))
            pumps[-1].start()
        failure = _watch(procs, ranks, run_path)
    finally:
        _stop(procs)
        for t in pumps:
            t.join(timeout=2.0)
    if failure:
        raise RuntimeFault(failure)
    metrics = jsonio.read(run_path / "metrics.json") if (run_path / "metrics.json").exists() else {"epochs": []}
    state_path = None
    if len(mine) == len(ranks) and metrics["epochs"]:
        state_path = assemble(art, run_path, config.epochs - 1)
    from edgeplan.training.metrics import board_seconds, with_predictions

    cores = {dev: float(b["cores"]) for dev, b in testbed["boards"].items()} if testbed else {}
    dilation = float(testbed["dilation"]) if testbed else 1.0
    rows = tuple(with_predictions(board_seconds(row, cores, dilation), art.table.get("predicted"))
                 for row in metrics["epochs"])
    return TrainResult(rows, run_path, state_path)


REPORT_KIND = "edgeplan-train-report"


def report(art: Artifacts, result: TrainResult, config: TrainConfig) -> dict:
    """The run's report (``edgeplan train --report``): the last epoch's figures per stage replica, measured
    beside the plan's predictions, with the plan and the hashes `edgeplan calibrate` checks."""
    if not result.epochs:
        raise RuntimeFault(f"{art.path}: the run finished no epoch; nothing to report")
    row = result.epochs[-1]
    return {"kind": REPORT_KIND, "schema_version": 1, "model": art.plan.model, "plan_sha256": art.plan.digest(),
            "cluster_sha256": art.plan.cluster_sha256, "plan": art.plan.to_json(),
            "predicted_cluster_sha256": (art.table.get("predicted") or {}).get("cluster_sha256"),
            "iterations": row["iterations"], "microbatches": art.plan.microbatches, "batch": art.plan.batch,
            "schedule": config.schedule or art.plan.schedule, "sync": config.sync or art.table.get("sync"),
            "dilation": row["dilation"], "measured_iter_s": row["board_iter_s"],
            "predicted_iter_s": row.get("predicted_iter_s_cluster") or row["predicted_iter_s"],
            "stages": row.get("figures") or [], "epochs": list(result.epochs)}


def _pump(stream, echo) -> None:
    """Forward a rank's stdout (rank 0's epoch lines) to ``echo`` line by line."""
    for line in stream:
        echo(line.rstrip("\n"))
    stream.close()


def _watch(procs: dict[int, subprocess.Popen], ranks, run_path: Path) -> str | None:
    """Wait for all ranks; on the first failure give the others GRACE_S to report, then name the cause."""
    failed_at = None
    while True:
        codes = {rank: p.poll() for rank, p in procs.items()}
        bad = {rank: c for rank, c in codes.items() if c not in (None, 0)}
        if bad and failed_at is None:
            failed_at = time.monotonic()
        if all(c is not None for c in codes.values()):
            break
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            break
        time.sleep(0.1)
    codes = {rank: p.poll() for rank, p in procs.items()}
    bad = {rank: c for rank, c in codes.items() if c not in (None, 0)}
    if not bad:
        return None
    # The cause: a rank killed by a signal, else one that failed by itself; the others only lost it.
    why = {}
    for rank in bad:
        err = run_path / "errors" / f"rank-{rank}.txt"
        if bad[rank] < 0 or not err.exists():
            why[rank] = f"{ranks[rank].label} {_describe_exit(bad[rank])}"
        else:
            why[rank] = err.read_text().strip()
    secondary = ("lost contact", "no progress for")
    order = sorted(bad, key=lambda rank: (bad[rank] >= 0, any(s in why[rank] for s in secondary), rank))
    lines = [why[rank] for rank in order]
    first = ranks[order[0]]
    cause = f"training failed on {first.label}: {lines[0]}"
    others = list(dict.fromkeys(line for line in lines[1:] if line != lines[0]))
    still = [ranks[rank].label for rank, c in codes.items() if c is None]
    if others:
        cause += "; then: " + " | ".join(others[:4])
    if still:
        cause += f"; stopped {len(still)} remaining rank(s)"
    return cause + ". Fix the board and resume with `edgeplan train ... --resume` (last completed epoch's checkpoint)"


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    live = [p for p in procs.values() if p.poll() is None]
    for p in live:
        p.terminate()
    deadline = time.monotonic() + 3.0
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def assemble(art: Artifacts, run_path: Path, epoch: int) -> Path:
    """The full model's state_dict from the stages' checkpoints of ``epoch`` (original module keys)."""
    from edgeplan.training import checkpoint, stages

    built = stages.build(art.table["model"], tuple(art.table["input_shape"]), art.plan,
                         art.table.get("provider"))
    reference = built.full.state_dict()
    ranks = routing.rank_table(art.plan)
    state = checkpoint.assemble(run_path / "checkpoints", epoch, ranks, reference)
    return checkpoint.save_state_dict(state, run_path / checkpoint.STATE_DICT_FILE)
