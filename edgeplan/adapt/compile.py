"""`edgeplan compile plans/`: a plan family compiled once and loaded all at once (issue 12 item 2).

Layout::

    OUT/family.json                  the family's table (as `edgeplan plan --variants` wrote it)
    OUT/compile-family.json          per board: its modules and, per variant, which module each slot runs
    OUT/graph.json, OUT/cluster.json the LayerGraph and nominal cluster (the controller re-prices plans with them)
    OUT/plan-K/                      per variant: plan.json, head.json, compile-report.json (no board folders)
    OUT/<board>/<module>/            each distinct module the board may run, once: its compiled files, and
                                     one ``plan-K-stageS.json`` per (variant, stage) slot that runs it
    OUT/<board>/start.sh ...         starts every slot of every variant (the runtime copy, README, service)
    OUT/manifest.json                covers all of it (`edgeplan verify OUT`)

A module (same layers, unit, target options, samples, backend) is compiled for the first plan that
runs it; every other slot that runs it gets only a stage.json naming it. So a switch between
variants needs no compile and no copy: every slot's worker is started and has its module loaded
before the first request (runtime/local.py ``start_pipeline``, runtime/head.py ``FamilyHead``).

Ports (boards driven from their own addresses): variant K's head and workers use the single-plan
ports shifted by ``PORT_STRIDE * K``, so the slots of all variants can listen on one board at once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from edgeplan import jsonio
from edgeplan.codegen import manifest
from edgeplan.planner.family import FAMILY_FILE, load_family

SUMMARY = "compile-family.json"
GRAPH_FILE = "graph.json"
CLUSTER_FILE = "cluster.json"
POLICY_FILE = "rl-policy.json"  # adapt/rl.py's trained policy, when the family folder has one
PORT_STRIDE = 100  # variant K's ports: the single plan's + 100 K (a plan has fewer than 100 replicas)


def module_dir(unit: str, start, stop, samples) -> str:
    """A module's folder in its board folder (``-2``, ``-3``... appended for the same layers with other options)."""
    return f"{unit}-layers{start}-{stop}-b{samples}"


MODULE_GLOB = module_dir("*", "*", "*", "*")  # every module folder of a board (hostcheck.foreign_stages reads it)


