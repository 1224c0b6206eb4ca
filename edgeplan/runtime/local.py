"""Run an artifact folder: every worker as a local process or the deployed boards.

``start_pipeline`` gives a running Head service over either (``edgeplan serve`` uses it);
``run_local``/``run_deployed`` run a fixed list of requests through it (``edgeplan run``).

Workers bind 127.0.0.1 on a free port (``--listen 127.0.0.1:0``) and print the
port they got; the head then tells every worker the addresses actually in use
in its first ROUTE frame, so nothing in the artifacts is rewritten. Each worker
runs from the board's own copy of the runtime (``<device>/edgeplan_runtime``),
exactly as on the board.

``placement`` puts each device's workers somewhere else on this machine: an argv
prefix that runs a process inside that board (the emulated testbed's network
namespace + CPU cgroup) and the address to bind there.
"""

import collections.abc
import os
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .head import FamilyHead, Head, HeadConfig, PipelineError, RunResult
from .spec import StageSpec

SECRET_ENV = "EDGEPLAN_LOCAL_SECRET"


class ArtifactProblem(Exception):
    """The artifact folder is missing a file the run needs (names it and the fix)."""


FAMILY_SUMMARY = "compile-family.json"  # edgeplan/adapt/compile.py writes it at the root of a compiled plan family


@dataclass(frozen=True)
class Artifacts:
    """One compiled plan, or (``variants`` not empty) a compiled plan family: then ``root``, ``plan`` and
    ``stages`` are its initial variant's (the nominal condition's plan) and ``variants`` holds every
    variant, the initial one first."""

    root: Path
    plan: dict
    stages: Tuple[Tuple[Path, StageSpec], ...]  # (stage folder, spec) per (stage, replica), plan order
    variant: str = ""  # a family variant's name (plan-K); its slots' files are <module>/plan-K-stageS.json
    variants: Tuple["Artifacts", ...] = ()

    def spec_file(self, stage_dir: Path, spec: StageSpec) -> Path:
        """The stage.json of one (stage, replica): a family's slots share their module's folder."""
        return stage_dir / (f"{self.variant}-stage{spec.stage}.json" if self.variant else "stage.json")

    @property
    def batch(self) -> int:
        return int(self.plan["batch"])

    @property
    def microbatches(self) -> int:
        return int(self.plan["microbatches"])


def discover(root: "Union[str, os.PathLike]") -> Artifacts:
    """Read plan.json and the stage.json of every replica it names."""
    import json

    root = Path(root).resolve()  # workers run with their board folder as cwd
    if (root / FAMILY_SUMMARY).is_file() and not (root / "plan.json").is_file():
        return _discover_family(root)
    plan_path = root / "plan.json"
    try:
        plan = json.loads(plan_path.read_text())
    except FileNotFoundError:
        raise ArtifactProblem(f"{plan_path}: missing; is {root} an `edgeplan compile` output folder?") from None
    except ValueError as e:
        raise ArtifactProblem(f"{plan_path}: not JSON ({e}); re-run `edgeplan compile`") from None
    stages = []
    try:
        for st in plan["stages"]:
            for r in st["replicas"]:
                d = root / r["device"] / f"stage{st['index']}"
                try:
                    spec = StageSpec.load(str(d / "stage.json"))
                except FileNotFoundError:
                    raise ArtifactProblem(f"{d}/stage.json: missing (plan stage {st['index']} on {r['device']}); "
                                          "re-run `edgeplan compile`") from None
                except (ValueError, KeyError, TypeError) as e:
                    raise ArtifactProblem(f"{d}/stage.json: invalid ({e}); re-run `edgeplan compile`") from None
                stages.append((d, spec))
        plan["batch"], plan["microbatches"]  # noqa: B018 - presence check
    except (KeyError, TypeError) as e:
        raise ArtifactProblem(f"{plan_path}: not a plan file (missing {e}); re-run `edgeplan plan`") from None
    if not stages:
        raise ArtifactProblem(f"{plan_path}: the plan has no stages")
    m = stages[0][1].microbatch
    if m * int(plan["microbatches"]) != int(plan["batch"]):
        raise ArtifactProblem(f"{root}: stage.json micro-batch {m} x {plan['microbatches']} micro-batches != "
                              f"plan batch {plan['batch']}; the folder mixes two compiles; re-run `edgeplan compile`")
    return Artifacts(root, plan, tuple(stages))


