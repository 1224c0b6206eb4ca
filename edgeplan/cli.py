"""The `edgeplan` command line: parses arguments and calls the phases' APIs.

Heavy imports (torch, TVM) happen inside the commands, so `edgeplan --help` and
the pure commands start fast. Every EdgeplanError becomes one line on stderr and
a non-zero exit; `edgeplan --debug ...` shows the traceback instead.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from edgeplan.errors import EdgeplanError


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeplanError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            typer.echo(f"edgeplan: error: {e}", err=True)
            ctx.exit(e.exit_code)


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    help="Plan, compile and run one PyTorch model across heterogeneous edge boards.",
)

# Parameters several commands share, declared once.
CompiledArtifacts = Annotated[Path, typer.Argument(
    help="Artifact folder from `edgeplan compile`.", exists=True, file_okay=False)]
LocalWorkers = Annotated[bool, typer.Option("--local", help="Start every (device, stage) worker here, on 127.0.0.1.")]
DeployedCluster = Annotated[Path | None, typer.Option(
    "--cluster", exists=True, dir_okay=False,
    help="Drive the workers deployed on the boards (its secret_env names the HMAC secret).")]
AttemptTimeout = Annotated[float, typer.Option(
    "--timeout", min=0.1, help="Seconds per request attempt before a re-send.")]
DeadAfter = Annotated[float, typer.Option(
    "--dead-after", min=0.1, help="Seconds without a heartbeat before a worker counts as dead.")]
SecretEnv = Annotated[str | None, typer.Option(
    "--secret-env", help="Environment variable holding the HMAC secret (default: the cluster's).")]


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    ctx.obj = {"debug": debug}


# Commands are grouped by phase, in pipeline order: graph, profiles, planner,
# codegen, runtime, training. Each section only parses and calls its phase.

# --- graph -------------------------------------------------------------------


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(
        help="Zoo name (e.g. resnet18), 'file.py:callable', or 'torchvision:<name>'.")],
    input_shape: Annotated[str, typer.Option(
        "--input-shape",
        help="Batch-first shape, e.g. 1,3,224,224 "
             "(default: the model's own, for zoo models).")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Also write the LayerGraph as JSON to this file.")] = None,
) -> None:
    """Trace MODEL and print its layers: op, origin, output shape, FLOPs, params, bytes crossing each cut."""
    from edgeplan import jsonio
    from edgeplan.graph.report import format_table, parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    from edgeplan.graph.load import build

    traced = build(model, shape)
    typer.echo(format_table(traced.graph), nl=False)
    if json_out is not None:
        jsonio.write(json_out, traced.graph.to_json())
        typer.echo(f"wrote {json_out}")


@app.command()
def fpl(
    model: Annotated[str, typer.Argument(
        help="Single-input model: zoo name (e.g. resnet18-cifar), 'file.py:callable', or 'torchvision:<name>'.")],
    sources: Annotated[str, typer.Option(
        "--sources", help="Comma-separated data sources (boards), one branch each, e.g. cam-a,cam-b,cam-c.")],
    junction_before: Annotated[str, typer.Option(
        "--junction-before", help="Layer name (as `edgeplan inspect` prints it) the junction sits before.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Python file to write (build() in it).")],
    input_shape: Annotated[str, typer.Option(
        "--input-shape", help="Batch-first shape of one source's input (default: the model's own).")] = None,
) -> None:
    """Flexible parallel learning: MODEL -> one branch per source + junction layer + trunk, as a Python file.

    Example: edgeplan fpl resnet18-cifar --sources cam-a,cam-b,cam-c --junction-before fc --out fpl_model.py
    """
    from edgeplan.fpl import build
    from edgeplan.graph.report import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    names = tuple(s.strip() for s in sources.split(",") if s.strip())
    model_file = build.write(build.split(model, names, junction_before, shape), out)
    typer.echo(f"wrote {model_file}: {len(names)} branches ({', '.join(names)}) before {junction_before}; "
               f"plan it as {model_file}:build with --pin input<i>=<board>")


# --- profiles ----------------------------------------------------------------


@app.command()
def devices() -> None:
    """List the built-in board profiles: id, usable RAM, estimate flag, name, units (target, GFLOP/s)."""
    from edgeplan.profiles.report import format_profiles

    typer.echo(format_profiles(), nl=False)


cluster_app = typer.Typer(help="Cluster files: boards, addresses and network links.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("check")
def cluster_check(
    file: Annotated[Path, typer.Argument(help="Cluster YAML, e.g. examples/clusters/three-node-hetero.yaml.")],
) -> None:
    """Validate FILE and print its devices and links (errors name the file and field)."""
    from edgeplan.profiles.load import load_cluster
    from edgeplan.profiles.report import format_cluster

    typer.echo(format_cluster(load_cluster(file)), nl=False)
    typer.echo(f"{file}: ok")

@app.command()
def profile(
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Profile file to write (YAML).")],
    extends: Annotated[str, typer.Option(
        "--extends", help="Built-in profile this machine is (RAM, power and units come from it).")] = "host",
    seconds: Annotated[float, typer.Option("--seconds", min=0.05, help="Timing per op class.")] = 0.4,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Threads to measure with (default: all).")] = None,
) -> None:
    """Measure this machine per op class and write it as a board profile (measured figures marked as such).

    Run it on the board itself; use the file as a device's `profile:` in a cluster file.
    """
    from edgeplan.profiles.load import load_profile
    from edgeplan.testbed import calibrate

    load_profile(extends)  # unknown ids fail here, with the valid ones listed
    typer.echo(f"measuring this machine per op class (ONNX Runtime), {seconds:g} s each...")
    path = calibrate.write_measured_profile(out, extends, seconds, threads)
    typer.echo(f"wrote {path}; use it as `profile: {path}` in a cluster file")


@app.command()
def calibrate(
    reports: Annotated[list[Path], typer.Argument(
        exists=True, dir_okay=False,
        help="Run reports from `edgeplan run --report` (inference) or `edgeplan train --report` (training).")] = None,
    *,
    cluster: Annotated[Path, typer.Option(
        "--cluster", exists=True, dir_okay=False, help="The cluster file the plan(s) were made on.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Calibrated cluster file to write (YAML).")],
    plan: Annotated[list[Path], typer.Option(
        "--plan",
        exists=True,
        help="plan.json or artifact folder each report ran (once for all, or once per report in order).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The planned model (default: the plan's model_ref).")] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", help="Backend recorded as the figures' provenance (default: from the artifact folder).")] = None,
    kit: Annotated[list[Path], typer.Option(
        "--kit",
        exists=True,
        dir_okay=False,
        help="A board's profiling-kit timings (<board>/profiling/timings.json after `sh profile.sh`).")] = None,
) -> None:
    """Refit per-board, per-unit figures from run reports (and profiling-kit timings); write a calibrated cluster.

    Prints each unit's figures before -> after and every stage's measured vs predicted module time.
    """
    from edgeplan.graph.load import build
    from edgeplan.profiles import calibrate as cal_mod

    def graph_of(p: dict):
        ref = model or p.get("model_ref") or p.get("model")
        shape = p.get("input_shape")
        return build(ref, tuple(shape) if shape else None).graph

    def reprice(p: dict, graph, clu):
        from edgeplan.planner.api import evaluate, layout_of
        from edgeplan.planner.objective import Objective
        from edgeplan.planner.plan import Plan
        from edgeplan.profiles.cost import build_cost_table

        pl = Plan.from_json(p)
        costs = build_cost_table(graph, clu)
        obj = Objective(mode=pl.mode, objective=pl.objective, batch=pl.batch, microbatches=pl.microbatches,
                        schedule=pl.schedule, head=pl.head)
        ev = evaluate(costs, layout_of(costs, pl), obj)
        return ev.latency_s, ev.throughput

    result, _ = cal_mod.calibrate_files(list(reports or ()), list(plan or ()), cluster, out, graph_of,
                                        backend=backend, kits=list(kit or ()))
    from edgeplan.profiles import calibrate_train

    if isinstance(result, calibrate_train.TrainCalibration):  # training reports (`edgeplan train --report`)
        typer.echo(calibrate_train.format_fit(result), nl=False)
        typer.echo(f"wrote {out}; plan on it with `edgeplan plan ... --mode training --cluster {out}`")
        return
    typer.echo(cal_mod.format_fit(result), nl=False)
    typer.echo(cal_mod.format_end_to_end(cal_mod.end_to_end(result, reprice)), nl=False)
    typer.echo(f"wrote {out}; plan on it with `edgeplan plan ... --cluster {out}`")


# --- planner -----------------------------------------------------------------


class PlanMode(str, Enum):
    inference = "inference"
    training = "training"


class PlanObjective(str, Enum):
    latency = "latency"
    throughput = "throughput"
    energy = "energy"
    time = "time"


class PlanSchedule(str, Enum):
    auto = "auto"
    gpipe = "gpipe"
    one_f_one_b = "1f1b"


class PlanSolver(str, Enum):
    dp = "dp"
    ilp = "ilp"


@app.command("plan")
def plan_cmd(
    model: Annotated[str, typer.Argument(
        help="Zoo name (e.g. resnet18), 'file.py:callable', or 'torchvision:<name>'.")],
    cluster: Annotated[Path, typer.Option("--cluster", exists=True, dir_okay=False, help="Cluster YAML.")],
    mode: Annotated[PlanMode, typer.Option("--mode", help="Plan for inference or training.")] = PlanMode.inference,
    objective: Annotated[PlanObjective | None, typer.Option(
        "--objective",
        help="inference: latency | throughput (default) | energy; training: time (per iteration, the default)."),
    ] = None,
    batch: Annotated[int, typer.Option(
        "--batch", help="Samples per request (inference) or global batch (training).")] = 1,
    microbatches: Annotated[int, typer.Option(
        "--microbatches", help="Micro-batches the batch is cut into (divides it).")] = 1,
    schedule: Annotated[PlanSchedule, typer.Option(
        "--schedule", help="Training pipeline schedule (auto: 1f1b).")] = PlanSchedule.auto,
    latency_budget: Annotated[str, typer.Option(
        "--latency-budget", help="e.g. 50ms (training: per iteration).")] = None,
    energy_budget: Annotated[str, typer.Option("--energy-budget", help="Per sample, e.g. 30mJ.")] = None,
    head: Annotated[str, typer.Option("--head", help="Device feeding inputs (default: the cluster's first).")] = None,
    optimizer_states: Annotated[int, typer.Option(
        "--optimizer-states", help="Training: parameter-sized optimizer buffers (1 SGD momentum, 2 Adam).")] = 1,
    solver: Annotated[PlanSolver, typer.Option(
        "--solver", help="dp (default, fast) or ilp (exact, small).")] = PlanSolver.dp,
    min_gain: Annotated[float, typer.Option(
        "--min-gain",
        help="A plan with more boards/stages must beat the best simpler one by this "
             "fraction (0 <= x < 1), else the simpler one is used.")] = 0.05,
    ilp_time_limit: Annotated[float, typer.Option(
        "--ilp-time-limit", help="Seconds HiGHS may spend (--solver ilp, and the DP's ILP check).")] = 60.0,
    one_unit_per_board: Annotated[bool, typer.Option(
        "--one-unit-per-board",
        help="Never run two stages on one board (by default idle units of the plan's boards, e.g. an RK3588's "
             "NPU beside its GPU, take a stage when that gains --min-gain).")] = False,
    input_shape: Annotated[str, typer.Option(
        "--input-shape", help="Batch-first shape (default: the model's own).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Write the plan JSON here.")] = None,
    svg: Annotated[Path, typer.Option("--svg", help="Also draw the schedule and memory to this SVG.")] = None,
    check: Annotated[Path | None, typer.Option(
        "--check",
        dir_okay=False,
        help="Golden plan file: exit 1 with a readable diff when this plan differs from it.")] = None,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, max=0.99, help="--check: relative tolerance of predicted figures.")] = 0.02,
    variants: Annotated[list[str] | None, typer.Option(
        "--variants",
        help="Plan family: a grid axis of cluster conditions, repeatable, e.g. 'bandwidth=1,0.5,0.25', "
             "'slowdown:gpu-board=1,3', 'absent:cpu-board'; 'default': nominal, each board 3x slower, each link 4x "
             "slower, each board absent. --out is then a folder (family.json + one plan file per distinct layout)."),
    ] = None,
    pin: Annotated[list[str] | None, typer.Option(
        "--pin",
        help="NAME=DEVICE, repeatable: a model input (forward() parameter name or inputK; its data stays on "
             "DEVICE with the layers only it feeds, planned as parallel branches) or a layer name / module path / "
             "glob (the stage holding it runs on DEVICE alone).")] = None,
    allow_raw_transfer: Annotated[list[str] | None, typer.Option(
        "--allow-raw-transfer",
        help="A pinned model input whose raw data may cross a link (repeatable); by default it never leaves its "
             "board.")] = None,
) -> None:
    """Choose stages x replica groups for MODEL on CLUSTER and print the report (baselines side by side)."""
    from edgeplan import jsonio
    from edgeplan.graph.load import build
    from edgeplan.graph.report import parse_input_shape
    from edgeplan.planner.api import check_min_gain, make_plan
    from edgeplan.planner.ilp import check_time_limit
    from edgeplan.planner.objective import Objective, parse_quantity
    from edgeplan.planner.plan import record_sources
    from edgeplan.planner.report import format_plan
    from edgeplan.profiles.load import load_cluster

    if objective is None:  # each mode's own default: a training plan has only one objective
        objective = PlanObjective.throughput if mode is PlanMode.inference else PlanObjective.time
    obj = Objective(
        mode=mode.value, objective=objective.value, batch=batch, microbatches=microbatches,
        schedule=(("none" if mode is PlanMode.inference else "1f1b") if schedule is PlanSchedule.auto
                  else schedule.value),
        latency_budget_s=parse_quantity(latency_budget, "time", "--latency-budget") if latency_budget else None,
        energy_budget_j=parse_quantity(energy_budget, "energy", "--energy-budget") if energy_budget else None,
        head=head, optimizer_states=optimizer_states,
    )
    check_min_gain(min_gain)
    check_time_limit(ilp_time_limit)
    clu = load_cluster(cluster)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    traced = build(model, shape)
    if (pin or allow_raw_transfer) and (variants or solver is not PlanSolver.dp):
        from edgeplan.errors import PlanError

        raise PlanError("--pin/--allow-raw-transfer plan with their own exact search: drop --variants and --solver")
    if variants or (out is not None and out.is_dir()):
        _plan_family(traced.graph, clu, obj, variants or [], out, solver.value, min_gain,
                     lambda p, c: record_sources(p, model_ref=model, input_shape=shape, cluster_path=str(cluster),
                                                 cluster=c))
        return
    plan = record_sources(make_plan(traced.graph, clu, obj, solver=solver.value, min_gain=min_gain,
                                    ilp_time_limit=ilp_time_limit, pins=tuple(pin or ()),
                                    allow_raw=tuple(allow_raw_transfer or ()), multi_unit=not one_unit_per_board),
                          model_ref=model, input_shape=shape, cluster_path=str(cluster), cluster=clu)
    typer.echo(format_plan(plan), nl=False)
    if out is not None:
        jsonio.write(out, plan.to_json())
        typer.echo(f"wrote {out}")
    if svg is not None:
        from edgeplan.planner.svg import draw

        typer.echo(f"wrote {draw(plan, svg)}")
    if check is not None and _plan_diff(check, plan, tolerance, "this plan"):
        typer.echo(f"plan differs from {check}; if intended, rewrite it with --out {check}", err=True)
        raise typer.Exit(1)


def _plan_family(graph, clu, obj, variants: list[str], out: Path | None, solver: str, min_gain: float,
                 record) -> None:
    """`plan --variants`: solve each condition, print the variant table, write FOLDER/family.json + plans."""
    from dataclasses import replace

    from edgeplan.planner import family as fam_mod

    head = obj.head or clu.head_name
    grid = [v for v in variants if v != "default"]
    conds = fam_mod.expand_grid(grid, clu, head) if grid else fam_mod.default_conditions(clu, head)
    fam, plans = fam_mod.make_family(graph, clu, replace(obj, head=head), conds, solver=solver, min_gain=min_gain,
                                     record=record)
    typer.echo(fam_mod.format_family(fam), nl=False)
    if out is not None:
        fam_mod.write_family(out, fam, plans)
        typer.echo(f"wrote {Path(out) / fam_mod.FAMILY_FILE} and {len(plans)} plan file(s); "
                   f"see it with `edgeplan show {out}`")


def _plan_diff(old, new, tolerance: float, name: str) -> list[str]:
    """Print the readable differences from plan ``old`` to ``new`` and return them."""
    from edgeplan.plandiff import diff_plans, format_diff

    lines = diff_plans(old, new, tolerance)
    typer.echo(format_diff(lines, str(old), name), nl=False)
    return lines


@app.command("diff")
def diff_cmd(
    old: Annotated[Path, typer.Argument(help="plan.json (or artifact folder), e.g. the golden one.")],
    new: Annotated[Path, typer.Argument(help="plan.json (or artifact folder) to compare with it.")],
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, max=0.99, help="Relative tolerance of predicted figures.")] = 0.02,
) -> None:
    """Readable differences between two plans (stages, devices, shares, predictions); exit 1 when they differ."""
    if _plan_diff(old, new, tolerance, str(new)):
        raise typer.Exit(1)


@app.command("show")
def show_cmd(
    plan: Annotated[Path, typer.Argument(help="plan.json from `edgeplan plan`.")],
    svg: Annotated[Path, typer.Option("--svg", help="Also draw the schedule and memory to this SVG.")] = None,
) -> None:
    """Print the report of a saved PLAN again (a plan family folder: its variant table)."""
    from edgeplan.planner.plan import load
    from edgeplan.planner.report import format_plan

    if plan.is_dir():
        from edgeplan.planner.family import format_family, load_family

        typer.echo(format_family(load_family(plan)[0]), nl=False)
        return
    p = load(str(plan))
    typer.echo(format_plan(p), nl=False)
    if svg is not None:
        from edgeplan.planner.svg import draw

        typer.echo(f"wrote {draw(p, svg)}")


# --- codegen / targets -------------------------------------------------------


class CompileBackend(str, Enum):
    auto = "auto"
    tvm = "tvm"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


@app.command("compile")
def compile_cmd(
    plan: Annotated[Path, typer.Argument(
        help="plan.json from `edgeplan plan` (or a plan family folder from "
             "`edgeplan plan --variants`).",
        exists=True)],
    model: Annotated[str | None, typer.Option(
        "--model", help="Override the model the plan recorded (zoo name, file.py:callable, torchvision:NAME).")] = None,
    *,
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to create (one sub-folder per board).")],
    cluster: Annotated[Path | None, typer.Option(
        "--cluster",
        exists=True,
        dir_okay=False,
        help="Override the cluster file the plan recorded (board addresses, target options); must be the same "
             "cluster (sha256).")] = None,
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", help="Override the plan's recorded input shape.")] = None,
    backend: Annotated[CompileBackend, typer.Option(
        "--backend", help="Module backend per stage.")] = CompileBackend.auto,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing artifact folder.")] = False,
    bind_any: Annotated[bool, typer.Option(
        "--bind-any", help="Workers listen on 0.0.0.0 instead of their board's address in the cluster file.")] = False,
    profiling_kit: Annotated[bool, typer.Option(
        "--profiling-kit",
        help="Also write each ONNX Runtime board's profiling kit: `sh <board>/profile.sh` "
             "there times it for `edgeplan calibrate --kit`.")] = False,
) -> None:
    """Compile every stage of PLAN for its boards into OUT, with launchers and a manifest."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeplan import jsonio
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.graph.report import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.fields[status]:<9}"),
                  TimeElapsedColumn(), transient=False) as bar:
        tasks: dict[str, int] = {}

        def on_event(ev) -> None:
            if ev.job not in tasks:
                tasks[ev.job] = bar.add_task(ev.job, total=1, status=ev.status, start=ev.status != "queued")
            task = tasks[ev.job]
            if ev.status == "running":
                bar.start_task(task)
            bar.update(task, status=ev.status, completed=1 if ev.status in ("done", "reused") else 0)

        if plan.is_dir():  # a plan family: every plan, each distinct stage module built once
            from edgeplan.adapt.compile import compile_family

            got = compile_family(plan, out, model_spec=model, cluster=cluster, backend=backend.value, force=force,
                                 progress=on_event, bind_any=bind_any, input_shape=shape)
            mods = sum(len(b["modules"]) for b in got["boards"].values())
            typer.echo(f"wrote {out}: {len(got['plans'])} variant(s), {got['modules_built']} module(s) built, "
                       f"{mods} held by {len(got['boards'])} board(s) (each once); run it with "
                       f"`edgeplan run {out} --adapt heuristic ...` (or serve; `edgeplan verify {out}`)")
            for warning in got.get("warnings", []):  # a module the board's profile says cannot run there
                typer.echo(f"warning: {warning}", err=True)
            return
        path = compile_plan(plan, model, out, cluster=cluster, backend=backend.value, progress=on_event,
                            force=force, input_shape=shape, bind_any=bind_any, profiling_kit=profiling_kit)
    report_file = path / "compile-report.json"  # training artifacts have none: no compiled modules
    compile_report = jsonio.read(report_file) if report_file.is_file() else {"notes": [], "jobs": []}
    for note in compile_report["notes"]:
        typer.echo(f"note: {note}")
    for warning in compile_report.get("warnings", []):  # a stage the board's profile says cannot run there
        typer.echo(f"warning: {warning}", err=True)
    for job in compile_report["jobs"]:
        if job.get("backend") in ("rknn", "openvino") and job.get("notes"):
            typer.echo(f"{job.get('device')}/stage{job.get('stage')} ({job['backend']}): {job['notes'][0]}")
    if (path / "training.json").is_file():
        typer.echo(f"training plan: run it with `edgeplan train {path} --local` (or start-training.sh per board)")
    boards = sorted(p.name for p in path.iterdir() if p.is_dir())
    typer.echo(f"wrote {path} ({', '.join(boards)}); check a copy with `edgeplan verify {path}`")