def shift_port(address: str, offset: int) -> str:
    """``host:port`` (or ``[v6]:port``) with the port moved by ``offset``."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset}" if offset else address


def _shift_spec(spec: dict, offset: int) -> dict:
    out = dict(spec, listen=shift_port(spec["listen"], offset))
    for side in ("upstream", "downstream"):
        out[side] = [dict(p, address=shift_port(p["address"], offset)) for p in spec[side]]
    return out


def compile_family(folder, out, *, model_spec: str | None = None, cluster=None, backend: str = "auto",
                   force: bool = False, progress=None, bind_any: bool = False,
                   input_shape: tuple[int, ...] | None = None) -> dict:
    """Compile every plan of the family in ``folder`` into ``out`` (see the module docstring); returns the summary.

    Written into a temporary folder next to ``out`` and renamed at the end (an interrupted compile leaves none).
    """
    from edgeplan.codegen.compile import compile_plan, resolve_sources
    from edgeplan.graph.load import build

    folder, out = Path(folder), Path(out)
    fam, plans = load_family(folder)
    manifest.check_out_dir(out, force)
    first = next(iter(plans.values()))
    spec = model_spec or first.model_ref
    traced = build(spec, input_shape if input_shape is not None else (first.input_shape if not model_spec else None))
    _, nominal, _, _ = resolve_sources(first, model_spec, cluster, input_shape, folder)
    cache: dict = {}
    built: list[str] = []
    reused: list[str] = []

    def on_event(ev) -> None:
        if ev.status == "done" and ev.job.startswith("stage"):
            built.append(ev.job)
        elif ev.status == "reused":
            reused.append(ev.job)
        if progress is not None:
            progress(ev)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix=".variants-", dir=out.parent) as scratch:
            for name in plans:
                compile_plan(folder / name, model_spec, Path(scratch) / Path(name).stem, cluster, backend, on_event,
                             traced=traced, bind_any=bind_any, input_shape=input_shape, module_cache=cache)
            boards, warnings = _merge(Path(scratch), tmp, plans, manifest.file_sha256(folder / FAMILY_FILE),
                                      fam.model, nominal)
        shutil.copyfile(folder / FAMILY_FILE, tmp / FAMILY_FILE)
        if (folder / POLICY_FILE).is_file():  # `--adapt rl` loads it from the compiled folder
            shutil.copyfile(folder / POLICY_FILE, tmp / POLICY_FILE)
        jsonio.write(tmp / GRAPH_FILE, traced.graph.to_json())
        if nominal is not None:
            jsonio.write(tmp / CLUSTER_FILE, nominal.to_json())
        summary = {
            "schema_version": 2, "model": fam.model, "plans": [Path(n).stem for n in plans],
            "initial": Path(fam.variants[0].plan).stem, "port_stride": PORT_STRIDE,
            "modules_built": len(built), "modules_copied": len(reused), "boards": boards,
            "warnings": warnings,  # a module the board's profile says cannot run there (`edgeplan compile` prints)
        }
        jsonio.write(tmp / SUMMARY, summary)
        (tmp / "README.txt").write_text(
            f"Plan family of {fam.model}: {len(plans)} variant(s) ({', '.join(summary['plans'])}), "
            f"{sum(len(b['modules']) for b in boards.values())} module(s) on {len(boards)} board(s).\n"
            "Each board folder holds every module it may run and starts every variant's workers (start.sh);\n"
            "`edgeplan run OUT --adapt heuristic` or `edgeplan serve OUT --adapt heuristic` switches between them.\n")
        manifest.publish(tmp, out, force, manifest.file_sha256(tmp / FAMILY_FILE), fam.model)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _merge(scratch: Path, tmp: Path, plans: dict, family_sha: str, model: str, nominal) -> tuple[dict, list[str]]:
    """Fold the complete per-variant folders in ``scratch`` into one folder per board (module docstring);
    returns the boards' summary and the compile warnings about the modules they hold."""
    from edgeplan.codegen.compile import RUNTIME_DIR

    boards: dict[str, dict] = {}
    by_content: dict[tuple, str] = {}  # (board, files and digests) -> module folder name
    board_src: dict[str, Path] = {}  # the first variant folder of each board: its runtime copy
    context: dict[str, dict] = {}
    for k, (name, plan) in enumerate(plans.items()):
        stem, src = Path(name).stem, scratch / Path(name).stem
        offset = PORT_STRIDE * k
        (tmp / stem).mkdir()
        for f in ("plan.json", "compile-report.json"):
            shutil.copyfile(src / f, tmp / stem / f)
        head = jsonio.read(src / "head.json")
        head.update(listen=shift_port(head["listen"], offset), address=shift_port(head["address"], offset),
                    downstream=[dict(p, address=shift_port(p["address"], offset)) for p in head["downstream"]],
                    upstream=[dict(p, address=shift_port(p["address"], offset)) for p in head["upstream"]])
        jsonio.write(tmp / stem / "head.json", head)
        for st in plan.stages:
            for r in st.replicas:
                sdir = src / r.device / f"stage{st.index}"
                spec = _shift_spec(json.loads((sdir / "stage.json").read_text()), offset)
                key = (r.device, tuple(sorted(map(tuple, spec["files"]))))
                board = boards.setdefault(r.device, {"modules": {}, "slots": {}})
                board_src.setdefault(r.device, src / r.device)
                mod = by_content.get(key)
                if mod is None:
                    mod = base = module_dir(r.unit, st.start, st.stop, r.samples)
                    n = 2
                    while mod in board["modules"]:  # same layers, other options or backend
                        mod, n = f"{base}-{n}", n + 1
                    by_content[key] = mod
                    shutil.copytree(sdir, tmp / r.device / mod)
                    jsonio.write(tmp / r.device / mod / "stage.json", spec)  # for tools that read a folder
                    board["modules"][mod] = {"layers": [st.start, st.stop], "unit": r.unit, "samples": r.samples,
                                             "backend": spec["backend"], "files": [f for f, _ in spec["files"]],
                                             "plans": []}
                    context.setdefault(r.device, {"modules": {}, "trt": [], "runs": {}})["runs"][mod] = (
                        r, plan, spec["target"], spec["backend"], (st.start, st.stop))
                board["modules"][mod]["plans"].append(stem)
                slot = f"{mod}/{stem}-stage{st.index}.json"
                jsonio.write(tmp / r.device / slot, spec)
                board["slots"].setdefault(stem, []).append({"stage": st.index, "spec": slot, "lo": spec["lo"],
                                                            "hi": spec["hi"]})
                ctx = context[r.device]
                label = f"{stem} stage {st.index} of {len(plan.stages)}"
                ctx.setdefault("labels", {}).setdefault(mod, []).append(label)  # README.txt's slot list
                ctx["modules"].setdefault(mod, []).append(
                    (slot, f"# {label}: layers [{st.start}, {st.stop}), samples "
                           f"[{spec['lo']}, {spec['hi']}) of each micro-batch, listens on {spec['listen']}"))
                if spec["backend"] == "tensorrt" and mod not in ctx["trt"]:
                    ctx["trt"].append(mod)
    warnings: list[str] = []
    for device, ctx in context.items():
        shutil.copytree(board_src[device] / RUNTIME_DIR, tmp / device / RUNTIME_DIR)  # the same in every variant
        _write_family_board(tmp / device, device, model, family_sha, ctx, nominal, warnings, list(plans))
    return {d: {"modules": b["modules"], "slots": b["slots"]} for d, b in sorted(boards.items())}, warnings


