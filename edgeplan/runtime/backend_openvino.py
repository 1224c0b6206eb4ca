"""Board-side loader for OpenVINO IR stages (``model.xml`` + ``model.bin``) on Intel NPUs.

The IR holds fp16 weights and is compiled for the NPU here, at load time (set
``OV_CACHE_DIR`` to keep the compiled blob between starts).
``EDGEPLAN_OPENVINO_DEVICE`` picks another OpenVINO device (``CPU`` to try a stage
on a machine without an NPU); nothing falls back silently.
"""

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compat import zip_strict
from .spec import StageSpec


def load_model_file(path: Path, spec: StageSpec, device: Optional[str] = None):
    """Compile the IR at ``path`` for ``device`` (default NPU) and return a Runner."""
    import openvino as ov

    device = device or os.environ.get("EDGEPLAN_OPENVINO_DEVICE") or "NPU"
    core = ov.Core()
    available = core.available_devices
    if not any(d == device or d.startswith(device + ".") for d in available):
        raise RuntimeError(f"OpenVINO device {device!r} not found (available: {', '.join(available) or 'none'}); "
                           "install the Intel NPU driver, or set EDGEPLAN_OPENVINO_DEVICE=CPU to run on the CPU")
    config = {"CACHE_DIR": os.environ["OV_CACHE_DIR"]} if os.environ.get("OV_CACHE_DIR") else {}
    if device == "CPU":  # a stand-in for the NPU when debugging: keep f32, not the CPU's bf16 default
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(core.read_model(str(path)), device, config)
    request = compiled.create_infer_request()
    outs = spec.outputs

    def run(inputs: Sequence[np.ndarray]) -> list:
        if len(inputs) != len(spec.inputs):
            raise ValueError(f"{path}: got {len(inputs)} inputs, the stage takes {len(spec.inputs)}")
        res = request.infer([np.ascontiguousarray(x, dtype=np.float32) for x in inputs])
        return [np.array(res[o]).reshape(t.shape).astype(t.dtype, copy=False)
                for o, t in zip_strict(compiled.outputs, outs)]

    return run


def load(stage_dir: Path, spec: StageSpec):
    return load_model_file(Path(stage_dir) / spec.module, spec)