def _discover_family(root: Path) -> Artifacts:
    """A compiled plan family (adapt/compile.py): every variant's plan and slots, the initial variant first."""
    import json

    path = root / FAMILY_SUMMARY
    try:
        summary = json.loads(path.read_text())
        boards, names, initial = summary["boards"], list(summary["plans"]), summary["initial"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactProblem(f"{path}: not a compiled plan family ({e!r}); re-run `edgeplan compile` on the "
                              "family folder with this edgeplan") from None
    variants = []
    for name in [initial] + [n for n in names if n != initial]:
        vroot = root / name
        try:
            plan = json.loads((vroot / "plan.json").read_text())
            stages = []
            for st in plan["stages"]:
                for r in st["replicas"]:
                    slot = next(x for x in boards[r["device"]]["slots"][name] if x["stage"] == st["index"])
                    spec_path = root / r["device"] / slot["spec"]
                    stages.append((spec_path.parent, StageSpec.load(str(spec_path))))
        except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
            raise ArtifactProblem(f"{vroot}: variant {name} is incomplete ({e!r}); re-run `edgeplan compile` on "
                                  "the family folder") from None
        variants.append(Artifacts(vroot, plan, tuple(stages), variant=name))
    return replace(variants[0], variants=tuple(variants))


class RandomInputs(collections.abc.Sequence):
    """Seeded random requests made on demand (a retry re-creates the same request)."""

    def __init__(self, spec: StageSpec, batch: int, n: int, seed: int = 0):
        self.shapes = [(batch, *t.shape[1:]) for t in spec.inputs]
        self.dtypes = [np.dtype(t.dtype) for t in spec.inputs]
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.RandomState([self.seed, i])  # not default_rng: numpy 1.17+, and boards may have 1.16
        out = []
        for shape, dt in zip(self.shapes, self.dtypes):
            if dt.kind == "f":
                out.append(rng.standard_normal(shape).astype(dt))
            elif dt.kind == "b":
                out.append(rng.randint(0, 2, shape).astype(dt))
            else:
                out.append(rng.randint(0, 10, shape).astype(dt))
        return out


@dataclass
class LocalWorker:
    device: str
    stage: int
    process: subprocess.Popen
    log_path: Path
    address: str = ""
    argv: Tuple[str, ...] = ()  # how it was started (without ``--listen``), for restart_worker
    env: dict = field(default_factory=dict)
    cwd: Optional[Path] = None
    slots: Tuple[Tuple[str, int], ...] = ()  # plan family: (variant, stage) of each slot it serves, --stage order
    addresses: List[str] = field(default_factory=list)  # the address each slot bound, in that order

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _default_command(board: Path) -> Tuple[List[str], dict]:
    """Run the board's copy of the runtime when there is one, else this package."""
    if (board / "edgeplan_runtime" / "worker.py").is_file():
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(board), os.environ.get("PYTHONPATH")]))}
        return [sys.executable, "-m", "edgeplan_runtime.worker"], env
    return [sys.executable, "-m", f"{__package__}.worker"], {}


Placement = Mapping[str, Tuple[Sequence[str], str]]  # device -> (argv prefix, host to bind)


def _spawn(w: LocalWorker, listens: Sequence[str]) -> None:
    """Start (or start again) worker ``w``'s process, its slots binding ``listens``; stderr appends to its log."""
    argv = list(w.argv)
    for listen in listens:
        argv += ["--listen", listen]
    w.addresses = []
    with open(w.log_path, "ab") as log:
        w.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=w.env, cwd=w.cwd)