def _write_family_board(board: Path, device: str, model: str, family_sha: str, ctx: dict, nominal,
                        warnings: list[str], plans: list[str]) -> None:
    """start.sh, the service, README.txt (and build-tvm-runtime.sh) of one board, from EVERY module it may run:
    one variant's board folder knows only that variant's modules, so another variant's backend (its install
    lines, JetPack notes, runtime build, warnings) would be missing."""
    from edgeplan.codegen.compile import (
        BASE_REQUIREMENTS,
        BOARD_PYTHON,
        BUILD_SCRIPT,
        HEAD_PORT,
        INSTALL_DIR,
        _board_runtime,
        _options,
        _version,
        board_options,
    )
    from edgeplan.codegen.render import render
    from edgeplan.targets.registry import get_target

    requirements, notes, builds, board_warnings = list(BASE_REQUIREMENTS), [], {}, []
    modules = []
    for mod, (r, plan, target_name, backend, (start, stop)) in ctx["runs"].items():
        target = get_target(target_name)
        requirements += [line for line in target.runtime_requirements(backend) if line not in requirements]
        _board_runtime(target, backend, {**board_options(nominal, plan, device), **_options(nominal, r, plan)},
                       f"{device}/{mod}", notes, builds, device, warnings, board_warnings)
        modules.append({"folder": mod, "start": start, "stop": stop, "unit": r.unit, "target": target_name,
                        "backend": backend, "slots": ", ".join(ctx["labels"][mod])})
    context = {
        "edgeplan_version": _version("edgeplan"), "device": device, "model": model, "plan_sha256": family_sha,
        "n_stages": 0, "microbatch": 0, "stage_list": " ".join(ctx["runs"]), "install_dir": f"{INSTALL_DIR}/{device}",
        "requirements": requirements, "head_port": HEAD_PORT, "local_addresses": nominal is None,
        "secret_env": nominal.secret_env if nominal is not None else None, "python": ".".join(map(str, BOARD_PYTHON)),
        "board_notes": notes + [f"WARNING: {w}" for w in board_warnings], "build": builds.get(device),
        "trt_stages": " ".join(ctx["trt"]), "port_stride": PORT_STRIDE,
        "family": f"{len(plans)} variant(s): {', '.join(Path(n).stem for n in plans)}",
    }
    entries = [{"spec_path": slots[0][0], "spec_paths": [p for p, _ in slots],
                "comment": "\n".join([f"# module {mod}, loaded once for its {len(slots)} slot(s):"]
                                     + [c for _, c in slots])}
               for mod, slots in ctx["modules"].items()]
    (board / "start.sh").write_text(render("start.sh.j2", **{**context, "stages": entries}))
    (board / "start.sh").chmod(0o755)
    (board / "edgeplan-stage.service").write_text(render("edgeplan-stage.service.j2", **context))
    (board / "README.txt").write_text(render("README.txt.j2", **{**context, "stages": modules}))
    if context["build"] is not None:
        (board / BUILD_SCRIPT).write_text(render("build-tvm-runtime.sh.j2", **{**context, **context["build"]}))
        (board / BUILD_SCRIPT).chmod(0o755)
