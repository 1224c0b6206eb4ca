"""Shared ONNX export for the ONNX Runtime backend (CPU targets) and, later, vendor NPU compilers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import CompileError

MODULE_FILE = "stage.onnx"
OPSET = 17


def export(module: Any, example_inputs: tuple, out_path: Path, where: str) -> float:
    """torch.onnx.export (TorchScript exporter, opset 17, weights inside the file); returns seconds taken.

    Input/output names are positional (``input0``.., ``output0``..) so the board-side
    loader maps them to stage.json's ordered tensors without guessing.
    """
    import torch

    t0 = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        outs = module(*example_inputs)
    n_out = len(outs) if isinstance(outs, (tuple, list)) else 1
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, tuple(example_inputs), str(out_path), dynamo=False, opset_version=OPSET,
                input_names=[f"input{i}" for i in range(len(example_inputs))],
                output_names=[f"output{i}" for i in range(n_out)],
                do_constant_folding=True,
            )
    except Exception as e:
        raise CompileError(
            f"{where}: ONNX export failed ({type(e).__name__}: {str(e)[:800]}); compile it with backend tvm instead"
        ) from e
    return time.perf_counter() - t0
