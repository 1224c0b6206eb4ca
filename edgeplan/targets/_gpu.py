"""GPU targets (cuda, mali): TVM with dlight default schedules, an aarch64 host, cross-linked here.

Nothing is timed here (no such GPU on the compile machine); schedules are TVM's untuned
defaults, so the plan's cost model keeps the profile's datasheet throughput for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompileError
from . import _tvm
from .base import CompiledStage


@dataclass(frozen=True)
class RuntimeBuild:
    """How a board builds TVM's runtime for its GPU from the apache-tvm source (``build-tvm-runtime.sh``).

    PyPI's aarch64 wheel cannot serve these GPUs: its OpenCL runtime is a stub (no
    implementation) and its CUDA runtime links CUDA 13, which no JetPack ships.
    """

    gpu: str  # "opencl" | "cuda"
    cmake_flags: tuple[str, ...]  # runtime only: no LLVM, no compiler, the board's own GPU API
    targets: tuple[str, ...]  # cmake targets built, when the source tree defines them (the first always)
    apt: tuple[str, ...]  # Debian/Ubuntu packages the build needs on the board
    minutes: str  # how long it takes on a 4-core Cortex-A57..A76 board (estimate, not timed on a board)
    cmake_min: str = "3.26"  # TVM 0.27's 3rdparty/tvm-ffi requires it (found by configuring it here)


# TVM 0.27's CMakeLists options: runtime only (no LLVM: the compiler stays on the compile host), no RPC.
_COMMON_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DUSE_LLVM=OFF", "-DUSE_RPC=OFF", "-DUSE_CUDNN=OFF",
                 "-DUSE_CUBLAS=OFF", "-DUSE_VULKAN=OFF")
_APT = ("build-essential", "cmake", "ninja-build", "git", "python3", "python3-pip")

RUNTIME_BUILDS: dict[str, RuntimeBuild] = {
    "opencl": RuntimeBuild("opencl", _COMMON_FLAGS + ("-DUSE_OPENCL=ON", "-DUSE_CUDA=OFF"),
                           ("tvm_runtime", "tvm_runtime_opencl"), _APT + ("ocl-icd-opencl-dev", "opencl-headers"),
                           "15-30"),
    "cuda": RuntimeBuild("cuda", _COMMON_FLAGS + ("-DUSE_OPENCL=OFF", "-DUSE_CUDA=/usr/local/cuda"),
                         ("tvm_runtime", "tvm_runtime_cuda"), _APT, "20-40"),
}


@dataclass(frozen=True)
class GpuTarget:
    name: str
    description: str
    kind: str  # TVM target kind: "cuda" | "opencl"
    option: str  # the one device option: "arch" (cuda) or "device" (opencl)
    default: str
    known: tuple[str, ...]
    requirements: tuple[str, ...]
    extra: tuple[str, ...] = ()  # options accepted and recorded in the notes only (e.g. mali "model")
    backends: tuple[str, ...] = ("tvm",)

    def supports(self, op_kinds: set[str]) -> set[str]:
        """dlight's fallback rule schedules any op TVM legalizes; nothing is refused up front."""
        return set()

    def runtime_build(self, backend: str) -> RuntimeBuild | None:
        """What build-tvm-runtime.sh builds for stages of ``backend`` (None: the board needs no source build)."""
        return RUNTIME_BUILDS[self.kind] if backend == "tvm" else None

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        if backend != "tvm":
            raise CompileError(f"target {self.name}: unknown backend {backend!r}; valid: {', '.join(self.backends)}")
        return self.requirements

    def tvm_target(self, options: dict[str, str], where: str) -> dict:
        allowed = (self.option, "mcpu", "host_mcpu", "mtriple") + self.extra
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise CompileError(f"{where}: target {self.name} has no option(s) {', '.join(unknown)}; "
                               f"valid target_options: {', '.join(allowed)}")
        value = options.get(self.option, self.default)
        if value not in self.known:
            raise CompileError(f"{where}: target {self.name}: unknown {self.option} {value!r}; use one of "
                               f"{', '.join(self.known)} (target_options.{self.option} in the board profile)")
        host = dict(_tvm.AARCH64_HOST)
        if options.get("mtriple", host["mtriple"]).split("-")[0] != "aarch64":
            raise CompileError(f"{where}: target {self.name} has an aarch64 host; target_options.mtriple "
                               f"{options['mtriple']!r} is not aarch64")
        host_mcpu = options.get("host_mcpu", options.get("mcpu"))
        if host_mcpu:
            host["mcpu"] = host_mcpu
        return {"kind": self.kind, self.option: value, "host": host}

    def compile_stage(self, module: Any, example_inputs: tuple, options: dict[str, str], out_dir: Path,
                      backend: str = "auto") -> CompiledStage:
        out_dir = Path(out_dir)
        where = str(out_dir)
        if backend not in ("auto", "tvm"):
            raise CompileError(f"{where}: target {self.name} has no backend {backend!r}; valid: auto, tvm")
        target = self.tvm_target(dict(options), where)
        cc = _tvm.cross_cc()
        t0 = time.perf_counter()
        mod = _tvm.to_relax(module, example_inputs, where)
        _tvm.build(mod, target, out_dir / _tvm.MODULE_FILE, where, cc, relax_pipeline=_tvm.gpu_pipeline)
        return CompiledStage(backend="tvm", module_file=_tvm.MODULE_FILE, files=(_tvm.MODULE_FILE,),
                             compile_s=round(time.perf_counter() - t0, 3),
                             notes=(f"tvm target {target}", "dlight default GPU schedules (untuned)")
                             + tuple(f"{k}={options[k]}" for k in self.extra if k in options))
