"""cuda: Jetson GPUs (sm_53 Nano, sm_62 TX2, sm_72 Xavier, sm_87 Orin) with an aarch64 host.

Two backends:

- ``tensorrt`` (``auto`` picks it): the stage is exported to ONNX here, checked against
  PyTorch with ONNX Runtime, and the board builds a TensorRT engine from it at first start
  (``runtime/trt_build.py``; fp16 unless the unit's ``precision`` option says fp32). Every
  JetPack ships TensorRT, so nothing is pip-installed for the GPU.
- ``tvm``: a TVM CUDA library whose kernels NVRTC compiles at load. PyPI's aarch64
  apache-tvm 0.27 CUDA runtime links CUDA 13 (libcudart.so.13), which no JetPack has and
  which has no sm_53, so the board builds ``libtvm_runtime`` from source against its own
  CUDA with the ``build-tvm-runtime.sh`` codegen writes into the board folder.

The unit's ``jetpack`` option (e.g. ``"4.6.1"``) names the board's JetPack; README.txt
then lists what that release provides, and compile warns where it cannot run a backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsonio
from ..errors import CompileError
from . import _onnx
from ._gpu import GpuTarget
from .base import CompiledStage

TRT_META = "trt.json"  # read by runtime/trt_build.py: precision, workspace, ONNX node names and ops
PRECISIONS = ("fp16", "fp32")
ONNX_TOL = 1e-3  # max abs error / output range of the ONNX export (ONNX Runtime, CPU) against PyTorch
# Highest ONNX opset each TensorRT's ONNX parser imports (onnx-tensorrt's supported opsets: 8.0-8.4 up to 13,
# 8.5/8.6 up to 17, 10.x beyond); the stage is exported at the board's, or at 13 when the profile names no JetPack.
PARSER_OPSET = (((10, 0), 17), ((8, 5), 17), ((8, 0), 13))


@dataclass(frozen=True)
class JetPack:
    """What one JetPack release installs (NVIDIA's JetPack release notes / archive)."""

    version: str
    l4t: str
    cuda: str
    tensorrt: str
    python: str  # the system python3 JetPack's TensorRT bindings (python3-libnvinfer) are built for
    archs: tuple[str, ...]  # GPUs (compute capability) the release supports


_NANO_TX2_XAVIER = ("sm_53", "sm_62", "sm_72")
JETPACKS: dict[str, JetPack] = {j.version: j for j in (
    JetPack("4.6", "R32.6.1", "10.2", "8.0.1", "3.6", _NANO_TX2_XAVIER),
    *(JetPack(f"4.6.{k}", "R32.7", "10.2", "8.2.1", "3.6", _NANO_TX2_XAVIER) for k in range(1, 7)),
    JetPack("5.0.2", "R35.1", "11.4", "8.4.1", "3.8", ("sm_72", "sm_87")),
    *(JetPack(v, "R35.2-R35.6", "11.4", "8.5.2", "3.8", ("sm_72", "sm_87"))
      for v in ("5.1", "5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.5")),
    JetPack("6.0", "R36.3", "12.2", "8.6.2", "3.10", ("sm_87",)),
    JetPack("6.1", "R36.4", "12.6", "10.3.0", "3.10", ("sm_87",)),
    JetPack("6.2", "R36.4.3", "12.6", "10.3.0", "3.10", ("sm_87",)),
)}
# JetPack 4.6's python3 is 3.6 with pip 9, which cannot take numpy's manylinux2014 aarch64 wheels (it would build
# numpy from source); pip 21.3 is the last for 3.6. numpy then resolves to 1.19.4: 1.19.5's wheel crashes at import on
# Jetsons (numpy issue 18131), which the runtime's install line excludes.
PIP_36 = ("; before the Install lines above: sudo apt-get install python3-pip && python3 -m pip install --upgrade "
          "'pip<22' (its pip 9 cannot install numpy's aarch64 wheels); they then give numpy 1.19.4 and the dataclasses "
          "backport")
TVM_WHEEL_CUDA = "13"  # libtvm_runtime_cuda.so of the aarch64 apache-tvm 0.27 wheel links libcudart.so.13


def _series(arch: str) -> list[JetPack]:
    """One JetPack per (TensorRT, Python) combination the GPU can run, oldest first (for README lines)."""
    seen: dict[tuple[str, str], JetPack] = {}
    for j in JETPACKS.values():
        if arch in j.archs:
            seen.setdefault((j.tensorrt, j.python), j)
    return list(seen.values())


def _line(j: JetPack, last: str | None = None) -> str:
    versions = j.version if last is None or last == j.version else f"{j.version}-{last}"
    return f"JetPack {versions} (L4T {j.l4t}): CUDA {j.cuda}, TensorRT {j.tensorrt}, Python {j.python}"


class CudaTarget(GpuTarget):
    """The GPU target plus the TensorRT backend and per-JetPack install notes."""

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        if backend == "tensorrt":
            return (
                "JetPack's TensorRT with its Python bindings for JetPack's own python3 (run the workers with it, "
                "not a venv): sudo apt-get install python3-libnvinfer (JetPack's SD card image has them)",
                "the first start builds each stage's TensorRT engine from stage.onnx (minutes on a Nano) and caches "
                "it beside the stage (start.sh does this before any worker); build ahead with: python3 -m "
                "edgeplan_runtime.trt_build FOLDER... (the TensorRT stage folders listed above)",
            )
        if backend == "tvm":
            return (
                "JetPack (CUDA runtime + NVRTC) on the board",
                "pip install numpy 'apache-tvm-ffi==0.1.14.post1', and libtvm_runtime.so + libtvm_runtime_cuda.so of "
                "TVM 0.27 built for this board's CUDA in lib/: sh build-tvm-runtime.sh (the PyPI wheel's CUDA "
                f"runtime needs CUDA {TVM_WHEEL_CUDA}, which no JetPack has)",
            )
        raise CompileError(f"target cuda: unknown backend {backend!r}; valid: {', '.join(self.backends)}")

    def jetpack(self, options: dict[str, str], where: str) -> JetPack | None:
        value = options.get("jetpack")
        if value is None:
            return None
        if value not in JETPACKS:
            raise CompileError(f"{where}: target cuda: unknown jetpack {value!r}; use one of {', '.join(JETPACKS)} "
                               "(target_options.jetpack of the GPU unit in the board profile)")
        return JETPACKS[value]

    def install_notes(self, backend: str, options: dict[str, str]) -> tuple[str, ...]:
        """README lines: what each JetPack this GPU runs provides, and whether the stage's backend works there."""
        arch = options.get(self.option, self.default)
        jp = self.jetpack(options, "README")
        lines = []
        for j in _series(arch):
            same = [k for k, v in JETPACKS.items() if arch in v.archs and (v.tensorrt, v.python) == (j.tensorrt,
                                                                                                       j.python)]
            mark = "  <- the board profile's JetPack" if jp is not None and jp.version in same else ""
            how = (f"TensorRT bindings for Python {j.python} only" + (PIP_36 if j.python == "3.6" else "")
                   if backend == "tensorrt"
                   else f"PyPI apache-tvm CUDA runtime does not load (needs CUDA {TVM_WHEEL_CUDA}); build it with "
                   "build-tvm-runtime.sh" + (" (not tried: TVM 0.27 is C++17, which CUDA 10.2 and Ubuntu 18.04's "
                                             "gcc 7 support only in part; prefer --backend tensorrt)"
                                             if j.cuda == "10.2" else ""))
            lines.append(f"{_line(j, same[-1])}: {how}{mark}")
        return tuple(lines)

    def runtime_warnings(self, backend: str, options: dict[str, str], python: tuple[int, int]) -> tuple[str, ...]:
        """Why a stage compiled for ``backend`` will not start on the JetPack the profile names (empty: it can).

        ``python`` is the oldest Python the board runtime (edgeplan_runtime/) runs on.
        """
        jp = self.jetpack(options, "compile")
        if jp is None:
            return ("the GPU unit's profile names no jetpack (target_options.jetpack): README.txt lists every "
                    "JetPack this GPU runs; set it to have compile check the board's TensorRT and Python",)
        if backend == "tvm":
            return (f"JetPack {jp.version} has CUDA {jp.cuda}; the PyPI apache-tvm wheel's CUDA runtime needs CUDA "
                    f"{TVM_WHEEL_CUDA}: build libtvm_runtime on the board with build-tvm-runtime.sh (in its folder), "
                    "or compile with --backend auto (TensorRT)",)
        have = tuple(int(p) for p in jp.python.split("."))
        if have < python:
            need = ".".join(map(str, python))
            arch = options.get(self.option, self.default)
            ok = [j.version for j in JETPACKS.values()
                  if arch in j.archs and tuple(int(p) for p in j.python.split(".")) >= python]
            fix = (f"flash JetPack {ok[0]} or newer for {arch}, or plan the stage onto a CPU unit" if ok
                   else f"no JetPack for {arch} has Python {need}: plan the stage onto a CPU unit")
            return (f"JetPack {jp.version}'s TensorRT {jp.tensorrt} Python bindings are for Python {jp.python}, but "
                    f"the stage worker (edgeplan_runtime/) needs Python {need} or newer: the worker cannot import "
                    f"tensorrt there; {fix}",)
        return ()

    def compile_stage(self, module: Any, example_inputs: tuple, options: dict[str, str], out_dir: Path,
                      backend: str = "auto") -> CompiledStage:
        if backend == "tvm":
            return super().compile_stage(module, example_inputs, self._tvm_options(options), out_dir, backend="tvm")
        out_dir = Path(out_dir)
        where = str(out_dir)
        if backend not in ("auto", "tensorrt"):
            raise CompileError(f"{where}: target {self.name} has no backend {backend!r}; valid: auto, "
                               f"{', '.join(self.backends)}")
        allowed = (self.option, "mcpu", "host_mcpu", "mtriple", "jetpack", "precision", "workspace_mb")
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise CompileError(f"{where}: target {self.name} has no option(s) {', '.join(unknown)}; "
                               f"valid target_options: {', '.join(allowed)}")
        arch = options.get(self.option, self.default)
        if arch not in self.known:
            raise CompileError(f"{where}: target {self.name}: unknown {self.option} {arch!r}; use one of "
                               f"{', '.join(self.known)} (target_options.{self.option} in the board profile)")
        jp = self.jetpack(options, where)
        if jp is not None and arch not in jp.archs:
            raise CompileError(f"{where}: JetPack {jp.version} does not support {arch} (it runs "
                               f"{', '.join(jp.archs)}); fix target_options.jetpack or .arch in the board profile")
        precision = options.get("precision", "fp16")
        if precision not in PRECISIONS:
            raise CompileError(f"{where}: target cuda: precision {precision!r} is not one of {', '.join(PRECISIONS)} "
                               "(target_options.precision of the GPU unit)")
        try:
            workspace_mb = int(options.get("workspace_mb", "256"))
        except ValueError:
            workspace_mb = 0
        if not 16 <= workspace_mb <= 65536:
            raise CompileError(f"{where}: target cuda: workspace_mb {options.get('workspace_mb')!r} must be an "
                               "integer in [16, 65536] (MB of GPU memory TensorRT may use while building)")
        t0 = time.perf_counter()
        onnx_path = out_dir / _onnx.MODULE_FILE
        opset = parser_opset(jp)
        export_onnx(module, example_inputs, onnx_path, opset, where)
        err = check_onnx(module, example_inputs, onnx_path, where)
        nodes = onnx_nodes(onnx_path)
        jsonio.write(out_dir / TRT_META, {
            "schema_version": 1, "precision": precision, "workspace_mb": workspace_mb, "arch": arch,
            "jetpack": jp.version if jp else None, "opset": opset, "nodes": [list(n) for n in nodes],
        })
        notes = (f"tensorrt: ONNX opset {opset}, {len(nodes)} nodes; the board builds a {precision} engine "
                 "at first start (not built or run here: no GPU)",
                 f"ONNX export checked with ONNX Runtime: max abs error / output range {err:.2e} (fp32; the "
                 f"{precision} engine's error is not checked here)")
        return CompiledStage(backend="tensorrt", module_file=_onnx.MODULE_FILE, files=(_onnx.MODULE_FILE, TRT_META),
                             compile_s=round(time.perf_counter() - t0, 3), notes=notes)

    def _tvm_options(self, options: dict[str, str]) -> dict[str, str]:
        """The TVM path ignores the TensorRT-only options (they describe the board, not the kernels)."""
        return {k: v for k, v in options.items() if k not in ("jetpack", "precision", "workspace_mb")}


def parser_opset(jp: JetPack | None) -> int:
    """The ONNX opset the board's TensorRT parser reads (13 when the JetPack is unknown: every TensorRT reads it)."""
    if jp is None:
        return 13
    version = tuple(int(p) for p in jp.tensorrt.split(".")[:2])
    return next(opset for oldest, opset in PARSER_OPSET if version >= oldest)


def export_onnx(module: Any, example_inputs: tuple, path: Path, opset: int, where: str) -> None:
    """torch.onnx.export (TorchScript exporter) at ``opset``; names ``input<i>``/``output<i>``, as the runtime reads."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        outs = module(*example_inputs)
    n_out = len(outs) if isinstance(outs, (tuple, list)) else 1
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example_inputs), str(path), dynamo=False, opset_version=opset,
                              input_names=[f"input{i}" for i in range(len(example_inputs))],
                              output_names=[f"output{i}" for i in range(n_out)], do_constant_folding=True)
    except Exception as e:
        raise CompileError(f"{where}: ONNX export at opset {opset} (the board's TensorRT parser's) failed "
                           f"({type(e).__name__}: {str(e)[:800]}); compile this stage with --backend tvm") from e


def onnx_nodes(path: Path) -> tuple[tuple[str, str], ...]:
    """(name, op_type) of every node, in file order: TensorRT 8.x names a rejected node by this index only."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return tuple((n.name or f"node{i}", n.op_type) for i, n in enumerate(model.graph.node))


def check_onnx(module: Any, example_inputs: tuple, path: Path, where: str) -> float:
    """Max abs error / output range of the ONNX file (ONNX Runtime, CPU) against PyTorch on the example inputs."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = module(*example_inputs)
    ref = [t.detach().cpu().numpy() for t in (ref if isinstance(ref, (tuple, list)) else [ref])]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {}
    for i in sess.get_inputs():
        k = int(i.name[len("input"):]) if i.name.startswith("input") and i.name[5:].isdigit() else 0
        feed[i.name] = example_inputs[k].detach().cpu().numpy()
    got = sess.run(None, feed)
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        span = float(np.max(r) - np.min(r)) if r.size else 0.0
        err = float(np.max(np.abs(r.astype(np.float64) - g))) if r.size else 0.0
        worst = max(worst, err / span if span > 0 else err)
    if worst > ONNX_TOL:
        raise CompileError(f"{where}: the ONNX export differs from PyTorch (max abs error / output range {worst:.3g} "
                           f"> {ONNX_TOL}); compile this stage with --backend tvm")
    return worst


TARGET = CudaTarget(
    name="cuda",
    description="NVIDIA Jetson GPU: TensorRT engines built on the board from ONNX (default) or TVM CUDA modules",
    kind="cuda",
    option="arch",
    default="sm_87",
    known=("sm_53", "sm_62", "sm_72", "sm_87"),
    requirements=(),
    backends=("tensorrt", "tvm"),
)