@app.command("adapt-train")
def adapt_train_cmd(
    family: Annotated[Path, typer.Argument(
        help="Plan family folder from `edgeplan plan --variants` (or its `edgeplan compile` output).",
        exists=True, file_okay=False)],
    model: Annotated[str | None, typer.Option("--model", help="Override the model the plans recorded.")] = None,
    cluster: Annotated[Path | None, typer.Option(
        "--cluster", exists=True, dir_okay=False, help="Override the cluster file the plans recorded (same sha256).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random traces, noise and exploration.")] = 0,
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Simulated traces of 120 s to train on.")] = 300,
) -> None:
    """Train the `--adapt rl` policy for FAMILY in the simulator (seeded); writes FAMILY/rl-policy.json."""
    from edgeplan.adapt import rl

    pol = rl.train_folder(family, model=model, cluster_file=cluster, seed=seed, episodes=episodes)
    path = rl.save(family, pol)
    typer.echo(f"wrote {path}: {len(pol.q)} trained context(s) x {len(pol.plans)} plan(s), seed {seed}, "
               f"{episodes} episode(s); serve with `--adapt rl`")


@app.command()
def verify(
    artifacts: Annotated[Path, typer.Argument(help="Artifact folder from `edgeplan compile`.")],
) -> None:
    """Check every file of ARTIFACTS against its manifest.json: missing, extra or altered files."""
    from edgeplan.codegen.manifest import verify as verify_dir

    problems = verify_dir(artifacts)
    for line in problems:
        typer.echo(line)
    if problems:
        typer.echo(f"{artifacts}: {len(problems)} problem(s); re-run `edgeplan compile` or copy again", err=True)
        raise typer.Exit(1)
    typer.echo(f"{artifacts}: every file matches manifest.json")


