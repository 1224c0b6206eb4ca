"""MetaSchedule tuning for CPU stages, with one cached database per target (board kind).

Why: Relax's default CPU pipeline leaves conv2d as unscheduled loops (no tiling, no
vectorisation, no threads), ~20x slower than PyTorch. MetaSchedule searches schedules
per fused kernel; kernels are keyed structurally, so a database tuned once for a
target (e.g. all of ResNet-18's conv shapes) serves every later stage and plan that
reuses those shapes. Databases live in ``~/.cache/edgeplan/tune/<target hash>/``
(``$EDGEPLAN_TUNE_DIR`` overrides the root) and are plain MetaSchedule JSON files that
can be copied between machines. Only the machine's own CPU can be measured here, so
tuning runs for x86; an arm-cpu database must be tuned on a board and copied in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import CompileError


def database_dir(target_dict: dict) -> Path:
    """The cache folder of the tuning database for one TVM target (hash of its JSON form)."""
    root = Path(os.environ.get("EDGEPLAN_TUNE_DIR", Path.home() / ".cache/edgeplan/tune"))
    key = hashlib.sha256(json.dumps(target_dict, sort_keys=True).encode()).hexdigest()[:16]
    return root / key


def has_database(target_dict: dict) -> bool:
    d = database_dir(target_dict)
    return (d / "database_tuning_record.json").exists() and (d / "database_tuning_record.json").stat().st_size > 0


def _runner():
    """MetaSchedule's LocalRunner, except that the llvm target kind is run on the ``cpu`` device.

    TVM 0.27 passes the target kind as the device name, and ``tvm.runtime.device("llvm")``
    fails with "Unknown device: llvm" for every candidate.
    """
    from tvm.s_tir.meta_schedule.runner import local_runner as lr

    class CpuLocalRunner(lr.LocalRunner):
        def run(self, runner_inputs):
            results = []
            for ri in runner_inputs:
                device = "cpu" if str(ri.device_type) == "llvm" else str(ri.device_type)
                future = self.pool.submit(
                    lr._worker_func, self.f_alloc_argument, self.f_run_evaluator, self.f_cleanup,
                    self.evaluator_config, self.alloc_repeat, str(ri.artifact_path), device,
                    tuple(a.as_json() for a in ri.args_info),
                )
                try:
                    res, err = future.result(), None
                except Exception as e:  # noqa: BLE001 - a failing candidate is a normal search outcome
                    res, err = None, f"CpuLocalRunner: {e}"
                results.append(lr.LocalRunnerFuture(res=res, error_message=err))
            return results

    return CpuLocalRunner(timeout_sec=300)


def tune(mod, target_dict: dict, trials: int, where: str, log: Callable[[str], None] | None = None) -> Path:
    """Add ``trials`` measured candidates for this stage's kernels to the target's database; return its folder."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    work_dir = database_dir(target_dict)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "target.json").write_text(json.dumps(target_dict, sort_keys=True) + "\n")
    t0 = time.perf_counter()
    try:
        with tvm.target.Target(target_dict):
            fused = tvm.relax.get_pipeline("zero")(mod)  # legalize + fuse: the kernels compile_relax will look up
        ms.relax_integration.tune_relax(
            fused, {}, tvm.target.Target(target_dict), work_dir=str(work_dir), max_trials_global=trials,
            num_trials_per_iter=min(32, max(4, trials // 4)), runner=_runner(),
            # Builder workers import TVM first (tens of seconds on a busy 2-core machine): the default
            # 30 s timeout fails every candidate there.
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=600),
            # Evolutionary search (cost model + mutation of a 512-candidate population) costs minutes per
            # round on 2 cores before it measures anything; for small budgets, random traces do as well.
            strategy="evolutionary" if trials >= 256 else "replay-trace",
            cost_model="xgb" if trials >= 256 else "random",
        )
    except Exception as e:
        raise CompileError(f"{where}: MetaSchedule tuning failed: {type(e).__name__}: {str(e)[-600:]}") from e
    if log:
        log(f"tuned {trials} trials in {time.perf_counter() - t0:.0f} s -> {work_dir}")
    return work_dir


def compile_tuned(mod, target_dict: dict, out_path: Path, where: str, cc: str | None) -> float:
    """Build with the target's database applied (untuned kernels keep the default lowering)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    work_dir = database_dir(target_dict)
    try:
        db = ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False)
        exe = ms.relax_integration.compile_relax(db, mod, tvm.target.Target(target_dict), params=None)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        exe.export_library(str(out_path), **({"cc": cc} if cc else {}))
    except Exception as e:
        raise CompileError(
            f"{where}: compiling with the tuning database {work_dir} failed ({type(e).__name__}: {str(e)[-600:]}); "
            f"delete that folder to retune"
        ) from e
    return time.perf_counter() - t0
