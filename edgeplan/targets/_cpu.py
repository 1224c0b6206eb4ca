"""CPU targets (x86, arm-cpu): TVM LLVM build or ONNX Runtime, the faster chosen per stage by measurement.

Why two backends: untuned TVM 0.27 CPU code (Relax's default pipeline legalizes conv2d
to unscheduled loops) runs ResNet-18 ~20x slower than PyTorch eager, so until a
tuning database covers a stage, ``backend="auto"`` measures both on this machine and
keeps the faster; the notes record both timings so profiles can be calibrated.
arm-cpu cannot be timed here, so it decides by the same measurement on x86 (the
ratio between the two backends, not their absolute speed, picks the winner) and says so.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import CompileError
from . import _onnx, _tune, _tvm
from .base import CompiledStage

MEASURE_THREADS = 2  # the threads both backends get when timed; boards use all their cores
ORT_PIP = "onnxruntime>=1.20,<2"  # the board's ONNX Runtime (README.txt's install line)
ORT_MIN_PYTHON = (3, 10)  # onnxruntime 1.20's wheels (aarch64 and x86_64) are cp310 and newer; 3.8 stops at 1.19.2


def measure_ms(runner, inputs: list, warmup: int = 2, repeat: int = 5, budget_s: float = 20.0) -> float:
    """Median wall time of one call in ms (stops early once ``budget_s`` is spent)."""
    for _ in range(warmup):
        runner(inputs)
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        runner(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def numpy_inputs(example_inputs: tuple) -> list:
    return [t.detach().cpu().contiguous().numpy() for t in example_inputs]


@dataclass(frozen=True)
class CpuTarget:
    name: str
    description: str
    mtriple: str | None  # None: this machine
    cc: str | None  # cross compiler for the shared library; None: the host's
    default_mcpu: str | None
    known_mcpu: tuple[str, ...]  # empty: any value LLVM takes
    backends: tuple[str, ...] = ("tvm", "onnxruntime")
    options: tuple[str, ...] = ("mtriple", "mcpu", "mattr", "num-cores", "tune-trials")

    def supports(self, op_kinds: set[str]) -> set[str]:
        """A CPU runs every op torch.export + TVM/ONNX can lower; nothing is refused up front."""
        return set()

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        if backend == "tvm":
            return (
                "pip install numpy 'apache-tvm-ffi==0.1.14.post1'",
                "libtvm_runtime.so from the apache-tvm 0.27 wheel of this board's architecture in lib/ "
                "(or: pip install 'apache-tvm>=0.27,<0.28')",
            )
        if backend == "onnxruntime":
            return (f"pip install numpy '{ORT_PIP}'",)
        raise CompileError(f"target {self.name}: unknown backend {backend!r}; valid: {', '.join(self.backends)}")

    def runtime_warnings(self, backend: str, options: dict[str, str], python: tuple[int, int]) -> tuple[str, ...]:
        """Why an ONNX Runtime stage will not start on the board's OS (empty: it can, or the profile names none).

        The OS is the board's ``jetpack`` (board-wide: codegen passes the GPU unit's, codegen.compile.board_options);
        its python3 is what the worker runs on, and onnxruntime has no wheel for a Python older than ORT_MIN_PYTHON.
        """
        from .cuda import JETPACKS

        jp = JETPACKS.get(options.get("jetpack", ""))
        if backend != "onnxruntime" or jp is None:
            return ()
        if tuple(int(p) for p in jp.python.split(".")) >= ORT_MIN_PYTHON:
            return ()
        need = ".".join(map(str, ORT_MIN_PYTHON))
        arch = options.get("arch")  # the board's GPU (board-wide, like jetpack): which JetPacks it takes
        newer = next((j for j in JETPACKS.values() if tuple(int(p) for p in j.python.split(".")) >= ORT_MIN_PYTHON
                      and (arch is None or arch in j.archs)), None)
        flash = (f", or flash JetPack {newer.version}+ ({'/'.join(newer.archs)} boards)" if newer
                 else f" (no JetPack for {arch} has Python {need})")
        return (f"JetPack {jp.version}'s python3 is {jp.python}, and {ORT_PIP} needs Python {need}+ (no wheel for "
                f"{jp.python}): the worker cannot import onnxruntime; put the stage on the board's GPU (target cuda, "
                f"TensorRT) or on another board{flash}",)

    # -- compile -------------------------------------------------------------------------------------

    def tvm_target(self, options: dict[str, str], where: str) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise CompileError(
                f"{where}: target {self.name} has no option(s) {', '.join(unknown)}; "
                f"valid target_options: {', '.join(self.options)}"
            )
        t: dict[str, Any] = {"kind": "llvm"}
        mtriple = options.get("mtriple", self.mtriple)
        family = (self.mtriple or "x86_64").split("-")[0]
        if mtriple and mtriple.split("-")[0] != family:
            raise CompileError(f"{where}: target {self.name} compiles for {family}, not mtriple {mtriple!r}; "
                               f"fix target_options.mtriple in the board profile or the unit's target kind")
        if mtriple:
            t["mtriple"] = mtriple
        mcpu = options.get("mcpu", self.default_mcpu or _host_mcpu())
        if mcpu:
            if self.known_mcpu and mcpu not in self.known_mcpu:
                raise CompileError(
                    f"{where}: target {self.name}: unknown mcpu {mcpu!r}; use one of {', '.join(self.known_mcpu)} "
                    "(target_options.mcpu in the board profile)"
                )
            t["mcpu"] = mcpu
        mattr = [a.strip() for a in options.get("mattr", "").split(",") if a.strip()]
        if self.mtriple and self.mtriple.startswith("aarch64") and "+neon" not in mattr:
            mattr.insert(0, "+neon")
        if mattr:
            t["mattr"] = mattr
        if "num-cores" in options:
            t["num-cores"] = _int_option(options, "num-cores", where)
        elif self.mtriple is None:  # MetaSchedule needs it to pick thread counts; default: this machine's
            t["num-cores"] = os.cpu_count() or 1
        return t

    def build_tvm(self, mod, target: dict, out_path: Path, where: str, cc: str | None, trials: int) -> str:
        """Build with the target's tuning database when one exists (tuning first when asked); returns a note."""
        if trials > 0:
            if self.mtriple is not None:
                raise CompileError(
                    f"{where}: tune-trials needs to measure on {self.name} itself and this machine is x86; "
                    f"tune on a board and copy its database into {_tune.database_dir(target)}, or drop tune-trials"
                )
            _tune.tune(mod, target, trials, where)
        if _tune.has_database(target):
            _tune.compile_tuned(mod, target, out_path, where, cc)
            return f"tvm target {target}, MetaSchedule database {_tune.database_dir(target)}"
        _tvm.build(mod, target, out_path, where, cc)
        return f"tvm target {target}, default (untuned) schedules"

    def compile_stage(self, module: Any, example_inputs: tuple, options: dict[str, str], out_dir: Path,
                      backend: str = "auto") -> CompiledStage:
        out_dir = Path(out_dir)
        where = str(out_dir)
        if backend not in ("auto",) + self.backends:
            raise CompileError(
                f"{where}: target {self.name} has no backend {backend!r}; valid: auto, {', '.join(self.backends)}"
            )
        target = self.tvm_target(dict(options), where)
        trials = _int_option(options, "tune-trials", where)
        cc = _tvm.cross_cc() if self.cc else None
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if backend == "tvm":
            mod = _tvm.to_relax(module, example_inputs, where)
            note = self.build_tvm(mod, target, out_dir / _tvm.MODULE_FILE, where, cc, trials)
            return self._result("tvm", out_dir, t0, (note,))
        if backend == "onnxruntime":
            _onnx.export(module, example_inputs, out_dir / _onnx.MODULE_FILE, where)
            return self._result("onnxruntime", out_dir, t0, (f"onnx opset {_onnx.OPSET}",))
        return self._compile_auto(module, example_inputs, target, cc, out_dir, where, t0, trials)

    def _compile_auto(self, module, example_inputs, target, cc, out_dir: Path, where: str, t0: float,
                      trials: int):
        """Build both backends, time both on this machine (x86 builds of the same stage), keep the faster."""
        from ..runtime.backend_onnxruntime import load_model_file
        from ..runtime.backend_tvm import load_module_file

        notes: list[str] = []
        printed: tuple[str, ...] = ()
        inputs = numpy_inputs(example_inputs)
        onnx_path = out_dir / _onnx.MODULE_FILE
        try:
            _onnx.export(module, example_inputs, onnx_path, where)
        except CompileError as e:  # TVM alone is still a valid stage, but the user asked for the faster of two
            printed = (f"onnx export failed, so backend auto compiled tvm only (not timed against onnxruntime): "
                       f"{str(e).removeprefix(where + ': ')[:200]}",)
            notes.extend(printed)
            onnx_path = None
        mod = _tvm.to_relax(module, example_inputs, where)
        local_target = target if self.mtriple is None else {"kind": "llvm", "mcpu": _host_mcpu()}
        with tempfile.TemporaryDirectory(prefix="edgeplan-measure-") as tmp:
            local_so = (out_dir if self.mtriple is None else Path(tmp)) / _tvm.MODULE_FILE
            local_note = self.build_tvm(mod, local_target, local_so, where, None, trials if self.mtriple is None else 0)
            if onnx_path is None:
                choice, ms = "tvm", {}
            else:
                ms = self._measure(load_module_file(local_so, "x86", MEASURE_THREADS),
                                   load_model_file(onnx_path, MEASURE_THREADS), inputs)
                choice = "tvm" if ms["tvm"] <= ms["onnxruntime"] else "onnxruntime"
        if ms:
            notes.append(
                f"measured on this x86 machine, {MEASURE_THREADS} threads, denormals flushed: "
                f"tvm {ms['tvm']:.2f} ms, onnxruntime {ms['onnxruntime']:.2f} ms -> {choice}"
            )
        if self.mtriple is not None:
            notes.append(f"{self.name} cannot be timed here: backend picked by the x86 ratio of the same stage "
                         f"({local_note})")
        if choice == "tvm":
            if onnx_path is not None:
                onnx_path.unlink()
            notes.append(local_note if self.mtriple is None else
                         self.build_tvm(mod, target, out_dir / _tvm.MODULE_FILE, where, cc, 0))
        else:
            (out_dir / _tvm.MODULE_FILE).unlink(missing_ok=True)
            notes.append(f"onnx opset {_onnx.OPSET}")
        result = self._result(choice, out_dir, t0, tuple(notes))
        return replace(result, measured_ms=tuple((k, round(v, 3)) for k, v in sorted(ms.items())), printed=printed)

    @staticmethod
    def _measure(tvm_run, ort_run, inputs: list) -> dict[str, float]:
        import torch

        torch.set_flush_denormal(True)  # this thread's FTZ/DAZ; threads TVM starts later inherit it
        return {"tvm": measure_ms(tvm_run, inputs), "onnxruntime": measure_ms(ort_run, inputs)}

    @staticmethod
    def _result(backend: str, out_dir: Path, t0: float, notes: tuple[str, ...]) -> CompiledStage:
        module_file = _tvm.MODULE_FILE if backend == "tvm" else _onnx.MODULE_FILE
        files = tuple(sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name in
                             (_tvm.MODULE_FILE, _onnx.MODULE_FILE)))
        return CompiledStage(backend=backend, module_file=module_file, files=files,
                             compile_s=round(time.perf_counter() - t0, 3), notes=notes)


def _host_mcpu() -> str:
    """This machine's CPU name for LLVM (e.g. znver4): without it LLVM targets baseline x86-64 (SSE2 only)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _int_option(options: dict[str, str], key: str, where: str) -> int:
    try:
        value = int(options.get(key, "0"))
    except ValueError:
        value = -1
    if value < 0:
        raise CompileError(f"{where}: target option {key}={options.get(key)!r} must be a whole number >= 0")
    return value
