"""Plan + model -> one artifact folder per board (the ``edgeplan compile`` phase).

Steps: trace the model and check it is the one the plan was made for; split it
at the plan's cuts; run the stages in torch on seeded random input at each
replica's batch to get example inputs and shapes; compile each replica's stage
for its target; write stage.json files, launchers, README.txt, a copy of the
board runtime; write manifest.json last.

Layout::

    OUT/manifest.json  plan.json  head.json  compile-report.json
    OUT/<device>/start.sh  edgeplan-stage.service  README.txt  edgeplan_runtime/*.py
    OUT/<device>/stage<i>/stage.json  <module files>

``head.json`` tells the head (``edgeplan run``) where it listens and which replicas
of stage 0 it feeds; ``compile-report.json`` keeps each compile's chosen backend and
the target's notes (measured candidates), for calibrating profiles.

Ports: the head listens on ``HEAD_PORT`` (7700); the worker of the k-th
(stage, replica) pair in plan order listens on ``HEAD_PORT + 1 + k``, so ports
are unique per (device, stage) even when every worker shares one host (compiling
without a cluster puts them all on 127.0.0.1). With a cluster, peers connect to
each device's ``address`` and each worker binds that address, never a wildcard
unless asked (``bind_any``: useful when a board's hostname resolves to a
loopback address on the board itself; prefer IP addresses in the cluster file).

Everything is written into a temporary folder next to ``OUT`` and renamed into
place at the end, so an interrupted compile never leaves a folder that looks complete.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeplan import jsonio
from edgeplan.codegen import manifest
from edgeplan.codegen.render import render
from edgeplan.errors import CompileError, EdgeplanError, PlanError
from edgeplan.planner import plan as plan_mod
from edgeplan.planner.plan import Plan
from edgeplan.profiles.model import Cluster, HeadHost
from edgeplan.runtime.spec import Peer, StageSpec, Tensor

HEAD_PORT = 7700
HEAD = "head"
LOCALHOST = "127.0.0.1"
INSTALL_DIR = "/opt/edgeplan"  # where the systemd unit expects a board's folder
RUNTIME_DIR = "edgeplan_runtime"
# what edgeplan_runtime/ itself needs on every board (README.txt lists it first): numpy (any from 1.16, but not
# 1.19.5, whose aarch64 wheel crashes on Jetsons; Python 3.6 resolves to 1.19.4) and, on Python 3.6, the
# dataclasses backport (0.8 is the one for 3.6)
BASE_REQUIREMENTS = ("python3 -m pip install 'numpy>=1.16,!=1.19.5,<3' 'dataclasses; python_version < \"3.7\"'",)
BUILD_SCRIPT = "build-tvm-runtime.sh"  # per board whose GPU stages run on TVM (cuda, mali): builds libtvm_runtime
BOARD_PYTHON = (3, 6)  # oldest Python the board files run on: JetPack 4.6's (README.txt; targets warn below it)
RUNTIME_SRC = Path(__file__).resolve().parent.parent / "runtime"  # copied to every board as RUNTIME_DIR
SEED = 0
CALIBRATION_SAMPLES = 8  # seeded random model inputs run through earlier stages for int8 NPU stages


@dataclass(frozen=True)
class CompileEvent:
    """Progress of one step. ``job`` names a compile as ``stage <i> <target> <device>``; other
    steps (trace, split, shapes, write) have ``job`` equal to the step name.
    ``status``: queued | running | done | reused."""

    job: str
    status: str
    seconds: float = 0.0


Progress = Callable[[CompileEvent], None]


@dataclass(frozen=True)
class Slot:
    """Where one replica of one stage lives on the network and which samples it owns."""

    stage: int
    device: str
    host: str
    port: int
    listen: str
    lo: int
    hi: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def peer(self) -> Peer:
        return Peer(device=self.device, stage=self.stage, address=self.address, lo=self.lo, hi=self.hi)


def network_host(address: str) -> str:
    """The host of a cluster address ``[user@]host[:ssh-port]`` (the SSH parts are for deploy)."""
    host = address.rsplit("@", 1)[-1]
    if host.startswith("["):  # [ipv6]:port
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def microbatch_size(plan: Plan) -> int:
    if plan.microbatches <= 0 or plan.batch % plan.microbatches:
        raise PlanError(
            f"plan: batch {plan.batch} is not a multiple of microbatches {plan.microbatches}; re-run `edgeplan plan`"
        )
    return plan.batch // plan.microbatches


def assign_slots(plan: Plan, cluster: Cluster | None,
                 bind_any: bool = False) -> tuple[Slot, tuple[tuple[Slot, ...], ...]]:
    """The head's slot and every replica's slot (see the module docstring for the port scheme)."""
    m = microbatch_size(plan)

    def host(device: str) -> str:
        if cluster is None:
            return LOCALHOST
        if isinstance(cluster.head, HeadHost) and device == cluster.head.name:  # an off-board head (`head:`)
            return network_host(cluster.head.address)
        try:
            return network_host(cluster.device(device).address)
        except KeyError as e:
            raise CompileError(
                f"plan uses device {device!r} but cluster {cluster.name!r} has none by that name; "
                "pass the cluster file the plan was made with (--cluster)"
            ) from e

    def bind(device_host: str) -> str:
        return "0.0.0.0" if bind_any and cluster is not None else device_host

    head_host = host(plan.head)
    head = Slot(-1, HEAD, head_host, HEAD_PORT, f"{bind(head_host)}:{HEAD_PORT}", 0, m)
    stages = []
    k = 0
    for st in plan.stages:
        slots = []
        lo = 0
        seen = set()
        for r in st.replicas:
            where = f"plan stage {st.index}, replica on {r.device!r}"
            if r.device == HEAD or not r.device or "/" in r.device or r.device.startswith("."):
                raise PlanError(f"{where}: device name cannot be a folder name; rename it in the cluster file")
            if r.device in seen:
                raise PlanError(f"{where}: the device appears twice in one replica group; re-run `edgeplan plan`")
            if r.samples <= 0:
                raise PlanError(f"{where}: samples is {r.samples}, must be >= 1; re-run `edgeplan plan`")
            seen.add(r.device)
            k += 1
            port = HEAD_PORT + k
            where_host = host(r.device)
            slots.append(Slot(st.index, r.device, where_host, port, f"{bind(where_host)}:{port}", lo, lo + r.samples))
            lo += r.samples
        if lo != m:
            raise PlanError(
                f"plan stage {st.index}: replica samples add up to {lo}, not the micro-batch size {m}; "
                "re-run `edgeplan plan`"
            )
        stages.append(tuple(slots))
    return head, tuple(stages)


def _tensor(name: str, t: Any) -> Tensor:
    return Tensor(name=name, shape=tuple(int(d) for d in t.shape), dtype=str(t.dtype).removeprefix("torch."))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _load_plan(plan: Plan | str | os.PathLike[str]) -> Plan:
    return plan if isinstance(plan, Plan) else plan_mod.load(str(plan))


def _load_cluster(cluster: Cluster | str | os.PathLike[str] | None) -> Cluster | None:
    if cluster is None or isinstance(cluster, Cluster):
        return cluster
    from edgeplan.profiles.load import load_cluster

    return load_cluster(str(cluster))


def resolve_sources(plan: Plan, model_spec: str | None, cluster: Cluster | str | os.PathLike[str] | None,
                    input_shape: tuple[int, ...] | None, plan_dir: Path | None = None,
                    ) -> tuple[str, Cluster | None, tuple[int, ...] | None, list[str]]:
    """What to compile: (model spec, cluster, input shape, notes), from the arguments or the plan's record.

    Arguments override what the plan recorded at `edgeplan plan` time; a cluster whose
    digest is not the plan's is refused with both hashes (the plan was made for other boards).
    A recorded cluster file that is gone leaves every worker on 127.0.0.1 with the recorded
    target options.
    """
    notes: list[str] = []
    if model_spec is None:
        if not plan.model_ref:
            raise CompileError("the plan does not record its model (made before edgeplan recorded it, or through "
                               "the API); pass --model as given to `edgeplan plan`, or re-plan")
        model_spec = plan.model_ref
        if input_shape is None:
            input_shape = plan.input_shape
    elif input_shape is None and model_spec == plan.model_ref:
        input_shape = plan.input_shape
    given = cluster is not None
    if cluster is None and plan.cluster_path:
        path = Path(plan.cluster_path)
        if not path.is_absolute() and not path.is_file() and plan_dir is not None and (plan_dir / path).is_file():
            path = plan_dir / path
        if path.is_file():
            cluster = path
        else:
            notes.append(f"cluster file {plan.cluster_path} (recorded in the plan) not found: all workers on "
                         "127.0.0.1, target options as recorded in the plan; pass --cluster for board addresses")
    cluster = _load_cluster(cluster)
    if cluster is not None and plan.cluster_sha256 and cluster.digest() != plan.cluster_sha256:
        source = "--cluster" if given else f"cluster file {plan.cluster_path} (recorded in the plan)"
        raise CompileError(
            f"{source} is cluster {cluster.name!r} with sha256 {cluster.digest()[:12]}, but the plan was made for "
            f"cluster {plan.cluster!r} with sha256 {plan.cluster_sha256[:12]}; re-plan with this cluster "
            f"(`edgeplan plan {model_spec} --cluster ...`) or pass the cluster file the plan was made with"
        )
    return model_spec, cluster, input_shape, notes


def compile_plan(
    plan: Plan | str | os.PathLike[str],
    model_spec: str | None,
    out_dir: str | os.PathLike[str],
    cluster: Cluster | str | os.PathLike[str] | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
    *,
    force: bool = False,
    input_shape: tuple[int, ...] | None = None,
    traced: Any = None,
    bind_any: bool = False,
    profiling_kit: bool = False,
    module_cache: dict | None = None,
) -> Path:
    """Compile ``plan`` for ``model_spec`` into ``out_dir`` (see the module docstring); returns ``out_dir``.

    ``traced`` (an ``edgeplan.graph.load.Traced``) skips tracing ``model_spec`` again.
    ``profiling_kit`` also writes each ONNX Runtime board's profiling kit and ``profile.sh``.
    ``model_spec``, ``cluster`` and ``input_shape`` default to what the plan recorded (see
    resolve_sources); with no cluster at all every address is 127.0.0.1.
    ``module_cache``: shared by several compiles (a plan family), so a stage module (same layers, target,
    options, samples, backend) is built once and copied into every plan that runs it.
    """
    emit = progress or (lambda event: None)
    plan_dir = None if isinstance(plan, Plan) else Path(plan).parent
    plan = _load_plan(plan)
    model_spec, cluster, input_shape, source_notes = resolve_sources(plan, model_spec, cluster, input_shape, plan_dir)
    out = Path(out_dir)
    manifest.check_out_dir(out, force)
    if plan.mode != "inference":  # e.g. training: boards run torch from launchers, no compiled modules
        write = _mode_writer(plan.mode)
        emit(CompileEvent(f"{plan.mode} launchers", "running"))
        write(plan, model_spec, out, input_shape=input_shape, cluster=cluster, force=force)
        emit(CompileEvent(f"{plan.mode} launchers", "done"))
        return out
    if any(st.kind == "branches" for st in plan.stages):
        raise CompileError(f"{plan.model}: inference artifacts of a plan with parallel branches (--pin on model "
                           f"inputs) are not built yet; plan it with --mode training to train it, or pin layers only")
    head, slots = assign_slots(plan, cluster, bind_any)

    t0 = time.perf_counter()
    emit(CompileEvent("trace", "running"))
    if traced is None:
        from edgeplan.graph.load import build

        traced = build(model_spec, input_shape)
    graph = traced.graph
    if graph.digest() != plan.graph_sha256:
        raise CompileError(
            f"plan was made for a different model/input shape: the plan's graph_sha256 is "
            f"{plan.graph_sha256[:12]} but --model {model_spec!r} traces to {graph.digest()[:12]} "
            "(pass the same --model and --input-shape as to `edgeplan plan`, or re-plan)"
        )
    emit(CompileEvent("trace", "done", time.perf_counter() - t0))

    from edgeplan.codegen.split import random_inputs, run_chain, split_stages

    t0 = time.perf_counter()
    emit(CompileEvent("split", "running"))
    stages = split_stages(traced, plan)
    emit(CompileEvent("split", "done", time.perf_counter() - t0))

    jobs = [
        (st, r, slot)
        for st, group in zip(plan.stages, slots, strict=True)
        for r, slot in zip(st.replicas, group, strict=True)
    ]
    t0 = time.perf_counter()
    emit(CompileEvent("shapes", "running"))
    runs = {}  # batch -> per-stage (inputs, outputs) from a seeded random input
    for b in sorted({r.samples for _, r, _ in jobs}):
        runs[b] = run_chain(stages, random_inputs(graph, b, SEED))
    emit(CompileEvent("shapes", "done", time.perf_counter() - t0))
    for st, r, _slot in jobs:
        emit(CompileEvent(_job(st.index, r.target, r.device), "queued"))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="edgeplan-calib-") as calib:
            npu_options = _NpuOptions(cluster, stages, graph, Path(calib))
            _write_all(tmp, out, plan, model_spec, cluster, backend, head, slots, stages, runs, jobs, emit,
                       npu_options, source_notes, module_cache)
        if profiling_kit:  # per board: single-layer modules + runner -> measured profile (codegen/profiling_kit.py)
            from edgeplan.codegen.profiling_kit import write_kits

            write_kits(tmp, plan, traced, cluster)
        emit(CompileEvent("write", "running"))
        _readable(tmp)
        manifest.publish(tmp, out, force, plan.digest(), plan.model)
        if module_cache is not None:  # later compiles copy the modules from where they now are
            for k, (src, compiled) in list(module_cache.items()):
                if src.is_relative_to(tmp):
                    module_cache[k] = (out / src.relative_to(tmp), compiled)
        emit(CompileEvent("write", "done"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _mode_writer(mode: str) -> Callable[..., Path]:
    """The artifact writer of a plan whose mode is not inference: ``edgeplan.<mode>.write_artifacts``.

    Found by the mode's name (as tinygrad finds ``runtime/ops_<device>``) because those
    packages build on codegen (its manifest and split): codegen imports none of them, and
    loads one only when a plan of its mode is compiled.
    """
    name = f"edgeplan.{mode}"
    try:
        return importlib.import_module(name).write_artifacts
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    except AttributeError:
        pass
    raise PlanError(f"plan mode {mode!r} has no artifact writer ({name}.write_artifacts); "
                    "re-plan with --mode inference or --mode training")


def _job(stage: int, target: str, device: str) -> str:
    return f"stage {stage} {target} {device}"


class _NpuOptions:
    """Options only codegen can supply to an NPU stage: the unit's op list and an int8 calibration set.

    The calibration set is seeded random model inputs run through the stages before
    this one; give real data with ``calibration: path/to/dataset.txt`` in the unit's
    target_options instead.
    """

    def __init__(self, cluster, stages, graph, calib_dir: Path):
        self.cluster, self.stages, self.graph, self.calib_dir = cluster, stages, graph, calib_dir

    def add(self, options: dict[str, str], st, r) -> dict[str, str]:
        if r.target != "npu":
            return options
        options = dict(options)
        unit = self.cluster.device(r.device).unit(r.unit) if self.cluster is not None else None
        if unit is not None and unit.supported_ops is not None:
            options.setdefault("supported_ops", ",".join(unit.supported_ops))
        if options.get("dtype") == "int8" and "calibration" not in options:
            from edgeplan.codegen.split import random_inputs
            from edgeplan.targets.npu import write_calibration_set

            names = [t.name for t in self.graph.inputs]
            samples = [tuple(random_inputs(self.graph, r.samples, SEED + 1 + i)[n] for n in names)
                       for i in range(CALIBRATION_SAMPLES)]
            options["calibration"] = str(write_calibration_set(
                [s.gm for s in self.stages[:st.index]], samples, self.calib_dir / f"stage{st.index}-b{r.samples}"))
        return options


def _write_all(tmp, out, plan, model_spec, cluster, backend, head, slots, stages, runs, jobs, emit,
               npu_options: _NpuOptions, source_notes: list[str], module_cache: dict | None = None) -> None:
    from edgeplan.targets.registry import get_target

    plan_sha = plan.digest()
    n = len(plan.stages)
    m = microbatch_size(plan)
    # identical compiles (same layers, target, options, batch): copy
    cache: dict[tuple, tuple[Path, Any]] = module_cache if module_cache is not None else {}
    report_jobs = []
    printed: list[str] = []  # targets' notes the user must see (a backend fallback): printed by `edgeplan compile`
    board_stages: dict[str, list[dict]] = {}
    requirements: dict[str, list[str]] = {}
    board_notes: dict[str, list[str]] = {}  # per JetPack / OS version, from targets with install_notes
    builds: dict[str, dict] = {}  # device -> the runtime its GPU stages need built from source (build-tvm-runtime.sh)
    warnings: list[str] = []
    board_warnings: dict[str, list[str]] = {}  # the same warnings, for the board's README.txt
    for st, r, slot in jobs:
        job = _job(st.index, r.target, r.device)
        options = npu_options.add(_options(cluster, r, plan), st, r)
        stage_dir = tmp / r.device / f"stage{st.index}"
        stage_dir.mkdir(parents=True)
        inputs, outputs = runs[r.samples][st.index]
        key = (st.start, st.stop, r.target, tuple(sorted(options.items())), r.samples, backend)
        t0 = time.perf_counter()
        if key in cache:
            src, compiled = cache[key]
            for rel in compiled.files:
                (stage_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, stage_dir / rel)
            emit(CompileEvent(job, "reused", time.perf_counter() - t0))
        else:
            emit(CompileEvent(job, "running"))
            target = get_target(r.target)
            try:
                compiled = target.compile_stage(stages[st.index].gm, inputs, options, stage_dir, backend=backend)
            except EdgeplanError as e:  # name the stage and the final folder, not the temporary one
                where = f"stage {st.index} for device {r.device!r} (target {r.target}, backend {backend})"
                raise type(e)(f"{where}: {str(e).replace(str(tmp), str(out))}") from e
            except Exception as e:
                raise CompileError(
                    f"stage {st.index} for device {r.device!r} (target {r.target}, backend {backend}) failed to "
                    f"compile: {type(e).__name__}: {str(e).replace(str(tmp), str(out))}; try another --backend or "
                    "check the target's toolchain"
                ) from e
            cache[key] = (stage_dir, compiled)
            emit(CompileEvent(job, "done", time.perf_counter() - t0))
        files = tuple((rel, manifest.file_sha256(stage_dir / rel)) for rel in sorted(compiled.files))
        stage = stages[st.index]
        upstream = (head,) if st.index == 0 else slots[st.index - 1]
        downstream = (head,) if st.index == n - 1 else slots[st.index + 1]
        spec = StageSpec(
            model=plan.model, plan_sha256=plan_sha, stage=st.index, n_stages=n, device=r.device, unit=r.unit,
            target=r.target, backend=compiled.backend, module=compiled.module_file, listen=slot.listen,
            microbatch=m, lo=slot.lo, hi=slot.hi,
            inputs=tuple(_tensor(name, t) for name, t in zip(stage.inputs, inputs, strict=True)),
            outputs=tuple(_tensor(name, t) for name, t in zip(stage.outputs, outputs, strict=True)),
            upstream=tuple(s.peer() for s in upstream), downstream=tuple(s.peer() for s in downstream),
            files=files,
        )
        jsonio.write(stage_dir / "stage.json", spec.to_json())
        board_stages.setdefault(r.device, []).append({
            "index": st.index, "start": st.start, "stop": st.stop, "lo": slot.lo, "hi": slot.hi,
            "listen": slot.listen, "unit": r.unit, "target": r.target, "backend": compiled.backend,
            "spec_path": f"stage{st.index}/stage.json",
        })
        reqs = requirements.setdefault(r.device, [])
        for line in get_target(r.target).runtime_requirements(compiled.backend):
            if line not in reqs:
                reqs.append(line)
        _board_runtime(get_target(r.target), compiled.backend, {**board_options(cluster, plan, r.device), **options},
                       f"{r.device}/stage{st.index}",
                       board_notes.setdefault(r.device, []), builds, r.device, warnings,
                       board_warnings.setdefault(r.device, []))
        report_jobs.append({
            "stage": st.index, "device": r.device, "target": r.target, "backend": compiled.backend,
            "samples": r.samples, "notes": list(compiled.notes),
        })
        printed.extend(f"stage {st.index} on {r.device} ({r.target}): {note}" for note in compiled.printed)

    for device, bstages in board_stages.items():
        requirements[device][:0] = BASE_REQUIREMENTS  # the runtime's own, before the stages' backends
        _write_board(tmp / device, device, plan, plan_sha, n, m, cluster is None, bstages, requirements[device],
                     secret_env=cluster.secret_env if cluster is not None else None,
                     board_notes=board_notes.get(device, []) + [f"WARNING: {w}" for w in board_warnings[device]],
                     build=builds.get(device))

    jsonio.write(tmp / "plan.json", plan.to_json())
    last = plan.stages[-1]
    last_outputs = runs[last.replicas[0].samples][last.index][1]
    first_inputs = runs[plan.stages[0].replicas[0].samples][0][0]
    jsonio.write(tmp / "head.json", {
        "schema_version": 1, "model": plan.model, "plan_sha256": plan_sha, "listen": head.listen,
        "address": head.address, "batch": plan.batch, "microbatches": plan.microbatches, "microbatch": m,
        "n_stages": n,
        "inputs": [_batched(name, t, m) for name, t in zip(stages[0].inputs, first_inputs, strict=True)],
        "outputs": [_batched(name, t, m) for name, t in zip(stages[-1].outputs, last_outputs, strict=True)],
        "downstream": [asdict(s.peer()) for s in slots[0]],
        "upstream": [asdict(s.peer()) for s in slots[-1]],
    })
    notes = list(source_notes) + printed
    if cluster is None and not plan.target_options:
        notes.append("compiled without --cluster: all workers on 127.0.0.1, default target options")
    jsonio.write(tmp / "compile-report.json", {
        "model": plan.model, "model_spec": model_spec, "plan_sha256": plan_sha, "backend": backend,
        "jobs": report_jobs, "notes": notes, "warnings": warnings,
    })


def _board_runtime(target, backend: str, options: dict[str, str], where: str, notes: list[str],
                   builds: dict[str, dict], device: str, warnings: list[str], board_warnings: list[str]) -> None:
    """What a target says about running ``backend`` on this board: README lines per OS/JetPack version,
    the runtime to build from source, and warnings when the board's profile says it cannot run there."""
    for line in getattr(target, "install_notes", lambda b, o: ())(backend, options):
        if line not in notes:
            notes.append(line)
    for line in getattr(target, "runtime_warnings", lambda b, o, p: ())(backend, options, BOARD_PYTHON):
        text = f"{where} ({target.name}, backend {backend}): {line}"
        if text not in warnings:
            warnings.append(text)
        if line not in board_warnings:
            board_warnings.append(line)
    build = getattr(target, "runtime_build", lambda b: None)(backend)
    if build is not None:
        if device in builds and builds[device]["build"] != build:
            raise CompileError(f"{where}: device {device!r} has stages on two GPU runtimes "
                               f"({builds[device]['build'].gpu}, {build.gpu}); one board builds one TVM runtime: "
                               "re-plan onto one GPU target")
        version = _version("apache-tvm")
        builds[device] = {"build": build, "tvm_version": version, "tvm_tag": version.split(".post")[0]}


