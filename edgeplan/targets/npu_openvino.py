"""The ``npu`` target's OpenVINO backend (Intel NPU boards).

``ov.convert_model`` on the stage's ONNX, saved as IR with fp16 weights and checked
here on OpenVINO's CPU device at f32 inference precision; the board compiles the IR
for its NPU at load time (``runtime/backend_openvino.py``). ``npu.py`` owns the
options, the op check and the comparison with PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CompileError

OPENVINO_PLATFORMS = ("intel-npu",)
# What a board needs to run the IR (README.txt lines).
OPENVINO_REQUIREMENTS = (
    "numpy, and openvino 2024 or newer (pip install 'openvino>=2024,<2027')",
    "the Intel NPU driver (intel-npu-driver / level-zero), so ov.Core().available_devices lists 'NPU'",
    "model.xml/.bin is OpenVINO IR with fp16 weights: the board compiles it for its NPU at load time "
    "(the first start takes longer; set OV_CACHE_DIR to keep the compiled blob)",
)


def compile_openvino(onnx_path: Path, check_inputs: list[list[np.ndarray]], out_dir: Path, where: str):
    """OpenVINO IR (fp16 weights) of the stage's ONNX, run on OpenVINO's CPU device; (outputs, files, notes)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise CompileError(f"{where}: OpenVINO is not installed; install it with: pip install 'edgeplan[npu]' "
                           "(or pip install 'openvino>=2024,<2027')") from e
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=True)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(out_dir / "model.xml")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        got = []
        for sample in check_inputs:
            res = compiled(list(sample))
            got.append([np.asarray(res[o], dtype=np.float32) for o in compiled.outputs])
    except CompileError:
        raise
    except Exception as e:
        raise CompileError(f"{where}: OpenVINO conversion failed ({type(e).__name__}: {e})") from e
    return got, ["model.xml", "model.bin"], [f"openvino {ov.get_version().split('-')[0]}: IR with fp16 weights, "
                                             "checked on CPU at f32; compiled for the NPU on the board"]