def _await_ready(workers: Sequence[LocalWorker], timeout_s: float, log_dir: Path) -> None:
    """Wait for every worker's ``READY host:port`` line and record the address it bound."""
    sel = selectors.DefaultSelector()
    try:
        for w in workers:
            sel.register(w.process.stdout, selectors.EVENT_READ, w)
        deadline = time.monotonic() + timeout_s
        waiting = len(workers)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                slow = [f"{w.device}/stage{w.stage}" for w in workers if not w.address]
                raise PipelineError(f"workers {slow} not ready after {timeout_s:g}s; see logs in {log_dir}")
            for key, _ in sel.select(timeout=min(left, 0.5)):
                w = key.data
                line = w.process.stdout.readline().decode(errors="replace").strip()
                if line.startswith("READY "):
                    w.addresses = line.split()[1:]  # one address per slot it serves
                    w.address = w.addresses[0]
                    sel.unregister(key.fileobj)
                    waiting -= 1
                elif not line and w.process.poll() is not None:
                    raise PipelineError(f"worker {w.device}/stage{w.stage} exited with code {w.process.returncode} "
                                        f"before it was ready:\n{w.log_tail()}")
    finally:
        sel.close()


def start_workers(art: Artifacts, log_dir: Path, secret: Optional[bytes] = None,
                  command: Optional[Sequence[str]] = None, start_timeout_s: float = 120.0,
                  placement: Optional[Placement] = None) -> List[LocalWorker]:
    """Start every worker (on 127.0.0.1:0, or per ``placement``) and wait for each one's READY line.

    A plan family (``art.variants``) starts one process per board and module, serving every (variant,
    stage) slot that runs that module (see the worker's ``main``): all modules loaded before any request.
    """
    groups: Dict[Tuple[str, Path], list] = {}  # (device, stage folder) -> [(variant, spec)]
    for v in art.variants or (art,):
        for stage_dir, spec in v.stages:
            groups.setdefault((spec.device, stage_dir), []).append((v, spec))
    workers: List[LocalWorker] = []
    try:
        for (device, stage_dir), slots in groups.items():
            cmd, extra_env = (list(command), {}) if command else _default_command(stage_dir.parent)
            env = {**os.environ, **extra_env}
            prefix, host = (placement or {}).get(device, ((), "127.0.0.1"))
            argv = [*prefix, *cmd]
            for v, spec in slots:
                argv += ["--stage", str(v.spec_file(stage_dir, spec))]
            if secret:
                env[SECRET_ENV] = secret.decode()
                argv += ["--secret-env", SECRET_ENV]
            first = slots[0][1]
            name = f"{device}-{stage_dir.name}" if art.variants else f"{device}-stage{first.stage}"
            log_path = log_dir / f"{name}.log"
            log_path.write_bytes(b"")
            w = LocalWorker(device, first.stage, None, log_path, argv=tuple(argv), env=env, cwd=stage_dir.parent,
                            slots=tuple((v.variant, spec.stage) for v, spec in slots) if art.variants else ())
            _spawn(w, [f"{host}:0"] * len(slots))
            workers.append(w)
        _await_ready(workers, start_timeout_s, log_dir)
    except BaseException:
        stop_workers([w for w in workers if w.process is not None], grace_s=0.0)
        raise
    return workers


def restart_worker(w: LocalWorker, start_timeout_s: float = 60.0) -> None:
    """Start a worker that exited (or was killed) again at the same address, as a rebooted board would;
    a running head re-admits it on its own (see Head's re-join)."""
    if w.process.poll() is None:
        raise PipelineError(f"worker {w.device}/stage{w.stage} is still running (pid {w.process.pid}); stop it first")
    if w.process.stdout:
        w.process.stdout.close()
    addresses, w.address = list(w.addresses) or [w.address], ""
    _spawn(w, addresses)
    try:
        _await_ready([w], start_timeout_s, w.log_path.parent)
    except BaseException:
        stop_workers([w], grace_s=0.0)
        raise


def stop_workers(workers: Sequence[LocalWorker], grace_s: float = 3.0) -> None:
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.terminate()
    for w in workers:
        try:
            w.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()
        if w.process.stdout:
            w.process.stdout.close()