class Toolchain(str, Enum):
    rknn = "rknn"


toolchain_app = typer.Typer(help="Vendor toolchains that live in their own environments (NPU compilers).")
app.add_typer(toolchain_app, name="toolchain")


@toolchain_app.command("install")
def toolchain_install(
    name: Annotated[Toolchain, typer.Argument(help="Toolchain to install.")],
    venv: Annotated[Path | None, typer.Option(
        "--venv", help="Where to create it (default ~/.cache/edgeplan/rknn-venv or $EDGEPLAN_RKNN_VENV).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run every install step even if it is installed.")] = False,
) -> None:
    """Install a toolchain into its own venv (rknn: rknn-toolkit2 2.5.0, a few minutes and ~1.5 GB)."""
    from edgeplan.targets import rknn_env

    py = rknn_env.install(venv=venv, log=typer.echo, force=force)
    typer.echo(f"{name.value}: {py}")


@toolchain_app.command("status")
def toolchain_status(name: Annotated[Toolchain, typer.Argument(help="Toolchain to look for.")]) -> None:
    """Say whether a toolchain is installed, and where."""
    from edgeplan.targets import rknn_env

    py = rknn_env.find_rknn_python()
    if py is None:
        typer.echo(f"{name.value}: not installed at {rknn_env.default_venv()}; run: {rknn_env.INSTALL_HINT}")
        raise typer.Exit(1)
    typer.echo(f"{name.value}: installed, {py}")


