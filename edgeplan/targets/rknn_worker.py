"""Runs INSIDE the rknn-toolkit2 venv: ONNX -> .rknn, then the simulator on the in-memory build.

rknn-toolkit2 pins old onnx/protobuf/numpy, so it lives in its own venv and this
script is run there as a subprocess (never imported by edgeplan; stdlib + numpy +
rknn only). Contract: ``python rknn_worker.py request.json response.json``, run
in a scratch folder because the toolkit writes check*.onnx into the working
directory. The simulator only runs on the build held in memory (a reloaded .rknn
cannot be simulated), so the check happens here, before the process ends.

request.json::

    {"onnx": path, "rknn": path to write, "platform": "rk3588", "dtype": "fp16" | "int8",
     "dataset": path of the toolkit's dataset .txt (int8) or null,
     "check_inputs": [[npy path per model input], ...], "outputs_dir": path,
     "optimization_level": 3, "quantized_algorithm": "normal", "verbose": true}

response.json::

    {"ok": bool, "step": step that failed or "done", "error": message or "",
     "outputs": [[npy path per model output], ...], "seconds": {step: s}, "toolkit": version}
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def _run(req: dict, resp: dict) -> None:
    import numpy as np
    from rknn.api import RKNN

    seconds: dict[str, float] = {}
    resp["seconds"] = seconds
    rknn = RKNN(verbose=bool(req.get("verbose", True)))

    def step(name: str, fn, *args, **kwargs):
        resp["step"] = name
        t0 = time.perf_counter()
        ret = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
        if isinstance(ret, int) and ret != 0:
            raise RuntimeError(f"rknn {name} returned {ret} (see the toolkit log above)")
        return ret

    try:
        dtype = req["dtype"]
        cfg = {
            "target_platform": req["platform"],
            "optimization_level": int(req.get("optimization_level", 3)),
        }
        if dtype == "int8":
            cfg["quantized_algorithm"] = req.get("quantized_algorithm", "normal")
            cfg["quantized_dtype"] = "w8a8"
        step("config", rknn.config, **cfg)
        step("load_onnx", rknn.load_onnx, model=req["onnx"])
        if dtype == "int8":
            step("build", rknn.build, do_quantization=True, dataset=req["dataset"])
        else:
            step("build", rknn.build, do_quantization=False)
        step("export_rknn", rknn.export_rknn, req["rknn"])
        step("init_runtime", rknn.init_runtime)  # no target: the simulator, on the in-memory build
        out_dir = Path(req["outputs_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs = []
        for i, paths in enumerate(req.get("check_inputs", [])):
            arrays = [np.load(p) for p in paths]
            # 4-D inputs default to NHWC in the toolkit; our tensors are NCHW (ignored for other ranks).
            fmt = ["nchw"] * len(arrays)
            res = step(f"inference[{i}]", rknn.inference, inputs=arrays, data_format=fmt)
            if res is None:
                raise RuntimeError("rknn inference returned None (see the toolkit log above)")
            names = []
            for j, arr in enumerate(res):
                p = out_dir / f"sample{i}_out{j}.npy"
                np.save(p, np.asarray(arr, dtype=np.float32))
                names.append(str(p))
            outputs.append(names)
        resp["outputs"] = outputs
        resp["step"] = "done"
        resp["ok"] = True
    finally:
        rknn.release()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: rknn_worker.py request.json response.json", file=sys.stderr)
        return 2
    req = json.loads(Path(argv[1]).read_text())
    resp: dict = {"ok": False, "step": "import", "error": "", "outputs": [], "seconds": {}}
    try:
        import rknn  # noqa: F401

        resp["toolkit"] = _toolkit_version()
        _run(req, resp)
    except BaseException as e:  # the toolkit calls exit() on some errors; report them all
        resp["ok"] = False
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        resp["error"] = f"{type(e).__name__}: {lines[-1] if lines else ''}"  # the toolkit nests tracebacks
        traceback.print_exc()
    Path(argv[2]).write_text(json.dumps(resp, indent=2, sort_keys=True) + "\n")
    return 0 if resp["ok"] else 1


def _toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("rknn-toolkit2")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