@dataclass
class Pipeline:
    """A started Head over an artifact folder's workers; ``close()`` stops the head and any workers it started.

    Unpacks as ``head, stop = start_pipeline(...)`` too.
    """

    artifacts: Artifacts
    head: Head
    workers: List[LocalWorker]  # processes started here (empty when driving deployed boards)
    log_dir: Optional[Path] = None
    controller: object = None  # a plan family's switching controller (edgeplan.adapt.control): stopped first

    def __iter__(self):
        return iter((self.head, self.close))

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.head.close()
        dead = {(f.device, f.stage) for f in self.head.faults}
        for w in self.workers:  # a worker the head gave up on may be hung: no grace period
            if (w.device, w.stage) in dead and w.process.poll() is None:
                w.process.kill()
        stop_workers(self.workers)


def _predicted_compute_s(plan: dict) -> Dict[int, float]:
    return {int(st["index"]): float(st["compute_s"]) for st in plan.get("stages", ())
            if st.get("compute_s") is not None}


def _deployed_addresses(art: Artifacts) -> Tuple[str, str, dict]:
    """head.json's listen/advertised address and every worker's address as its neighbours know it."""
    import json

    try:
        head_json = json.loads((art.root / "head.json").read_text())
        listen_at, advertise = head_json["listen"], head_json["address"]
    except FileNotFoundError:
        raise ArtifactProblem(f"{art.root}/head.json: missing; re-run `edgeplan compile` with --cluster") from None
    except (ValueError, KeyError) as e:
        raise ArtifactProblem(f"{art.root}/head.json: invalid ({e}); re-run `edgeplan compile`") from None
    # Workers bind a wildcard; peers reach them at the addresses their neighbours' stage.json name.
    addresses = {}
    for _, spec in art.stages:
        for p in (*spec.upstream, *spec.downstream):
            if p.device != "head":
                addresses[(p.device, p.stage)] = p.address
    for p in head_json.get("downstream", ()):
        addresses[(p["device"], p["stage"])] = p["address"]
    return listen_at, advertise, addresses


def start_pipeline(artifacts: "Union[str, os.PathLike]", *, local: bool, config: Optional[HeadConfig] = None,
                   secret: Optional[bytes] = None, command: Optional[Sequence[str]] = None,
                   log_dir: "Union[str, os.PathLike, None]" = None, log: Optional[Callable[[str], None]] = None,
                   placement: Optional[Placement] = None, head_host: str = "127.0.0.1") -> Pipeline:
    """A running Head (``start()`` done) over ``artifacts``: with ``local``, every worker is started here
    (127.0.0.1, or per ``placement``) and stopped by ``close()``; otherwise the head drives the workers
    deployed on the boards at the addresses compile wrote (head.json, stage.json peers)."""
    art = discover(artifacts)
    cfg = config or HeadConfig()
    if secret:
        cfg = replace(cfg, secret=secret)
    if art.variants:
        return _start_family(art, local, cfg, command, log_dir, log, placement, head_host)
    predicted = _predicted_compute_s(art.plan)
    specs = [s for _, s in art.stages]
    if not local:
        listen_at, advertise, addresses = _deployed_addresses(art)
        head = Head.from_specs(specs, art.microbatches, listen_at, addresses, cfg, log, advertise,
                               predicted_compute_s=predicted)
        head.start()
        return Pipeline(art, head, [])
    cfg = replace(cfg, shutdown_workers=True)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="edgeplan-run-"))  # kept: errors point at the logs
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = start_workers(art, log_dir, cfg.secret, command, placement=placement)
    try:
        head = Head.from_specs(specs, art.microbatches, f"{head_host}:0",
                               {(w.device, w.stage): w.address for w in workers}, cfg, log,
                               predicted_compute_s=predicted)
        head.start()
    except BaseException:
        stop_workers(workers, grace_s=0.0)
        raise
    return Pipeline(art, head, workers, log_dir)