# target_options one unit records for the whole board: the OS image (its python3) and the GPU that limits which
# OS images the board takes (a Jetson's JetPack and arch)
BOARD_OPTIONS = ("jetpack", "arch")


def board_options(cluster: Cluster | None, plan: Plan, device: str) -> dict[str, str]:
    """The board-wide target_options (BOARD_OPTIONS) any unit of ``device`` records, e.g. the GPU unit's JetPack:
    every target on the board checks its stages against them (a CPU stage's onnxruntime needs the OS's python3).
    From the cluster file, else from the units the plan recorded."""
    if cluster is not None:
        try:
            units = [dict(u.target_options) for u in cluster.device(device).units]
        except KeyError:
            units = []
    else:
        units = [dict(u.options) for u in plan.target_options if u.device == device]
    return {k: o[k] for o in units for k in BOARD_OPTIONS if k in o}


def _batched(name: str, t: Any, m: int) -> dict:
    spec = _tensor(name, t)
    return {"name": spec.name, "shape": [m, *spec.shape[1:]], "dtype": spec.dtype}


def _options(cluster: Cluster | None, r, plan: Plan) -> dict[str, str]:
    """The unit's target_options: from the cluster file, else as the plan recorded them, else the defaults."""
    if cluster is None:
        return plan.unit_options(r.device, r.unit) or {}
    try:
        return dict(cluster.device(r.device).unit(r.unit).target_options)
    except KeyError as e:
        raise CompileError(
            f"plan runs a stage on unit {r.unit!r} of device {r.device!r}, which cluster {cluster.name!r} "
            f"lacks ({e.args[0]}); pass the cluster file the plan was made with (--cluster)"
        ) from e


