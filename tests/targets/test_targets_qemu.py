"""aarch64 stage libraries really run: under qemu-user in a cached arm64 Debian root fs.

The guest has what a board has (python3, numpy, apache-tvm-ffi, libtvm_runtime.so; no
full TVM, no torch); it loads the stage through edgeplan's own board-side loaders and
its outputs are compared with the x86 build of the same stage and with PyTorch.
The first run builds the root fs (~10 min; `python -m edgeplan.targets.qemu` does it ahead).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan.runtime import backends
from edgeplan.targets import qemu
from edgeplan.targets.registry import get_target

from ._nets import stage_module
from .test_targets_compile import _spec

pytestmark = [pytest.mark.qemu, pytest.mark.tvm]

_REASON = qemu.unavailable_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "edgeplan" / "runtime"
DRIVER = """
import sys, json, numpy as np
sys.path.insert(0, sys.argv[1])
from edgeplan_runtime import backends
from edgeplan_runtime.spec import StageSpec
spec = StageSpec.load(sys.argv[1] + "/stage/stage.json")
run = backends.load(sys.argv[1] + "/stage", spec)
outs = run([np.load(sys.argv[1] + f"/in{i}.npy") for i in range(len(spec.inputs))])
for i, o in enumerate(outs):
    np.save(sys.argv[1] + f"/out{i}.npy", o)
print("ran", len(outs))
"""


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return qemu.ensure_rootfs(log=lambda s: print(s, flush=True))


def _run_in_guest(root: Path, stage_dir: Path, spec, inputs: list[np.ndarray]) -> list[np.ndarray]:
    host, guest = qemu.guest_workdir(root)
    try:
        shutil.copytree(RUNTIME_DIR, host / "edgeplan_runtime", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(stage_dir, host / "stage")
        (host / "stage" / "stage.json").write_text(json.dumps(spec.to_json()))
        (host / "driver.py").write_text(DRIVER)
        for i, a in enumerate(inputs):
            np.save(host / f"in{i}.npy", a)
        p = qemu.run_python([f"{guest}/driver.py", guest], root=root, timeout=900)
        assert p.returncode == 0, f"aarch64 run failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
        return [np.load(host / f"out{i}.npy") for i in range(len(spec.outputs))]
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _check(root: Path, tmp_path: Path, gm, example, backend: str, tol: float):
    with torch.no_grad():
        ref = gm(*example)
    ref = ref if isinstance(ref, tuple) else (ref,)
    arm = get_target("arm-cpu").compile_stage(gm, example, {"mcpu": "cortex-a72"}, tmp_path / "arm", backend)
    x86 = get_target("x86").compile_stage(gm, example, {}, tmp_path / "x86", backend)
    inputs = [t.numpy() for t in example]
    guest_outs = _run_in_guest(root, tmp_path / "arm", _spec(arm, "arm-cpu", example, ref), inputs)
    host_outs = backends.load(tmp_path / "x86", _spec(x86, "x86", example, ref))(inputs)
    for g, h, r in zip(guest_outs, host_outs, ref, strict=True):
        assert g.shape == h.shape == tuple(r.shape)
        assert np.abs(g - h).max() < tol
        assert np.abs(g - r.numpy()).max() < tol


def test_small_stage_runs_on_aarch64(rootfs, tmp_path):
    gm, example = stage_module()
    _check(rootfs, tmp_path, gm, example, "tvm", 1e-4)


def test_resnet18_runs_on_aarch64(rootfs, tmp_path):
    from edgeplan.graph import zoo

    entry = zoo.get("resnet18")
    model = entry.build().eval()
    torch.manual_seed(0)
    _check(rootfs, tmp_path, model, (torch.randn(*entry.input_shape),), "tvm", 1e-3)


def test_onnxruntime_stage_runs_on_aarch64(rootfs, tmp_path):
    probe = qemu.run_python(["-c", "import onnxruntime"], root=rootfs, timeout=300)
    if probe.returncode != 0:
        pytest.skip("onnxruntime aarch64 wheel is not in the root fs (its download failed when it was built)")
    gm, example = stage_module()
    _check(rootfs, tmp_path, gm, example, "onnxruntime", 1e-4)