# --- runtime -----------------------------------------------------------------


def _frame_secret(cluster: Path | None, secret_env: str | None) -> bytes | None:
    """The HMAC secret frames are signed with: from --secret-env, else the cluster file's secret_env."""
    from edgeplan.errors import ProfileError
    from edgeplan.runtime import wire

    if cluster is not None and secret_env is None:
        from edgeplan.profiles.load import load_cluster

        secret_env = load_cluster(cluster).secret_env
    try:
        return wire.secret_from_env(secret_env)
    except ValueError as e:
        raise ProfileError(f"{cluster or '--secret-env'}: {e}") from None


class AdaptPolicy(str, Enum):
    off = "off"
    heuristic = "heuristic"
    rl = "rl"
    oracle = "oracle"  # benchmark only, under `edgeplan emulate --trace`: switches on the trace's true conditions


AdaptOption = Annotated[AdaptPolicy, typer.Option(
    "--adapt",
    help="A compiled plan family: switch variants live as measured conditions change (heuristic: re-price "
         "every variant with the cost model, with hysteresis; rl: the policy `edgeplan adapt-train` wrote; "
         "oracle (benchmark, under `edgeplan emulate --trace`): the best variant under the trace's true conditions; "
         "off: keep the nominal variant).")]


WARM_UP_REQUESTS = 3  # per variant, before the first request: every module's first calls, and its model error


