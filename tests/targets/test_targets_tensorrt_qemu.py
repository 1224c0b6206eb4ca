"""The TensorRT runner on aarch64: a Jetson's CPU side under qemu-user, up to the line where a GPU is needed.

The guest (cached arm64 Debian root fs, see edgeplan.targets.qemu) has numpy and ONNX
Runtime but no GPU and no TensorRT, so it gets the same fake ``tensorrt`` (8.2 and 10.x
API shapes) and fake CUDA runtime as test_targets_tensorrt: the engine cache, the version
branches, the ctypes pinned-buffer copies and the ONNX-Runtime-run engine execute as
aarch64 code, and the answers are compared with PyTorch on this machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan import jsonio
from edgeplan.targets import qemu
from edgeplan.targets.registry import get_target

from ._nets import stage_module
from .test_targets_tensorrt import _spec

pytestmark = [pytest.mark.qemu]

_REASON = qemu.unavailable_reason() or (None if qemu.is_ready() else
                                        "the arm64 root fs is not built (python -m edgeplan.targets.qemu)")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

HERE = Path(__file__).resolve().parent
RUNTIME_DIR = HERE.parents[1] / "edgeplan" / "runtime"
DRIVER = """
import sys, numpy as np
work, version = sys.argv[1], sys.argv[2]
sys.path.insert(0, work)
import _fake_tensorrt as fake
trt = fake.make(version)
sys.modules["tensorrt"] = trt
from edgeplan_runtime import backend_tensorrt, backends
from edgeplan_runtime.spec import StageSpec
backend_tensorrt.CudaRuntime = lambda: fake.FakeCuda("53")
spec = StageSpec.load(work + "/stage/stage.json")
for start in range(2):  # the second start loads the cached engine
    run = backends.load(work + "/stage", spec)
outs = run([np.load(work + f"/in{i}.npy") for i in range(len(spec.inputs))])
for i, o in enumerate(outs):
    np.save(work + f"/out{i}.npy", o)
print("builds", trt.builds, "calls", [c for c, _ in trt.log if c.startswith("execute")])
"""


@pytest.mark.parametrize("version", ["8.2.1.8", "10.3.0.30"])
def test_tensorrt_runner_on_aarch64_matches_torch(tmp_path, version):
    gm, example = stage_module()
    with torch.no_grad():
        ref = [t.numpy() for t in gm(*example)]
    cs = get_target("cuda").compile_stage(gm, example, {"arch": "sm_53", "jetpack": "4.6.1"}, tmp_path / "stage")
    jsonio.write(tmp_path / "stage" / "stage.json", _spec(cs, example, ref).to_json())
    root = qemu.rootfs_dir()
    host, guest = qemu.guest_workdir(root)
    try:
        shutil.copytree(RUNTIME_DIR, host / "edgeplan_runtime", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(tmp_path / "stage", host / "stage")
        shutil.copyfile(HERE / "_fake_tensorrt.py", host / "_fake_tensorrt.py")
        (host / "driver.py").write_text(DRIVER)
        for i, t in enumerate(example):
            np.save(host / f"in{i}.npy", t.numpy())
        r = qemu.run_python([f"{guest}/driver.py", guest, version], root, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        want_call = "execute_async_v2" if version.startswith("8.2") else "execute_async_v3"
        assert f"builds 1 calls ['{want_call}']" in r.stdout, r.stdout
        assert len(list((host / "stage").glob("*.engine"))) == 1
        for i, want in enumerate(ref):
            got = np.load(host / f"out{i}.npy")
            assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
        assert json.loads((host / "stage" / "trt.json").read_text())["opset"] == 13
    finally:
        shutil.rmtree(host, ignore_errors=True)
