"""The ``npu`` target's RKNN backend (Rockchip RK3588 / RK3566 / RK3568).

rknn-toolkit2 2.5.0 runs in its own venv (``rknn_env``), driven through
``rknn_worker.py`` with a JSON contract: it builds ``model.rknn`` from the stage's
ONNX (fp16, or int8 calibrated on a dataset of .npy files) and runs the in-memory
build in its simulator on the check inputs. The board loads ``model.rknn`` with
rknn-toolkit-lite2 (``runtime/backend_rknn.py``). ``npu.py`` owns the options, the
op check and the comparison with PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CompileError
from . import rknn_env

if TYPE_CHECKING:
    from .npu import NpuOptions

RKNN_PLATFORMS = ("rk3566", "rk3568", "rk3588")
# What a board needs to run model.rknn (README.txt lines).
RKNN_REQUIREMENTS = (
    "numpy, and rknn-toolkit-lite2 2.5.0 (pip install rknn-toolkit-lite2==2.5.0 on the aarch64 board)",
    "librknnrt.so 2.5.0 in /usr/lib (from Rockchip's rknpu2 runtime; the NPU kernel driver >= 0.9)",
    "model.rknn runs on the NPU via RKNNLite (load_rknn, init_runtime with the core mask in npu.json)",
)


def compile_rknn(opts: NpuOptions, work: Path, onnx_path: Path, check_inputs: list[list[np.ndarray]],
                 calib: list[list[np.ndarray]] | None, out_dir: Path, where: str):
    """Build ``model.rknn`` from the stage's ONNX in rknn-toolkit2's venv; (simulator outputs, files, notes)."""
    paths = []
    for i, sample in enumerate(check_inputs):
        row = []
        for j, a in enumerate(sample):
            p = work / f"check{i}_in{j}.npy"
            np.save(p, a)
            row.append(str(p))
        paths.append(row)
    notes = []
    dataset = None
    if opts.dtype == "int8":
        if calib is None:
            calib = check_inputs[:1]
            notes.append("int8 calibrated on the example input only: pass a calibration set for real accuracy")
        lines = []
        for i, sample in enumerate(calib):
            row = []
            for j, a in enumerate(sample):
                p = work / f"calib{i}_in{j}.npy"
                np.save(p, np.ascontiguousarray(a, dtype=np.float32))
                row.append(str(p))
            lines.append(" ".join(row))
        dataset = work / "dataset.txt"
        dataset.write_text("\n".join(lines) + "\n")
        notes.append(f"int8 calibration samples: {len(calib)}")
    rknn_out = out_dir / "model.rknn"
    request = {
        "onnx": str(onnx_path), "rknn": str(rknn_out.resolve()), "platform": opts.platform, "dtype": opts.dtype,
        "dataset": str(dataset) if dataset else None, "check_inputs": paths, "outputs_dir": str(work / "sim"),
        "optimization_level": opts.optimization_level, "verbose": True,
    }
    result = rknn_env.run_worker(request, work / "run")
    resp = result.response
    if not resp.get("ok"):
        tail = "\n".join(_errors_of(result.log)[-8:])
        raise CompileError(
            f"{where}: rknn-toolkit2 failed at {resp.get('step')}: {resp.get('error')}\n{tail}\n"
            f"(platform {opts.platform}, dtype {opts.dtype}; the stage's ONNX is opset {opts.opset})"
        )
    got = [[np.load(p) for p in row] for row in resp["outputs"]]
    table = parse_layer_table(result.log)
    cpu = [f"{r['op']}:{r['name']}" for r in table if r["target"] == "CPU"
           and r["op"] not in ("InputOperator", "OutputOperator", "Reshape", "Transpose")]
    notes.append(f"rknn-toolkit2 {resp.get('toolkit', '?')}: {len(table)} layers, "
                 f"{sum(r['target'] == 'NPU' for r in table)} on the NPU")
    if cpu:
        notes.append("toolkit placed on the board CPU: " + ", ".join(cpu[:10]))
    secs = resp.get("seconds", {})
    notes.append(f"rknn build {secs.get('build', 0):.2f} s")
    return got, ["model.rknn"], notes


def _errors_of(log: str) -> list[str]:
    import re

    clean = re.sub(r"\x1b\[[0-9;]*m", "", log)
    return [ln for ln in clean.splitlines() if ln.startswith(("E ", "Traceback", "  File")) or "Error" in ln]


def parse_layer_table(log: str) -> list[dict[str, str]]:
    """Rows of the toolkit's verbose 'Network Layer Information Table': id, op, dtype, target (NPU/CPU), name."""
    import re

    rows, inside = [], False
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        body = re.sub(r"^.*?RKNN: \[[0-9:.]+\] ?", "", line) if "RKNN:" in line else None
        if body is None:
            continue
        if "Network Layer Information Table" in body:
            inside, rows = True, []
            continue
        if not inside:
            continue
        cols = body.split()
        if cols and cols[0].isdigit() and len(cols) >= 5 and cols[3] in ("NPU", "CPU", "GPU"):
            full = cols[-1]
            rows.append({"id": cols[0], "op": cols[1], "dtype": cols[2], "target": cols[3],
                         "name": full.split(":", 1)[-1]})
        elif rows and body.startswith("---"):
            inside = False
    return rows