def _adapt_hook(policy: AdaptPolicy, artifacts, box: dict):
    """on_start for run/serve: attach the switching controller to a plan family's pipeline (None: --adapt off)."""
    if policy == AdaptPolicy.off:
        return None

    def attach(pipeline) -> None:
        from edgeplan.adapt.control import load_controller

        root = pipeline.artifacts.root.parent if pipeline.artifacts.variants else Path(artifacts)
        ctl = box["controller"] = load_controller(root, pipeline.head, policy.value)
        pipeline.controller = ctl.start(warm_up=WARM_UP_REQUESTS)

    return attach


@app.command()
def run(
    artifacts: CompiledArtifacts,
    local: LocalWorkers = False,
    cluster: DeployedCluster = None,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Seeded random requests to send.")] = 200,
    adapt: AdaptOption = AdaptPolicy.off,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    timeout: AttemptTimeout = 30.0,
    dead_after: DeadAfter = 1.5,
    window: Annotated[int, typer.Option(
        "--window", min=0, help="Requests in flight at once (0: twice the stages).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random requests.")] = 0,
    secret_env: SecretEnv = None,
    check: Annotated[bool, typer.Option(
        "--check",
        help="Also compare every output with the original PyTorch model "
             "(max abs error printed; exit 2 beyond --tolerance).")] = False,
    model: Annotated[str | None, typer.Option(
        "--model",
        help="--check: the model (default: the one plan.json "
             "records).")] = None,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="--check: largest allowed abs error.")] = 1e-4,
    strict: Annotated[bool, typer.Option(
        "--strict",
        help="Exit 3 when every request succeeded but workers failed "
             "on the way (default: exit 0 with a warning).")] = False,
) -> None:
    """Run ARTIFACTS: p50/p99 latency and throughput, measured beside the plan's prediction."""
    from edgeplan import jsonio
    from edgeplan.errors import ArtifactError, RuntimeFault
    from edgeplan.runtime import report as run_report
    from edgeplan.runtime.head import HeadConfig, PipelineError
    from edgeplan.runtime.local import ArtifactProblem, run_deployed, run_local
    from edgeplan.testbed.emulate import placement_from_env

    testbed = placement_from_env() if not local and cluster is None else None
    if testbed is None and local == (cluster is not None):
        raise ArtifactError("edgeplan run: give exactly one of --local (processes here) or --cluster FILE (boards), "
                            "or run it inside `edgeplan emulate CLUSTER -- edgeplan run ...`")
    if cluster is None:  # every worker runs on this machine: its modules must be built for it
        from edgeplan.hostcheck import check_runs_here

        check_runs_here(artifacts, "emulated" if testbed else "--local")
    secret = _frame_secret(cluster, secret_env)
    cfg = HeadConfig(request_timeout_s=timeout, dead_after_s=dead_after, window=window, secret=secret)
    inputs = None
    if check:  # the same seeded requests, kept to feed the reference model afterwards
        from edgeplan.check import model_spec
        from edgeplan.runtime.local import RandomInputs, discover

        found = discover(artifacts)
        spec = model_spec(found.plan, model, str(found.root / "plan.json"))
        inputs = RandomInputs(next(s for _, s in found.stages if s.stage == 0), found.batch, requests, seed)
    adapted: dict = {}
    on_start = _adapt_hook(adapt, artifacts, adapted)
    try:
        if testbed is not None:
            placement, head_host = testbed
            art, result = run_local(artifacts, requests, seed=seed, config=cfg, secret=secret,
                                    placement=placement, head_host=head_host, inputs=inputs, on_start=on_start)
        elif local:
            art, result = run_local(artifacts, requests, seed=seed, config=cfg, secret=secret, inputs=inputs,
                                    on_start=on_start)
        else:
            art, result = run_deployed(artifacts, requests, seed=seed, config=cfg, inputs=inputs, on_start=on_start)
    except ArtifactProblem as e:
        raise ArtifactError(str(e)) from None
    except PipelineError as e:
        raise RuntimeFault(str(e)) from None
    rep = run_report.build(art.plan, result, "emulated" if testbed else "local" if local else "cluster")
    typer.echo(run_report.format_table(rep), nl=False)
    if art.variants:  # a plan family: its switches, and that no request was lost or answered twice
        from edgeplan.adapt.control import adapt_report, format_adapt

        rep["adapt"] = adapt_report(adapt.value, result, adapted.get("controller"))
        typer.echo(format_adapt(rep["adapt"]))
    if report is not None:
        jsonio.write(report, rep)
        typer.echo(f"wrote {report}")
    checked = None
    if check:
        from edgeplan.check import CheckFailed, compare

        last = max((s for _, s in art.stages), key=lambda s: s.stage)
        checked = compare(spec, inputs, result.outputs, [t.name for t in last.outputs], tolerance)
        typer.echo(checked.describe())
    if result.failures:
        dead = "; ".join(f.describe() for f in result.faults) or "no worker died"
        raise RuntimeFault(f"{len(result.failures)} of {requests} request(s) failed; {dead}; "
                           "see the worker logs, fix or restart that board, and run again")
    if result.faults:  # every request answered: the pipeline routed around them
        survived = "; ".join(f.describe() for f in result.faults)
        typer.echo(f"warning: all {requests} requests succeeded, routed around {len(result.faults)} failed "
                   f"worker(s): {survived}; see the worker logs and restart that board", err=True)
    if checked is not None and not checked.ok:
        raise CheckFailed(f"outputs differ from {spec} by up to {checked.max_abs_error:.3g} (request "
                          f"{checked.worst_request}, output {checked.worst_output}) > --tolerance {tolerance:g}; "
                          "a stage was compiled from another model or a backend is wrong: re-run `edgeplan compile`")
    if strict and result.faults:
        raise typer.Exit(3)


