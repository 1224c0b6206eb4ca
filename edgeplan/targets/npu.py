"""Target ``npu``: stage -> ONNX -> vendor NPU compiler, checked against PyTorch before it is written.

Two backends, one module each: ``npu_rknn`` (Rockchip RK3588 / RK3566 / RK3568:
rknn-toolkit2 in its own venv, fp16 or int8 calibrated on a dataset of .npy files that
``write_calibration_set`` makes by running samples through the preceding stages) and
``npu_openvino`` (Intel NPU boards: OpenVINO IR with fp16 weights). This module owns
what they share: the options, the op check, the ONNX export, the comparison with
PyTorch, the stage's ``npu.json`` and its board launcher.

Options (the unit's ``target_options``, all strings): ``platform`` (rk3588, rk3566,
rk3568, intel-npu), ``dtype`` (fp16 | int8), ``core_mask`` (rk3588: auto, 0, 1, 2,
0_1, 0_1_2, all), ``calibration`` (dataset .txt listing .npy files, one sample a
line), ``fp16_tol`` (max abs error / output range, default 1e-2), ``int8_min_cos``
(default 0.999), ``supported_ops`` (comma list; default ``NPU_OPS``),
``optimization_level`` (0-3), ``opset`` (<= 18).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsonio
from ..errors import CompileError
from . import rknn_env
from .base import CompiledStage
from .npu_openvino import OPENVINO_PLATFORMS, OPENVINO_REQUIREMENTS, compile_openvino
from .npu_rknn import RKNN_PLATFORMS, RKNN_REQUIREMENTS, compile_rknn

PLATFORMS = RKNN_PLATFORMS + OPENVINO_PLATFORMS
DTYPES = ("fp16", "int8")
# RKNNLite.NPU_CORE_* values; only rk3588 (3 cores) takes a mask.
CORE_MASKS: dict[str, int] = {"auto": 0, "0": 1, "1": 2, "2": 4, "0_1": 3, "0_1_2": 7, "all": 0xFFFF}
MAX_OPSET = 18
STAGE_META = "npu.json"  # written beside the module: what the board loader needs (platform, core mask, layouts)
LAUNCHER = "run_npu.py"  # standalone board check of the stage's NPU model (rendered from npu_run_<backend>.py.j2)

# Op kinds (edgeplan.graph.ops names) the RKNN / Intel NPU backends compile: the one list of what an NPU can run.
# A unit's profile narrows it (supported_ops, checked against ``supports`` when the profile loads); the
# planner places by the profile's list and codegen hands that list to compile_stage as an option.
NPU_OPS: frozenset[str] = frozenset({
    "conv2d", "dwconv2d", "linear", "matmul", "batchnorm", "layernorm", "maxpool", "avgpool",
    "adaptive_avgpool", "relu", "relu6", "sigmoid", "hardswish", "silu", "tanh", "gelu", "add", "mul",
    "sub", "div", "dropout", "identity", "softmax", "mean", "flatten", "reshape", "permute", "transpose",
    "cat", "getitem", "slice", "split", "pad", "contiguous", "expand", "sum", "conv1d", "output",
})


@dataclass(frozen=True)
class NpuOptions:
    platform: str
    dtype: str = "fp16"
    core_mask: str = "auto"
    calibration: str | None = None
    fp16_tol: float = 1e-2
    int8_min_cos: float = 0.999
    supported_ops: frozenset[str] = NPU_OPS
    optimization_level: int = 3
    opset: int = 17

    @classmethod
    def parse(cls, options: dict[str, str], where: str) -> NpuOptions:
        """Validate the unit's target_options; errors name the option, its allowed values and ``where``."""
        known = {"platform", "dtype", "core_mask", "calibration", "fp16_tol", "int8_min_cos", "supported_ops",
                 "optimization_level", "opset"}
        extra = sorted(set(options) - known)
        if extra:
            raise CompileError(f"{where}: unknown npu option(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")

        def choice(key: str, allowed: Sequence[str], default: str | None) -> str:
            val = str(options.get(key, default) if options.get(key, default) is not None else "")
            if val not in allowed:
                raise CompileError(
                    f"{where}: npu option {key}={val or '(missing)'} is not one of {', '.join(allowed)}; "
                    f"set target_options.{key} of the NPU unit in the board profile (and compile with --cluster)"
                )
            return val

        def number(key: str, default: float, lo: float, hi: float) -> float:
            raw = options.get(key)
            if raw is None:
                return default
            try:
                val = float(raw)
            except ValueError:
                val = math.nan
            if not (lo <= val <= hi):
                raise CompileError(f"{where}: npu option {key}={raw!r} must be a number in [{lo}, {hi}]")
            return val

        platform = choice("platform", PLATFORMS, None)
        ops = NPU_OPS
        if options.get("supported_ops"):  # the unit's profile narrows NPU_OPS, never widens it
            ops = frozenset(o.strip() for o in options["supported_ops"].split(",") if o.strip())
            if ops - NPU_OPS:
                raise CompileError(
                    f"{where}: npu option supported_ops lists {', '.join(sorted(ops - NPU_OPS))}, which no NPU "
                    f"backend compiles; drop it from the unit's supported_ops (NPU ops: {', '.join(sorted(NPU_OPS))})"
                )
        return cls(
            platform=platform,
            dtype=choice("dtype", DTYPES, "fp16"),
            core_mask=choice("core_mask", tuple(CORE_MASKS), "auto"),
            calibration=options.get("calibration") or None,
            fp16_tol=number("fp16_tol", 1e-2, 0.0, 1.0),
            int8_min_cos=number("int8_min_cos", 0.999, -1.0, 1.0),
            supported_ops=ops,
            optimization_level=int(number("optimization_level", 3, 0, 3)),
            opset=int(number("opset", 17, 9, MAX_OPSET)),
        )