@dataclass(frozen=True)
class BoardPython:
    """A Python file codegen puts into board folders, so it runs on ``BOARD_PYTHON``: where it lands
    (relative to the board folder; ``stage*/`` for one per stage) and where its text comes from, a file
    copied as it is or a template in codegen/templates rendered per stage (``template``)."""

    dest: str
    source: Path
    template: bool = False


def board_python() -> tuple[BoardPython, ...]:
    """Every Python file a board folder can hold, from where codegen takes it: the runtime package
    (``_write_board`` copies exactly these), the profiling kit's runner, and each target's per-stage
    scripts (a target's ``board_python()``: (destination, template) pairs)."""
    from edgeplan.codegen import profiling_kit
    from edgeplan.codegen.render import TEMPLATES
    from edgeplan.targets.registry import get_target, names

    files = [BoardPython(f"{RUNTIME_DIR}/{p.name}", p) for p in sorted(RUNTIME_SRC.glob("*.py"))]
    files.append(BoardPython(f"{profiling_kit.KIT_DIR}/{profiling_kit.RUNNER_AS}", profiling_kit.RUNNER))
    for name in names():
        for dest, template in getattr(get_target(name), "board_python", tuple)():
            files.append(BoardPython(dest, TEMPLATES / template, template=True))
    return tuple(files)


