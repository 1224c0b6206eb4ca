"""npu tier: ResNet-18 and MobileNetV2 stages through rknn-toolkit2 (simulator) and OpenVINO (CPU), vs PyTorch.

Finds the RKNN venv at ~/.cache/edgeplan/rknn-venv (or $EDGEPLAN_RKNN_VENV); installs it
when EDGEPLAN_INSTALL_TOOLCHAINS=1; otherwise the RKNN tests skip with the command that
installs it. rk3588 compiles the second stage (its int8 calibration set is made by
running samples through the first stage); rk3566 compiles the first stage (image input,
4-D NCHW output), so both input and output layouts are checked.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn as nn

from edgeplan.errors import CompileError
from edgeplan.targets import npu, rknn_env

from .stages import samples, two_stages

pytestmark = pytest.mark.npu

CALIB = 8  # calibration samples for int8


@pytest.fixture(scope="module")
def rknn_python():
    py = rknn_env.find_rknn_python()
    if py is None:
        if os.environ.get("EDGEPLAN_INSTALL_TOOLCHAINS") == "1":
            py = rknn_env.install(log=lambda s: None)
        else:
            pytest.skip(f"RKNN toolchain not installed at {rknn_env.default_venv()}: run "
                        f"`{rknn_env.INSTALL_HINT}` or set EDGEPLAN_INSTALL_TOOLCHAINS=1")
    return py


def _stage_case(name: str, platform: str, dtype: str, tmp_path):
    """(stage module, example inputs, options) for the stage this platform compiles."""
    s0, s1, shape = two_stages(name)
    xs = samples(shape, CALIB + 1)
    with torch.no_grad():
        if platform == "rk3588":
            module, example, preceding = s1, tuple(s0(*xs[0])), [s0]
        else:
            module, example, preceding = s0, xs[0], []
    options = {"platform": platform, "dtype": dtype}
    if platform == "rk3588":
        options["core_mask"] = "0_1_2"
    if dtype == "int8":
        options["calibration"] = str(npu.write_calibration_set(preceding, xs[1:], tmp_path / "calib"))
    return module, example, options


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
@pytest.mark.parametrize("platform", ["rk3588", "rk3566"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_rknn_stage_matches_pytorch_in_simulator(rknn_python, tmp_path, golden, name, platform, dtype):
    module, example, options = _stage_case(name, platform, dtype, tmp_path)
    out = tmp_path / "board" / "stage1"
    cs = npu.TARGET.compile_stage(module, example, options, out)
    assert cs.backend == "rknn" and cs.module_file == "model.rknn"
    assert (out / "model.rknn").read_bytes()[:4] == b"RKNN"
    meta = json.loads((out / "npu.json").read_text())
    check = meta["check"]
    assert check["ok"] and (check["platform"], check["dtype"]) == (platform, dtype)
    if dtype == "fp16":
        assert check["metric"] == "rel_err" and check["rel_err"] <= 1e-2
    else:
        assert check["metric"] == "min_cosine" and check["min_cosine"] >= 0.999
        assert check["samples"] == 4  # the example plus three calibration samples
        assert f"int8 calibration samples: {CALIB}" in cs.notes
    assert meta["core_mask_value"] == (7 if platform == "rk3588" else None)
    with torch.no_grad():
        ref = [np.asarray(y) for y in module(*example)]
    assert [o["shape"] for o in meta["outputs"]] == [list(r.shape) for r in ref]
    n_npu = int(next(n for n in cs.notes if n.startswith("rknn-toolkit2")).split(", ")[1].split()[0])
    assert n_npu > 0
    if (name, platform, dtype) in (("resnet18", "rk3588", "int8"), ("mobilenet_v2", "rk3566", "fp16")):
        golden.check(f"npu/{name}_{platform}_{dtype}_run_npu.py", (out / "run_npu.py").read_text())


def test_rknn_error_over_threshold_fails_the_compile(rknn_python, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(CompileError) as e:
        npu.TARGET.compile_stage(torch.fx.symbolic_trace(net), (x,),
                                 {"platform": "rk3588", "dtype": "int8", "int8_min_cos": "0.99999999"},
                                 tmp_path / "stage7")
    msg = str(e.value)
    assert "stage stage7" in msg and "is below 0.99999999" in msg and "min cosine" in msg


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_openvino_ir_matches_pytorch(tmp_path, monkeypatch, name):
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'edgeplan[npu]')")
    from edgeplan.runtime import backends
    from edgeplan.runtime.spec import StageSpec, Tensor

    s0, s1, shape = two_stages(name)
    x = samples(shape, 1)[0]
    with torch.no_grad():
        mid = tuple(s0(*x))
        ref = [y.numpy() for y in s1(*mid)]
    out = tmp_path / "stage1"
    cs = npu.TARGET.compile_stage(s1, mid, {"platform": "intel-npu"}, out)
    assert cs.backend == "openvino" and json.loads((out / "npu.json").read_text())["check"]["ok"]
    monkeypatch.setenv("EDGEPLAN_OPENVINO_DEVICE", "CPU")
    spec = StageSpec(model=name, plan_sha256="0" * 64, stage=1, n_stages=2, device="nuc", unit="npu", target="npu",
                     backend="openvino", module=cs.module_file, listen="127.0.0.1:0", microbatch=1, lo=0, hi=1,
                     inputs=tuple(Tensor(f"in{i}", tuple(t.shape), "float32") for i, t in enumerate(mid)),
                     outputs=tuple(Tensor(f"out{i}", r.shape, "float32") for i, r in enumerate(ref)),
                     upstream=(), downstream=())
    got = backends.load(out, spec)([t.numpy() for t in mid])
    for g, r in zip(got, ref, strict=True):
        assert np.max(np.abs(g - r)) <= 1e-2 * float(np.ptp(r))


class _ResidualCut(nn.Module):
    """A stage cut inside a residual block: two inputs, and the skip tensor passed through unchanged."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, a, skip):
        return torch.relu(self.conv(a) + skip), skip


def test_rknn_two_inputs_and_pass_through_output(rknn_python, tmp_path):
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_ResidualCut().eval())
    xs = (torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8))
    npu.TARGET.compile_stage(gm, xs, {"platform": "rk3588"}, tmp_path / "stage2")
    meta = json.loads((tmp_path / "stage2" / "npu.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["in0", "in1"] and len(meta["outputs"]) == 2
    assert meta["check"]["ok"] and meta["check"]["rel_err"] <= 1e-2