@app.command()
def top(
    url: Annotated[str | None, typer.Option(
        "--url", help="Head's serving endpoint, e.g. http://127.0.0.1:8000.")] = None,
    cluster: Annotated[Path | None, typer.Option(
        "--cluster",
        exists=True,
        dir_okay=False,
        help="Cluster YAML: poll the head device's address at --port.")] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="The plan's head device (with --cluster; default: the cluster's first, as in plan).")] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Head's HTTP port (with --cluster).")] = 8000,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls of /metrics.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one table and exit (scripts, tests).")] = False,
) -> None:
    """Live table from the head's /metrics: per board CPU, memory, link Mbit/s, per stage ms measured vs predicted."""
    from edgeplan import top as top_mod

    if url is not None and cluster is not None:
        raise top_mod.TopError("edgeplan top: give --url or --cluster, not both")
    if url is None:
        url = top_mod.head_url(cluster, port, head) if cluster is not None else f"http://127.0.0.1:{port}"
    top_mod.run(url, interval_s=interval, once=once)


def _pipeline_source(local: bool, cluster: Path | None, what: str):
    """(placement, head host) inside `edgeplan emulate`, else None; errors unless exactly one source is given."""
    from edgeplan.errors import ArtifactError
    from edgeplan.testbed.emulate import placement_from_env

    testbed = placement_from_env() if not local and cluster is None else None
    if testbed is None and local == (cluster is not None):
        raise ArtifactError(f"edgeplan {what}: give exactly one of --local (processes here) or --cluster FILE "
                            f"(boards), or run it inside `edgeplan emulate CLUSTER -- edgeplan {what} ...`")
    return testbed


@app.command()
def serve(
    artifacts: CompiledArtifacts,
    local: LocalWorkers = False,
    cluster: DeployedCluster = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port (0: any free port).")] = 8000,
    name: Annotated[str | None, typer.Option(
        "--name",
        help="Model name in the URLs (default: the plan's model, "
             "characters outside [A-Za-z0-9_.-] replaced by _).")] = None,
    max_delay_ms: Annotated[float, typer.Option(
        "--max-delay-ms",
        min=0.0,
        help="How long a partial plan batch waits for more samples while the "
             "pipeline is busy (an idle one gets it at once).")] = 2.0,
    max_request_bytes: Annotated[int, typer.Option(
        "--max-request-bytes", min=1024, help="Larger request bodies get 413.")] = 64 << 20,
    window: Annotated[int, typer.Option(
        "--window", min=0, help="Plan batches in flight at once (0: twice the stages).")] = 0,
    timeout: AttemptTimeout = 30.0,
    dead_after: DeadAfter = 1.5,
    secret_env: SecretEnv = None,
    adapt: AdaptOption = AdaptPolicy.off,
) -> None:
    """Serve ARTIFACTS over the Open Inference Protocol (KServe v2 REST; tritonclient, curl) and /metrics.

    Example: edgeplan serve art/ --local --port 8000; curl localhost:8000/v2/health/ready
    """
    from edgeplan.errors import ArtifactError, RuntimeFault
    from edgeplan.runtime.batcher import BatcherConfig
    from edgeplan.runtime.head import HeadConfig, PipelineError
    from edgeplan.runtime.local import ArtifactProblem
    from edgeplan.runtime.serve import Server, serve_forever

    testbed = _pipeline_source(local, cluster, "serve")
    secret = _frame_secret(cluster, secret_env)
    placement, head_host = testbed if testbed is not None else (None, "127.0.0.1")
    try:
        server = Server(artifacts, local=local or testbed is not None, host=host, port=port, name=name,
                        head_config=HeadConfig(request_timeout_s=timeout, dead_after_s=dead_after, window=window,
                                               secret=secret),
                        batcher_config=BatcherConfig(max_delay_s=max_delay_ms / 1e3),
                        max_request_bytes=max_request_bytes, secret=secret, placement=placement,
                        head_host=head_host, on_start=_adapt_hook(adapt, artifacts, {}))
    except ArtifactProblem as e:
        raise ArtifactError(str(e)) from None
    except PipelineError as e:
        raise RuntimeFault(str(e)) from None
    except OSError as e:
        raise RuntimeFault(f"{e}; pick another --port") from None
    serve_forever(server, typer.echo)