def _write_board(board: Path, device, plan, plan_sha, n, m, local, bstages, requirements,
                 secret_env: str | None = None, board_notes: list[str] | None = None,
                 build: dict | None = None) -> None:
    (board / RUNTIME_DIR).mkdir(parents=True)
    for f in board_python():
        if f.dest.startswith(f"{RUNTIME_DIR}/"):
            shutil.copyfile(f.source, board / f.dest)
    context = {
        "device": device, "model": plan.model, "plan_sha256": plan_sha, "n_stages": n, "microbatch": m,
        "stages": bstages, "stage_list": ", ".join(str(s["index"]) for s in bstages),
        "install_dir": f"{INSTALL_DIR}/{device}", "edgeplan_version": _version("edgeplan"),
        "requirements": requirements, "head_port": HEAD_PORT, "local_addresses": local,
        "secret_env": secret_env,  # the cluster's: workers authenticate frames with the secret it names
        "python": ".".join(map(str, BOARD_PYTHON)), "board_notes": board_notes or [], "build": build,
        "trt_stages": " ".join(f"stage{s['index']}" for s in bstages if s["backend"] == "tensorrt"),
        "family": None,  # adapt/compile.py renders a plan family's board README with its variants here
    }
    (board / "start.sh").write_text(render("start.sh.j2", **context))
    (board / "start.sh").chmod(0o755)
    (board / "edgeplan-stage.service").write_text(render("edgeplan-stage.service.j2", **context))
    (board / "README.txt").write_text(render("README.txt.j2", **context))
    if build is not None:
        (board / BUILD_SCRIPT).write_text(render("build-tvm-runtime.sh.j2", **{**context, **build}))
        (board / BUILD_SCRIPT).chmod(0o755)


def _readable(root: Path) -> None:
    """Folders 755, files 644 (start.sh 755), less the umask: temp files and folders start private."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o755 & ~umask)
    for p in root.rglob("*"):
        mode = 0o755 if p.is_dir() or p.name in ("start.sh", BUILD_SCRIPT) else 0o644
        p.chmod(mode & ~umask)