def _start_family(art: Artifacts, local: bool, cfg: HeadConfig, command, log_dir, log, placement,
                  head_host: str) -> Pipeline:
    """start_pipeline for a compiled plan family: every variant's workers and head, behind one FamilyHead."""
    workers: List[LocalWorker] = []
    if local:
        cfg = replace(cfg, shutdown_workers=True)
        log_dir = Path(log_dir or tempfile.mkdtemp(prefix="edgeplan-run-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        workers = start_workers(art, log_dir, cfg.secret, command, placement=placement)
    heads = {}
    try:
        for v in art.variants:
            specs = [s for _, s in v.stages]
            if local:
                addresses = {}
                for w in workers:
                    for (name, stage), a in zip(w.slots, w.addresses):
                        if name == v.variant:
                            addresses[(w.device, stage)] = a
                heads[v.variant] = Head.from_specs(specs, v.microbatches, f"{head_host}:0", addresses, cfg, log,
                                                   predicted_compute_s=_predicted_compute_s(v.plan))
            else:
                listen_at, advertise, addresses = _deployed_addresses(v)
                heads[v.variant] = Head.from_specs(specs, v.microbatches, listen_at, addresses, cfg, log, advertise,
                                                   predicted_compute_s=_predicted_compute_s(v.plan))
        head = FamilyHead(heads, art.variant, log)
        head.start()
    except BaseException:
        for h in heads.values():
            h.close()
        stop_workers(workers, grace_s=0.0)
        raise
    return Pipeline(art, head, workers, log_dir if local else None)


def _random_inputs(art: Artifacts, requests: int, seed: int) -> RandomInputs:
    return RandomInputs(next(s for _, s in art.stages if s.stage == 0), art.batch, requests, seed)


def run_local(artifacts: "Union[str, os.PathLike]", requests: int = 200, *, seed: int = 0,
              inputs: Optional[Sequence[Sequence[np.ndarray]]] = None, config: Optional[HeadConfig] = None,
              secret: Optional[bytes] = None, command: Optional[Sequence[str]] = None,
              log_dir: "Union[str, os.PathLike, None]" = None,
              on_complete: Optional[Callable[[int, List[LocalWorker]], None]] = None,
              log: Optional[Callable[[str], None]] = None, placement: Optional[Placement] = None,
              head_host: str = "127.0.0.1",
              on_start: Optional[Callable[[Pipeline], None]] = None) -> Tuple[Artifacts, RunResult]:
    """Start all workers of ``artifacts`` locally, run ``requests`` seeded random requests, stop the workers.

    ``on_start(pipeline)`` runs once the pipeline is up, before the first request (e.g. it attaches a plan
    family's switching controller as ``pipeline.controller``, stopped first by ``close()``)."""
    p = start_pipeline(artifacts, local=True, config=config, secret=secret, command=command, log_dir=log_dir,
                       log=log, placement=placement, head_host=head_host)
    try:
        if on_start is not None:
            on_start(p)
        cb = (lambda i: on_complete(i, p.workers)) if on_complete else None
        result = p.head.run(inputs if inputs is not None else _random_inputs(p.artifacts, requests, seed), cb)
    finally:
        p.close()
    for i, f in enumerate(result.faults):
        w = next((w for w in p.workers if (w.device, w.stage) == (f.device, f.stage)), None)
        if w is not None and w.process.returncode not in (0, None):
            result.faults[i] = replace(f, reason=f"{f.reason}; exit code {w.process.returncode}, log {w.log_path}")
    return p.artifacts, result


def run_deployed(artifacts: "Union[str, os.PathLike]", requests: int = 200, *, seed: int = 0,
                 inputs: Optional[Sequence[Sequence[np.ndarray]]] = None, config: Optional[HeadConfig] = None,
                 on_complete: Optional[Callable[[int], None]] = None,
                 log: Optional[Callable[[str], None]] = None,
                 on_start: Optional[Callable[[Pipeline], None]] = None) -> Tuple[Artifacts, RunResult]:
    """Drive workers already running on the boards, at the addresses compile wrote (head.json, stage.json peers);
    ``on_start`` as for run_local."""
    p = start_pipeline(artifacts, local=False, config=config, log=log)
    try:
        if on_start is not None:
            on_start(p)
        result = p.head.run(inputs if inputs is not None else _random_inputs(p.artifacts, requests, seed),
                            on_complete)
    finally:
        p.close()
    return p.artifacts, result
