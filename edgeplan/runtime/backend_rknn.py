"""Board-side loader for ``model.rknn`` stages on Rockchip NPUs, with rknn-toolkit-lite2 (RKNNLite).

``npu.json`` beside the model (written by the npu target) gives the platform and
the plan's NPU core mask (rk3588 only; other chips have one core and take none)
and each input's layout: 4-D tensors travel NCHW, which must be said to the
runtime because it assumes NHWC otherwise.
"""

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .compat import zip_strict
from .spec import StageSpec

META = "npu.json"


def read_meta(stage_dir: Path) -> dict:
    path = Path(stage_dir) / META
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise RuntimeError(f"{path} is missing; recompile the stage with `edgeplan compile`") from e


def load_model_file(path: Path, meta: dict, spec: StageSpec, lite_cls=None):
    """Open ``path`` on the NPU and return a Runner (list of arrays in stage order -> list out)."""
    if lite_cls is None:
        from rknnlite.api import RKNNLite as lite_cls
    lite = lite_cls()
    if lite.load_rknn(str(path)) != 0:
        raise RuntimeError(f"{path}: RKNNLite.load_rknn failed (is it a {meta.get('platform')} model of toolkit 2.5?)")
    mask = meta.get("core_mask_value")
    ret = lite.init_runtime(core_mask=int(mask)) if mask is not None else lite.init_runtime()
    if ret != 0:
        raise RuntimeError(f"{path}: RKNNLite.init_runtime failed (core mask {meta.get('core_mask')}); "
                           "check the NPU driver and librknnrt.so (see README.txt)")
    formats = ["nchw"] * len(spec.inputs)  # ignored by the runtime for inputs that are not 4-D
    outs = spec.outputs

    def run(inputs: Sequence[np.ndarray]) -> list:
        if len(inputs) != len(spec.inputs):
            raise ValueError(f"{path}: got {len(inputs)} inputs, the stage takes {len(spec.inputs)}")
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        res = lite.inference(inputs=arrays, data_format=formats)
        if res is None:
            raise RuntimeError(f"{path}: RKNNLite.inference failed (see the runtime log above)")
        if len(res) != len(outs):
            raise RuntimeError(f"{path}: the model returned {len(res)} outputs, stage.json lists {len(outs)}")
        return [np.asarray(r).reshape(t.shape).astype(t.dtype, copy=False) for r, t in zip_strict(res, outs)]

    run.release = lite.release  # type: ignore[attr-defined]
    return run


def load(stage_dir: Path, spec: StageSpec):
    return load_model_file(Path(stage_dir) / spec.module, read_meta(stage_dir), spec)