@dataclass(frozen=True)
class CheckResult:
    """The compiled stage against PyTorch on the check inputs (worst over samples and outputs)."""

    stage: str
    backend: str
    platform: str
    dtype: str
    max_abs_err: float
    rel_err: float  # max abs error / range of the PyTorch output
    min_cosine: float
    metric: str  # "rel_err" (fp16) or "min_cosine" (int8)
    threshold: float
    samples: int

    @property
    def value(self) -> float:
        return getattr(self, self.metric)

    @property
    def ok(self) -> bool:
        return self.value <= self.threshold if self.metric == "rel_err" else self.value >= self.threshold

    def summary(self) -> str:
        cmp = "<=" if self.metric == "rel_err" else ">="
        return (f"{self.backend} {self.platform} {self.dtype}: max abs err {self.max_abs_err:.3g}, "
                f"rel err {self.rel_err:.3g}, min cosine {self.min_cosine:.6f} ({self.metric} {cmp} "
                f"{self.threshold:.10g}: {'ok' if self.ok else 'FAIL'})")

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ok": self.ok}


# --- op check -----------------------------------------------------------------

def stage_ops(module: Any, example_inputs: tuple[Any, ...]) -> list[tuple[str, str]]:
    """(fx node name, op kind) of every layer of a stage GraphModule, in graph order.

    Op kinds are the graph tracer's (``edgeplan.graph.opkinds``) from one run on the stage's
    example inputs, so the names and kinds match the LayerGraph the planner placed; shape
    arithmetic (``x.size(0)``) produces no tensor and is not a layer.
    """
    import torch.fx

    from ..graph.opkinds import layer_kinds

    if not isinstance(module, torch.fx.GraphModule):
        module = torch.fx.symbolic_trace(module)
    return layer_kinds(module, tuple(example_inputs))


def check_supported(module: Any, example_inputs: tuple[Any, ...], supported: frozenset[str], where: str) -> None:
    """CompileError naming the first layer whose op kind the NPU does not run."""
    bad = [(name, op) for name, op in stage_ops(module, example_inputs) if op not in supported]
    if bad:
        name, op = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(f'{n}:{o}' for n, o in bad[1:4])})" if len(bad) > 1 else ""
        raise CompileError(
            f"{where}: layer {name!r} is op {op!r}, which the NPU does not run{more}; "
            f"supported ops: {', '.join(sorted(supported))}. Re-plan so this layer runs on a CPU/GPU unit "
            "(the planner keeps layers off units whose profile's supported_ops lacks their op)"
        )


# --- helpers shared by both backends --------------------------------------------

def export_onnx(module: Any, example_inputs: tuple[Any, ...], path: Path, opset: int) -> tuple[list[str], list[str]]:
    """Legacy (TorchScript) exporter: the NPU converters read its opset <= 18 graphs best."""
    import warnings

    import torch

    n_out = len(_as_list(module(*example_inputs)))
    in_names = [f"in{i}" for i in range(len(example_inputs))]
    out_names = [f"out{i}" for i in range(n_out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example_inputs), str(path), dynamo=False, opset_version=min(opset, MAX_OPSET),
                          input_names=in_names, output_names=out_names, do_constant_folding=True)
    return in_names, out_names


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _np(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t), dtype=np.float32)


