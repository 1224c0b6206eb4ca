"""Shared TVM lowering for every TVM-based target: torch.export -> Relax -> tvm.compile -> shared library.

The per-kind modules (x86, arm_cpu, cuda, mali) only choose the target dict, the
cross compiler and the schedule rules; everything else lives here once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CompileError

log = logging.getLogger(__name__)

CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_CC_APT = "gcc-aarch64-linux-gnu"
ZIG_TARGET = "aarch64-linux-gnu"
AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
MODULE_FILE = "stage.so"


def cross_cc() -> str:
    """The aarch64 linker for stage libraries: $EDGEPLAN_AARCH64_CC, Debian's cross gcc, else pip's ziglang.

    Why ziglang: it is a pip dependency, so a fresh clone cross-links aarch64 shared
    libraries with no system package (``python -m ziglang cc -target aarch64-linux-gnu``).
    TVM's export_library wants one executable, so ziglang goes through a small wrapper script.
    """
    override = os.environ.get("EDGEPLAN_AARCH64_CC")
    if override:
        path = shutil.which(override)
        if path is None:
            raise CompileError(f"EDGEPLAN_AARCH64_CC={override!r} is not an executable on PATH; unset it or fix it")
        return path
    path = shutil.which(CROSS_CC)
    if path is not None:
        return path
    if importlib.util.find_spec("ziglang") is None:
        raise CompileError(
            f"no aarch64 linker: neither {CROSS_CC} nor the ziglang package is installed; "
            f"`pip install ziglang` (a dependency of edgeplan) or `apt-get install {CROSS_CC_APT}`"
        )
    return str(zig_cc_wrapper())


def zig_cc_wrapper() -> Path:
    """A cached shell script ``exec <this python> -m ziglang cc -target aarch64-linux-gnu "$@"``."""
    text = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ziglang cc -target {ZIG_TARGET} "$@"\n'
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeplan" / "bin"
    path = cache / f"zig-cc-{ZIG_TARGET}-{digest}"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)  # atomic: concurrent compiles see the whole script or none
    return path


def export_program(module: Any, example_inputs: tuple, where: str):
    """torch.export of one stage (non-strict: the fx GraphModule is already traced)."""
    import torch

    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(example_inputs), strict=False)
    except Exception as e:  # torch raises many kinds; the user needs the stage and the cause
        raise CompileError(f"{where}: torch.export failed: {type(e).__name__}: {str(e)[:800]}") from e


def fold_batchnorm(module: Any) -> Any:
    """Fold eval-mode BatchNorm into the preceding conv/linear weights (fewer, cheaper TVM kernels).

    Why: TVM's frontend keeps batch_norm as its own op, which Relax legalizes into a
    separate kernel per BN; folding first removes them (MobileNetV2: 58 -> 33 kernels).
    Modules fx cannot trace are returned unchanged.
    """
    import torch
    from torch.fx.experimental.optimization import fuse

    if module.training or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    try:
        return fuse(module, inplace=False)
    except Exception as e:  # noqa: BLE001 - folding is an optimisation; the unfolded stage is still correct
        log.debug("batchnorm folding skipped: %s", e)
        return module


def to_relax(module: Any, example_inputs: tuple, where: str):
    """The stage as a Relax IRModule with weights bound as constants (embedded in the library)."""
    from tvm.relax.frontend.torch import from_exported_program

    ep = export_program(fold_batchnorm(module), example_inputs, where)
    try:
        return from_exported_program(ep)
    except Exception as e:
        raise CompileError(
            f"{where}: TVM's torch frontend cannot import this stage ({type(e).__name__}: {str(e)[:800]}); "
            "compile it with backend onnxruntime instead"
        ) from e


def robust_default_schedule(rules: list):
    """dlight's ApplyDefaultSchedule, except that a rule failing on one PrimFunc falls through to the next.

    Why: TVM 0.27's dlight GPU reduction rules crash on full reductions to a scalar
    (``x.mean()``: "block_realize == old_block_realize_"); the fallback rule handles them.
    """
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="EdgeplanDefaultSchedule")
    def _pass(mod, _ctx):
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or int(func.attrs.get("tirx.is_scheduled", 0)) == 1:
                continue
            target = func.attrs.get("target") or tvm.target.Target.current(allow_none=False)
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except Exception as e:  # noqa: BLE001 - a failing rule is the case this pass exists for
                    log.debug("schedule rule %s failed on %s: %s", type(rule).__name__, gvar.name_hint, e)
                    continue
                if space is None:
                    continue
                sch = space[0] if isinstance(space, list) else space
                updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                break
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return _pass


def gpu_pipeline(target):
    """The default Relax GPU pipeline with dlight schedules made robust (see robust_default_schedule)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]

    @tvm.transform.module_pass(opt_level=0, name="EdgeplanGPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([
                relax.backend.DispatchSampling(),
                relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                robust_default_schedule(rules),
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(),
                relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(),
                relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(),
                relax.transform.AttachGlobalSymbol(),
            ])
            return seq(mod)

    return _pipeline


def build(mod, target_dict: dict, out_path: Path, where: str, cc: str | None = None,
          relax_pipeline: Any = "default") -> float:
    """Compile a Relax module for ``target_dict`` and export it as a shared library; returns seconds taken."""
    import tvm

    t0 = time.perf_counter()
    try:
        target = tvm.target.Target(target_dict)
    except Exception as e:
        raise CompileError(f"{where}: invalid TVM target {target_dict}: {str(e)[:400]}") from e
    pipeline = relax_pipeline(target) if callable(relax_pipeline) else relax_pipeline
    try:
        exe = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as e:
        raise CompileError(
            f"{where}: TVM failed to compile for {target_dict.get('kind')}: {type(e).__name__}: {str(e)[-800:]}"
        ) from e
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if cc is None:
            exe.export_library(str(out_path))
        else:
            exe.export_library(str(out_path), cc=cc)
    except Exception as e:
        raise CompileError(f"{where}: linking {out_path.name} failed: {str(e)[-800:]}") from e
    return time.perf_counter() - t0


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (62 x86-64, 183 AArch64); used by tests and the compile report."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise CompileError(f"{path} is not an ELF shared library")
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