@app.command()
def infer(
    artifacts: Annotated[str, typer.Argument(help="Artifact folder from `edgeplan compile` (or use --url).")],
    inputs: Annotated[list[Path], typer.Option(
        "--inputs",
        help="A .npy or .npz file, a folder of .npy files or "
             "images, or image files (repeatable).")],
    outputs: Annotated[Path, typer.Option("--outputs", help="Where to write the outputs: .npy (one output) or .npz.")],
    local: Annotated[bool, typer.Option("--local", help="Start every worker here.")] = False,
    cluster: Annotated[Path | None, typer.Option(
        "--cluster", exists=True, dir_okay=False, help="Use the workers deployed on the boards.")] = None,
    url: Annotated[bool, typer.Option("--url", help="ARTIFACTS is the URL of an `edgeplan serve` endpoint.")] = False,
    name: Annotated[str | None, typer.Option(
        "--name", help="With --url: the model name (default: the server's one).")] = None,
    normalize: Annotated[str, typer.Option(
        "--normalize",
        help="Images: auto | imagenet | unit | raw "
             "(see `edgeplan.infer_files`).")] = "auto",
) -> None:
    """Run files through ARTIFACTS and save the outputs (rows in input order, sorted file names).

    Example: edgeplan infer art/ --local --inputs frames/ --outputs preds.npy
    """
    from edgeplan import infer_files
    from edgeplan.client import connect

    if normalize not in infer_files.NORMALIZE:
        raise infer_files.InputFileError(f"--normalize {normalize!r}: use one of {', '.join(infer_files.NORMALIZE)}")
    if url:
        if local or cluster is not None:
            raise infer_files.InputFileError("edgeplan infer: --url takes neither --local nor --cluster")
        pipe = connect(artifacts, name=name)
    else:
        _pipeline_source(local, cluster, "infer")
        pipe = connect(artifacts, local=local, cluster=cluster)
    with pipe:
        src = infer_files.open_inputs(inputs, pipe.input_specs, normalize)
        typer.echo(f"{src.n} sample(s) from {len(inputs)} path(s)", err=True)
        chunk = int(getattr(getattr(pipe, "head", None), "batch", 8))
        ys = infer_files.run_files(pipe, src.chunks(chunk), src.n, progress=infer_files.text_progress())
    path = infer_files.save_outputs(outputs, ys, [n for n, _, _ in pipe.output_specs])
    shapes = ", ".join(f"{n} {list(y.shape)}" for (n, _, _), y in zip(pipe.output_specs, ys, strict=True))
    typer.echo(f"wrote {path} ({shapes})")


# --- training ----------------------------------------------------------------


class SyncMode(str, Enum):
    sync = "sync"
    local_sgd = "local-sgd"


class TrainSchedule(str, Enum):
    gpipe = "gpipe"
    one_f_one_b = "1f1b"


@app.command()
def train(
    artifacts: Annotated[Path, typer.Argument(
        help="Training artifacts from `edgeplan compile` of a --mode training plan.", exists=True, file_okay=False)],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs to train (counting those a --resume skips).")] = 1,
    dataset: Annotated[str | None, typer.Option(
        help="digits (scikit-learn 8x8, fitted to the model input; the default when no --dataset-dir is "
             "given) or synthetic (class prototypes + noise, for speed tests).")] = None,
    dataset_dir: Annotated[Path | None, typer.Option(
        "--dataset-dir", file_okay=False,
        help="Folder with CIFAR-10 binary (data_batch_*.bin, test_batch.bin), MNIST IDX "
             "(train-images-idx3-ubyte ..., .gz too) or x.npy/y.npy; format detected, fitted to the model "
             "input.")] = None,
    samples: Annotated[int | None, typer.Option(
        min=1, help="Use a fixed seeded subset of this many samples of each split (quick runs).")] = None,
    local: Annotated[bool, typer.Option("--local", help="Run every rank on this machine (127.0.0.1).")] = False,
    device: Annotated[list[str], typer.Option(
        "--device",
        help="Run only this board's ranks (repeatable); what each "
             "board's start-training.sh does.")] = (),
    sync: Annotated[SyncMode | None, typer.Option(
        help="sync: all-reduce every iteration; local-sgd: periodic "
             "weight averaging (default: the mode chosen at compile).")] = None,
    sync_every: Annotated[int, typer.Option(min=1, help="local-sgd: iterations between weight averages.")] = 4,
    sync_bn: Annotated[bool, typer.Option(
        "--sync-bn", help="BatchNorm layers of a replicated stage normalise with the batch statistics of the "
                          "whole replica group (all-reduced), as single-process training does.")] = False,
    schedule: Annotated[TrainSchedule | None, typer.Option(help="Override the plan's pipeline schedule.")] = None,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = 0.05,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the data split and sample order.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds any rank waits for a peer before failing the run.")] = 60.0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest checkpoint all ranks hold.")] = False,
    max_iters: Annotated[int | None, typer.Option(min=1, help="Cap iterations per epoch (speed tests).")] = None,
    run_dir: Annotated[Path | None, typer.Option(
        help="Checkpoints, metrics and the final state_dict "
             "(default ARTIFACTS/run).")] = None,
    data_dirs: Annotated[list[str], typer.Option(
        "--data", help="SOURCE=DIR (repeatable): a source board's own data folder for its branch (plans of an "
                       "`edgeplan fpl` model); a source without one, or whose folder is missing, sits out. On a "
                       "one-stage data-parallel plan, BOARD=DIR for every replica: each trains on its own board's "
                       "aligned view, all on the same sample indices.")] = (),
    absent: Annotated[list[str], typer.Option(
        "--absent", help="SOURCE=EPOCHS (e.g. cam-b=2-3): that source's board is away in those epochs (1-based); "
                         "its branch is skipped and its junction weight masked.")] = (),
    report: Annotated[Path | None, typer.Option(
        "--report", dir_okay=False,
        help="Write the last epoch's figures per stage replica, measured beside the plan's predictions, as "
             "JSON (what `edgeplan calibrate` fits training figures from).")] = None,
) -> None:
    """Hybrid data + pipeline parallel training; prints loss, accuracy, time and energy per epoch.

    Example: edgeplan train train-artifacts/ --local --epochs 2 --dataset digits
    """
    from edgeplan.training import launch
    from edgeplan.training.config import TrainConfig

    if dataset is not None and dataset_dir is not None:
        raise EdgeplanError("edgeplan train: give --dataset or --dataset-dir, not both")
    dataset = str(dataset_dir) if dataset_dir is not None else dataset or "digits"
    cfg = TrainConfig(epochs=epochs, dataset=dataset, samples=samples, lr=lr, momentum=momentum,
                      weight_decay=weight_decay,
                      sync=sync.value if sync else None, sync_every=sync_every, sync_bn=sync_bn,
                      schedule=schedule.value if schedule else None,
                      seed=seed, timeout_s=timeout, resume=resume, max_iters=max_iters)
    if data_dirs or absent:
        from edgeplan.training import sources

        art = launch.load(artifacts)
        cfg = sources.configure(art.table["model"], art.plan, cfg, list(data_dirs), list(absent))
    result = launch.run(artifacts, cfg, local=local, devices=tuple(device), run_dir=run_dir, echo=typer.echo)
    if result.epochs and result.epochs[-1].get("figures"):
        from edgeplan.training.metrics import format_figures

        typer.echo(format_figures(result.epochs[-1]), nl=False)
    if report is not None:
        from edgeplan import jsonio

        jsonio.write(report, launch.report(launch.load(artifacts), result, cfg))
        typer.echo(f"wrote {report}; fit the cluster with `edgeplan calibrate {report} --cluster CLUSTER --out OUT`")
    if result.state_dict:
        typer.echo(f"model state_dict (original module keys): {result.state_dict}")