def compare(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> tuple[float, float, float]:
    """(max abs error, max abs error / output range, min cosine similarity) over samples and outputs."""
    max_abs, rel, cos = 0.0, 0.0, 1.0
    for rs, gs in zip(ref, got, strict=True):
        for r, g in zip(rs, gs, strict=True):
            r = r.astype(np.float64).ravel()
            g = np.asarray(g, dtype=np.float64).ravel()
            if r.size != g.size:
                raise CompileError(f"NPU output has {g.size} values, PyTorch {r.size}; the converter changed a shape")
            err = float(np.max(np.abs(r - g))) if r.size else 0.0
            span = float(np.max(r) - np.min(r)) if r.size else 0.0
            max_abs = max(max_abs, err)
            rel = max(rel, err / span if span > 0 else (0.0 if err == 0 else math.inf))
            nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
            c = float(np.dot(r, g) / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
            cos = min(cos, c)
    return max_abs, rel, cos


def write_calibration_set(
    preceding: Sequence[Callable[..., Any]],
    samples: Sequence[tuple[Any, ...]],
    out_dir: Path,
) -> Path:
    """Run ``samples`` (model inputs) through the ``preceding`` stages and write the toolkit's dataset .txt.

    Each line lists one sample's .npy files (one per stage input, space separated). Pass the returned
    path as the NPU stage's ``calibration`` option.
    """
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    with torch.no_grad():
        for i, sample in enumerate(samples):
            xs = tuple(sample)
            for stage in preceding:
                xs = tuple(_as_list(stage(*xs)))
            paths = []
            for j, x in enumerate(xs):
                p = out_dir / f"calib{i}_in{j}.npy"
                np.save(p, _np(x))
                paths.append(str(p.resolve()))
            lines.append(" ".join(paths))
    ds = out_dir / "dataset.txt"
    ds.write_text("\n".join(lines) + "\n")
    return ds


def _read_calibration(path: str, where: str, n_inputs: int) -> list[list[np.ndarray]]:
    p = Path(path)
    if not p.is_file():
        raise CompileError(f"{where}: calibration file {p} not found; make it with "
                           "edgeplan.targets.npu.write_calibration_set or list one sample's .npy files a line")
    samples = []
    for k, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        files = line.split()
        if len(files) != n_inputs:
            raise CompileError(f"{p}:{k}: {len(files)} .npy files listed, the stage takes {n_inputs} inputs")
        samples.append([np.load(p.parent / f if not Path(f).is_absolute() else f) for f in files])
    if not samples:
        raise CompileError(f"{p}: calibration file lists no samples")
    return samples


# --- the target -----------------------------------------------------------------

class NpuTarget:
    name = "npu"
    description = "NPUs through their vendor compilers: RKNN (RK3588/RK3566/RK3568) and OpenVINO IR (Intel NPU)"
    backends = ("rknn", "openvino")

    def supports(self, op_kinds: set[str]) -> set[str]:
        return set(op_kinds) - NPU_OPS

    def board_python(self) -> tuple[tuple[str, str], ...]:
        """The Python this target writes into stage folders, as (path in the board folder, template): it runs
        on the board's Python (``codegen.compile.board_python`` lists it; a test checks it for Python 3.6)."""
        return tuple((f"stage*/{LAUNCHER}", f"npu_run_{b}.py.j2") for b in self.backends)

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        if backend == "rknn":
            return RKNN_REQUIREMENTS
        if backend == "openvino":
            return OPENVINO_REQUIREMENTS
        raise CompileError(f"npu target has no backend {backend!r}; backends: {', '.join(self.backends)}")

    def resolve_backend(self, backend: str, platform: str) -> str:
        if backend == "auto":
            return "openvino" if platform in OPENVINO_PLATFORMS else "rknn"
        if backend not in self.backends:
            choices = ", ".join(self.backends)
            raise CompileError(f"npu target has no backend {backend!r}; choose auto or one of {choices}")
        if backend == "rknn" and platform not in RKNN_PLATFORMS:
            raise CompileError(f"backend rknn compiles for {', '.join(RKNN_PLATFORMS)}, not platform {platform!r}")
        return backend

    def compile_stage(
        self,
        module: Any,
        example_inputs: tuple[Any, ...],
        options: dict[str, str],
        out_dir: Path,
        backend: str = "auto",
    ) -> CompiledStage:
        import torch

        t0 = time.perf_counter()
        out_dir = Path(out_dir)
        where = f"{out_dir.name or out_dir} (npu)"
        opts = NpuOptions.parse(dict(options), where)
        backend = self.resolve_backend(backend, opts.platform)
        if backend == "openvino" and opts.dtype != "fp16":
            raise CompileError(f"{where}: the openvino backend writes fp16 IR only; set dtype=fp16")
        module.eval()
        check_supported(module, example_inputs, opts.supported_ops, where)
        if backend == "rknn":
            rknn_env.require_rknn_python()  # fail fast, before export
        out_dir.mkdir(parents=True, exist_ok=True)

        check_inputs = [[_np(x) for x in example_inputs]]
        calib = None
        if opts.dtype == "int8" and opts.calibration:
            calib = _read_calibration(opts.calibration, where, len(example_inputs))
            check_inputs += [s for s in calib[:3] if [a.shape for a in s] == [a.shape for a in check_inputs[0]]]
        with torch.no_grad():
            ref = [[_np(y) for y in _as_list(module(*[torch.from_numpy(a) for a in s]))] for s in check_inputs]

        with tempfile.TemporaryDirectory(prefix="edgeplan-npu-") as tmp:
            work = Path(tmp)
            onnx_path = work / "stage.onnx"
            try:
                in_names, out_names = export_onnx(module, tuple(example_inputs), onnx_path, opts.opset)
            except Exception as e:
                raise CompileError(f"{where}: ONNX export failed ({type(e).__name__}: {e}); the stage has an op "
                                   f"the legacy exporter cannot write at opset {opts.opset}") from e
            if backend == "rknn":
                got, files, notes = compile_rknn(opts, work, onnx_path, check_inputs, calib, out_dir, where)
            else:
                got, files, notes = compile_openvino(onnx_path, check_inputs, out_dir, where)

        max_abs, rel, cos = compare(ref, got)
        metric, thr = ("rel_err", opts.fp16_tol) if opts.dtype == "fp16" else ("min_cosine", opts.int8_min_cos)
        res = CheckResult(out_dir.name, backend, opts.platform, opts.dtype, max_abs, rel, cos, metric, thr,
                          len(check_inputs))
        meta = {
            "backend": backend, "platform": opts.platform, "dtype": opts.dtype, "core_mask": opts.core_mask,
            "core_mask_value": CORE_MASKS[opts.core_mask] if opts.platform == "rk3588" else None,
            "inputs": [{"name": n, "shape": list(a.shape), "layout": "nchw" if a.ndim == 4 else "native"}
                       for n, a in zip(in_names, check_inputs[0], strict=True)],
            "outputs": [{"name": n, "shape": list(a.shape)} for n, a in zip(out_names, ref[0], strict=True)],
            "check": res.to_json(),
        }
        if not res.ok:
            cmp = "below" if metric == "min_cosine" else "above"
            raise CompileError(
                f"{where}: simulator error over the threshold: stage {res.stage}, {res.summary()}; "
                f"{metric} {res.value:.6g} is {cmp} {thr:.10g}. Use dtype=fp16, a larger calibration set, or "
                f"override the threshold with the {'int8_min_cos' if metric == 'min_cosine' else 'fp16_tol'} option"
            )
        jsonio.write(out_dir / STAGE_META, meta)
        (out_dir / LAUNCHER).write_text(render_launcher(meta, files[0], out_dir.name))
        return CompiledStage(
            backend=backend,
            module_file=files[0],
            files=tuple(sorted([*files, STAGE_META, LAUNCHER])),
            compile_s=round(time.perf_counter() - t0, 3),
            notes=(res.summary(), *notes),
        )


def render_launcher(meta: dict, module_file: str, stage: str) -> str:
    """``run_npu.py``: loads the stage's NPU model on the board and runs it once on random inputs, timed."""
    from ..codegen.render import render

    return render(
        f"npu_run_{meta['backend']}.py.j2", stage=stage, module=module_file, platform=meta["platform"],
        dtype=meta["dtype"], core_mask=meta["core_mask"], core_mask_value=meta["core_mask_value"],
        inputs=meta["inputs"], outputs=meta["outputs"],
    )


TARGET = NpuTarget()