# --- testbed / deploy --------------------------------------------------------


@app.command()
def emulate(
    cluster: Annotated[Path, typer.Argument(help="Cluster YAML to emulate.", exists=True, dir_okay=False)],
    command: Annotated[list[str] | None, typer.Argument(
        help="Command to run inside (after --), e.g. edgeplan run art/ --requests 200.")] = None,
    write_cluster: Annotated[Path | None, typer.Option(
        "--write-cluster",
        dir_okay=False,
        help="Write the cluster as emulated here (boards = this CPU x quota, shaped links, the head on this "
             "machine behind its own shaped leg: `head:`) to plan against.")] = None,
    host_gflops: Annotated[float | None, typer.Option(
        help="This machine's single-core conv GFLOP/s (default: measured); use the same value for "
             "--write-cluster and the run so quotas match.")] = None,
    trace: Annotated[Path | None, typer.Option(
        "--trace",
        exists=True,
        dir_okay=False,
        help="YAML list of timed events applied while COMMAND runs: link bandwidth, a board's CPU quota, a board "
             "down (examples/traces/).")] = None,
) -> None:
    """Run COMMAND against an emulated cluster on this machine (needs root).

    Each board becomes a network namespace, links are shaped to the cluster's
    bandwidths and CPU quotas are scaled to the boards' speeds.
    Example: edgeplan emulate examples/clusters/three-node-hetero.yaml -- edgeplan run art/ --requests 200
    """
    from edgeplan.errors import EdgeplanError
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import calibrate
    from edgeplan.testbed import emulate as testbed

    if not command and write_cluster is None:
        raise EdgeplanError("edgeplan emulate: give a COMMAND after `--`, or --write-cluster FILE, or both")
    spec = load_cluster(cluster)
    scripted = None
    if trace is not None:
        from edgeplan.testbed import trace as trace_mod

        if not command:
            raise EdgeplanError("edgeplan emulate: --trace needs a COMMAND after `--` to run while it applies")
        scripted = trace_mod.load(trace, spec)
    host = None
    if write_cluster is not None:
        typer.echo("measuring this machine per op class (ONNX Runtime, one thread)...")
        host = calibrate.measure()
        if host_gflops:
            host = host.scaled_to(host_gflops * 1e9)
        plan_shape = testbed.shape(spec, host.of("conv"))
        testbed.write_emulated_cluster(write_cluster, spec, plan_shape, host)
        typer.echo(f"wrote {write_cluster} (dilation {plan_shape.dilation:.3g}, host conv "
                   f"{host.of('conv') / 1e9:.4g} GFLOP/s per core)")
    if command:
        flops = host_gflops * 1e9 if host_gflops else (host.of("conv") if host else None)
        raise typer.Exit(testbed.run(spec, command, host_core_flops=flops, echo=typer.echo, trace=scripted))


@app.command()
def deploy(
    artifacts: CompiledArtifacts,
    cluster: Annotated[Path, typer.Option(
        "--cluster", help="Cluster YAML: each board's host[:port] and `user`.", exists=True, dir_okay=False)],
    remote_dir: Annotated[str, typer.Option(
        help="Folder on each board (relative to the SSH user's home).")] = "edgeplan",
    ssh_user: Annotated[str | None, typer.Option(
        help="SSH user for devices whose cluster entry names none (there is no default, never root).")] = None,
    ssh_port: Annotated[int, typer.Option(help="SSH port when the address names none.")] = 22,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="Private key file.")] = None,
    start: Annotated[bool, typer.Option(
        help="Stop each board's old workers and start the new ones after verifying.")] = True,
    known_hosts: Annotated[Path | None, typer.Option(
        "--known-hosts", dir_okay=False, help="known_hosts file (default ~/.ssh/known_hosts).")] = None,
    accept_new_host_keys: Annotated[bool, typer.Option(
        "--accept-new-host-keys",
        help="Record the host key of a board not in known_hosts (like ssh's accept-new); a changed key is "
             "still refused.")] = False,
) -> None:
    """Copy each board's folder over SSH (changed files only), verify sha256 there, stop the old workers, start it."""
    from edgeplan.deploy import ssh
    from edgeplan.profiles.load import load_cluster

    spec = load_cluster(cluster)
    targets = [ssh.target_for(device, i, cluster, ssh_user, ssh_port)  # every login checked before any upload
               for i, device in enumerate(spec.devices) if (artifacts / device.name).is_dir()]
    if not targets:
        raise ssh.DeployError(f"{artifacts}: no folder named after a device of {cluster} "
                              f"({', '.join(d.name for d in spec.devices)}); compile for this cluster")
    failed = False
    for target in targets:
        r = ssh.deploy_board(artifacts, target, remote_dir, key_filename=str(identity) if identity else None,
                             start=start, known_hosts=str(known_hosts) if known_hosts else None,
                             accept_new_host_keys=accept_new_host_keys)
        state = "verified" if r.verified else "FAILED verification"
        stopped = f", stopped {len(r.stopped)} old worker process(es)" if r.stopped else ""
        if r.started and not r.stopped:
            stopped = ", no old workers running"
        typer.echo(f"{r.device:<14} {target.user}@{target.host}: sent {len(r.uploaded)} files "
                   f"({r.bytes_sent / 1e6:.1f} MB), {r.unchanged} unchanged, {state}{stopped}"
                   f"{', started' if r.started else ''}")
        for n in r.notes:
            typer.echo(f"  {n}")
        for p in r.problems:
            typer.echo(f"  {p}", err=True)
        failed |= not r.verified or (start and not r.started)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
