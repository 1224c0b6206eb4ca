"""npu target without the vendor toolchains: options, op check, thresholds, worker contract, loaders, launchers.

The toolkit itself is replaced by a fake ``run_worker`` where a test is about edgeplan's
side of the contract (what it sends, how it judges the answer); the real toolkit runs
in test_npu_rknn.py (marker npu).
"""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn as nn

from edgeplan.errors import CompileError
from edgeplan.runtime.spec import StageSpec, Tensor
from edgeplan.targets import npu, npu_rknn, rknn_env
from edgeplan.targets.base import Target
from edgeplan.targets.registry import get_target


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_registry_returns_the_npu_target():
    t = get_target("npu")
    assert isinstance(t, Target)
    assert t.name == "npu" and t.backends == ("rknn", "openvino")
    assert t.supports({"conv2d", "relu", "groupnorm", "custom"}) == {"groupnorm", "custom"}


@pytest.mark.parametrize("options, words", [
    ({}, ["platform=(missing)", "rk3588", "intel-npu", "target_options.platform"]),
    ({"platform": "rk9999"}, ["platform=rk9999", "rk3566"]),
    ({"platform": "rk3588", "dtype": "int4"}, ["dtype=int4", "fp16, int8"]),
    ({"platform": "rk3588", "core_mask": "5"}, ["core_mask=5", "0_1_2"]),
    ({"platform": "rk3588", "fp16_tol": "big"}, ["fp16_tol='big'", "[0.0, 1.0]"]),
    ({"platform": "rk3588", "opset": "19"}, ["opset='19'"]),
    ({"platform": "rk3588", "mcpu": "x"}, ["unknown npu option(s) mcpu"]),
])
def test_bad_options_name_the_option_and_the_allowed_values(options, words):
    with pytest.raises(CompileError) as e:
        npu.NpuOptions.parse(options, "stage3 (npu)")
    for w in words:
        assert w in str(e.value)
    assert str(e.value).startswith("stage3 (npu)")


def test_options_defaults_and_overrides():
    o = npu.NpuOptions.parse({"platform": "rk3566"}, "s")
    assert (o.dtype, o.core_mask, o.fp16_tol, o.int8_min_cos, o.opset) == ("fp16", "auto", 1e-2, 0.999, 17)
    o = npu.NpuOptions.parse({"platform": "rk3588", "dtype": "int8", "int8_min_cos": "0.99",
                              "supported_ops": "conv2d, relu"}, "s")
    assert o.int8_min_cos == 0.99 and o.supported_ops == frozenset({"conv2d", "relu"})


def test_backend_resolution():
    assert npu.TARGET.resolve_backend("auto", "rk3588") == "rknn"
    assert npu.TARGET.resolve_backend("auto", "intel-npu") == "openvino"
    assert npu.TARGET.resolve_backend("openvino", "rk3588") == "openvino"
    with pytest.raises(CompileError, match="not platform 'intel-npu'"):
        npu.TARGET.resolve_backend("rknn", "intel-npu")
    with pytest.raises(CompileError, match="no backend 'tvm'"):
        npu.TARGET.resolve_backend("tvm", "rk3588")


def test_stage_ops_use_the_tracer_op_kinds():
    ops = dict(npu.stage_ops(torch.fx.symbolic_trace(_net()), (torch.randn(1, 3, 8, 8),)))
    assert list(ops.values()) == ["conv2d", "batchnorm", "relu", "dwconv2d", "relu6", "adaptive_avgpool",
                                  "flatten", "linear"]


class _Indexing(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)  # getitem: an element of chunk's tuple
        return a[:, :, :2] * b.size(1) + b[:, :, :2]  # slice: indexing a tensor; size(1) is not a layer


def test_stage_ops_agree_with_the_tracer_on_getitem_and_slice():
    """The NPU check and the LayerGraph classify every layer the same way (one op-kind API in graph/)."""
    from edgeplan.graph.trace import trace

    traced = trace(_Indexing(), (1, 4, 3), "indexing")
    kinds = dict(npu.stage_ops(traced.gm, (torch.randn(1, 4, 3),)))
    assert kinds == {layer.name: layer.op for layer in traced.graph.layers}
    assert sorted(kinds.values()) == ["add", "getitem", "getitem", "mul", "slice", "slice", "split"]
    gm = torch.fx.symbolic_trace(_Indexing())
    with pytest.raises(CompileError, match="is op 'slice'"):  # a unit listing getitem only refuses the slices
        npu.check_supported(gm, (torch.randn(1, 4, 3),), frozenset({"split", "getitem", "mul", "add"}), "s")


def test_supported_ops_option_narrows_npu_ops_only():
    with pytest.raises(CompileError, match="supported_ops lists groupnorm, which no NPU backend compiles"):
        npu.NpuOptions.parse({"platform": "rk3588", "supported_ops": "conv2d,groupnorm"}, "s")


def test_unsupported_op_is_refused_naming_layer_and_op(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.GELU()).eval()
    gm = torch.fx.symbolic_trace(net)
    with pytest.raises(CompileError) as e:
        npu.TARGET.compile_stage(gm, (torch.randn(1, 3, 8, 8),), {"platform": "rk3588"}, tmp_path / "stage2")
    msg = str(e.value)
    assert "stage2 (npu): layer '_1' is op 'groupnorm'" in msg and "Re-plan" in msg
    assert not (tmp_path / "stage2").exists()
    # A unit's profile may narrow the list: gelu is refused when only conv2d is listed.
    gm2 = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU()).eval())
    with pytest.raises(CompileError, match="layer '_1' is op 'gelu'"):
        npu.TARGET.compile_stage(gm2, (torch.randn(1, 3, 8, 8),),
                                 {"platform": "rk3588", "supported_ops": "conv2d"}, tmp_path / "s")


def test_missing_toolchain_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPLAN_RKNN_VENV", str(tmp_path / "no-venv"))
    gm = torch.fx.symbolic_trace(_net())
    with pytest.raises(CompileError) as e:
        npu.TARGET.compile_stage(gm, (torch.randn(1, 3, 8, 8),), {"platform": "rk3588"}, tmp_path / "stage0")
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("run: edgeplan toolchain install rknn")


def test_compare_metrics():
    ref = [[np.array([0.0, 1.0, 2.0, 4.0], np.float32)]]
    got = [[np.array([0.0, 1.0, 2.0, 4.04], np.float32)]]
    max_abs, rel, cos = npu.compare(ref, got)
    assert max_abs == pytest.approx(0.04, rel=1e-4)
    assert rel == pytest.approx(0.01, rel=1e-4)  # 0.04 over the range 4
    assert 0.9999 < cos < 1.0
    assert npu.compare(ref, [[-ref[0][0]]])[2] == pytest.approx(-1.0)
    with pytest.raises(CompileError, match="changed a shape"):
        npu.compare(ref, [[np.zeros(3)]])


def _fake_worker(monkeypatch, noise: float, seen: list):
    """Replace the toolkit: 'simulate' by running the exported ONNX with onnxruntime, plus noise."""
    import onnxruntime as ort

    def run_worker(request, workdir, timeout_s=900.0, python=None):
        ds = request["dataset"]
        seen.append({**request, "dataset_lines": Path(ds).read_text().splitlines() if ds else None})
        sess = ort.InferenceSession(request["onnx"], providers=["CPUExecutionProvider"])
        Path(request["rknn"]).write_bytes(b"RKNN fake")
        out_dir = Path(request["outputs_dir"])
        out_dir.mkdir(parents=True)
        outputs = []
        for i, paths in enumerate(request["check_inputs"]):
            feed = {x.name: np.load(p) for x, p in zip(sess.get_inputs(), paths, strict=True)}
            row = []
            for j, y in enumerate(sess.run(None, feed)):
                p = out_dir / f"{i}_{j}.npy"
                np.save(p, y + noise * np.random.default_rng(j).standard_normal(y.shape).astype(np.float32))
                row.append(str(p))
            outputs.append(row)
        resp = {"ok": True, "step": "done", "error": "", "outputs": outputs, "seconds": {"build": 0.1},
                "toolkit": "2.5.0"}
        return rknn_env.WorkerResult(resp, LAYER_LOG, 0.1)

    monkeypatch.setattr(rknn_env, "require_rknn_python", lambda venv=None: Path(sys.executable))
    monkeypatch.setattr(rknn_env, "run_worker", run_worker)


def test_compile_writes_model_meta_and_launcher(tmp_path, monkeypatch):
    seen: list = []
    _fake_worker(monkeypatch, 0.0, seen)
    x = torch.randn(2, 3, 16, 16)
    cs = npu.TARGET.compile_stage(torch.fx.symbolic_trace(_net()), (x,),
                                  {"platform": "rk3588", "core_mask": "0_1_2"}, tmp_path / "stage1")
    assert (cs.backend, cs.module_file, cs.files) == ("rknn", "model.rknn", ("model.rknn", "npu.json", "run_npu.py"))
    for f in cs.files:
        assert (tmp_path / "stage1" / f).is_file()
    req = seen[0]
    assert (req["platform"], req["dtype"], req["dataset"]) == ("rk3588", "fp16", None)
    meta = json.loads((tmp_path / "stage1" / "npu.json").read_text())
    assert meta["core_mask_value"] == 7 and meta["inputs"][0]["shape"] == [2, 3, 16, 16]
    assert meta["check"]["ok"] and meta["check"]["metric"] == "rel_err"
    assert cs.notes[0].startswith("rknn rk3588 fp16: max abs err")
    assert "toolkit placed on the board CPU: Softmax:/8/Softmax" in cs.notes


def test_int8_calibration_set_from_preceding_stages(tmp_path, monkeypatch):
    seen: list = []
    _fake_worker(monkeypatch, 0.0, seen)
    torch.manual_seed(1)
    pre = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).eval()
    samples = [(torch.randn(1, 3, 16, 16),) for _ in range(5)]
    ds = npu.write_calibration_set([pre], samples, tmp_path / "calib")
    lines = ds.read_text().splitlines()
    assert len(lines) == 5 and all(len(ln.split()) == 1 for ln in lines)
    with torch.no_grad():
        expect = pre(*samples[2]).numpy()
    np.testing.assert_array_equal(np.load(lines[2]), expect)
    cs = npu.TARGET.compile_stage(torch.fx.symbolic_trace(_net()), samples[0],
                                  {"platform": "rk3566", "dtype": "int8", "calibration": str(ds)},
                                  tmp_path / "stage1")
    req = seen[0]
    assert req["dtype"] == "int8" and len(req["dataset_lines"]) == 5
    assert len(req["check_inputs"]) == 4  # the example input plus three calibration samples
    assert "int8 calibration samples: 5" in cs.notes
    meta = json.loads((tmp_path / "stage1" / "npu.json").read_text())
    assert meta["core_mask_value"] is None  # rk3566 has one NPU core


def test_error_over_threshold_names_stage_error_and_threshold(tmp_path, monkeypatch):
    _fake_worker(monkeypatch, 0.5, [])
    with pytest.raises(CompileError) as e:
        npu.TARGET.compile_stage(torch.fx.symbolic_trace(_net()), (torch.randn(1, 3, 16, 16),),
                                 {"platform": "rk3588"}, tmp_path / "stage4")
    msg = str(e.value)
    assert "stage stage4" in msg and "rel_err" in msg and "above 0.01" in msg and "fp16_tol" in msg
    assert not (tmp_path / "stage4" / "npu.json").exists()
    # int8 judges cosine similarity, and the threshold can be lowered per unit.
    _fake_worker(monkeypatch, 0.05, [])
    with pytest.raises(CompileError, match=r"min_cosine .* is below 0.9999"):
        npu.TARGET.compile_stage(torch.fx.symbolic_trace(_net()), (torch.randn(1, 3, 16, 16),),
                                 {"platform": "rk3588", "dtype": "int8", "int8_min_cos": "0.9999"},
                                 tmp_path / "stage5")


def test_worker_failure_names_the_step(tmp_path, monkeypatch):
    def run_worker(request, workdir, timeout_s=900.0, python=None):
        resp = {"ok": False, "step": "build", "error": "ValueError: bad op", "outputs": [], "seconds": {}}
        return rknn_env.WorkerResult(resp, "E build: Conv weight missing\n", 0.1)

    monkeypatch.setattr(rknn_env, "require_rknn_python", lambda venv=None: Path(sys.executable))
    monkeypatch.setattr(rknn_env, "run_worker", run_worker)
    with pytest.raises(CompileError, match=r"(?s)rknn-toolkit2 failed at build: ValueError: bad op.*Conv weight"):
        npu.TARGET.compile_stage(torch.fx.symbolic_trace(_net()), (torch.randn(1, 3, 16, 16),),
                                 {"platform": "rk3588"}, tmp_path / "stage0")


LAYER_LOG = """\
I rknn building ...
D RKNN: [03:11:41.961] Network Layer Information Table
D RKNN: [03:11:41.961] ----------------------------------------------------------------------------
D RKNN: [03:11:41.961] ID   OpType             DataType Target InputShape    OutputShape   FullName
D RKNN: [03:11:41.961] ----------------------------------------------------------------------------
D RKNN: [03:11:41.961] 0    InputOperator      FLOAT16  CPU    \\             (1,3,32,32)   InputOperator:x
D RKNN: [03:11:41.961] 1    ConvRelu           FLOAT16  NPU    (1,3,32,32)   (1,8,32,32)   Conv:/0/Conv
D RKNN: [03:11:41.961] 2    Softmax            FLOAT16  CPU    (1,8,32,32)   (1,8,32,32)   Softmax:/8/Softmax
D RKNN: [03:11:41.961] 3    OutputOperator     FLOAT16  CPU    (1,4)         \\             OutputOperator:y
D RKNN: [03:11:41.961] ----------------------------------------------------------------------------
\x1b[1;33mW\x1b[0m Restore temperate env
"""


def test_parse_layer_table():
    rows = npu_rknn.parse_layer_table(LAYER_LOG)
    assert [(r["op"], r["target"], r["name"]) for r in rows] == [
        ("InputOperator", "CPU", "x"), ("ConvRelu", "NPU", "/0/Conv"), ("Softmax", "CPU", "/8/Softmax"),
        ("OutputOperator", "CPU", "y")]
    assert npu_rknn.parse_layer_table("no table here") == []


def test_worker_imports_no_edgeplan_and_checks_argv(tmp_path, capsys):
    tree = ast.parse(rknn_env.WORKER.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "json", "sys", "time", "traceback", "pathlib", "numpy", "rknn", "importlib"}
    import runpy

    ns = runpy.run_path(str(rknn_env.WORKER))
    assert ns["main"](["rknn_worker.py"]) == 2
    # Without the toolkit (this venv), the worker still answers, naming the failed step.
    req, resp = tmp_path / "req.json", tmp_path / "resp.json"
    req.write_text(json.dumps({"onnx": "x.onnx", "rknn": "x.rknn", "platform": "rk3588", "dtype": "fp16"}))
    if "rknn" not in sys.modules:
        assert ns["main"](["w", str(req), str(resp)]) == 1
        out = json.loads(resp.read_text())
        assert out["ok"] is False and out["step"] == "import" and "rknn" in out["error"]


def test_install_runs_the_pinned_steps_in_order(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    class Proc:
        def __init__(self, cmd, rc=0, out=""):
            self.returncode, self.stdout, self.stderr = rc, out, "boom" if rc else ""

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").write_text("")
        return Proc(cmd, out="2.5.0\n" if cmd[1] == "-c" else "")

    monkeypatch.setattr(rknn_env.subprocess, "run", fake_run)
    venv = tmp_path / "venv"
    assert rknn_env.find_rknn_python(venv) is None
    py = rknn_env.install(venv=venv, python="python3.11", log=lambda s: None)
    assert py == venv / "bin" / "python" and rknn_env.find_rknn_python(venv) == py
    pip = [c[4:] for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert pip[0] == ["--no-deps", "rknn_toolkit2==2.5.0"]
    assert "numpy<=1.26.4" in pip[1] and "onnx<=1.18.0,>=1.16.1" in pip[1] and "protobuf<=4.25.4,>=4.21.6" in pip[1]
    assert pip[2:] == [["torch==2.13.0"], ["setuptools<81"]]
    assert calls[-1][1] == "-c" and "from rknn.api import RKNN" in calls[-1][2]
    # Installed: a second call does nothing.
    calls.clear()
    rknn_env.install(venv=venv, log=lambda s: None)
    assert calls == []
    # A failing step names the command and the retry.
    monkeypatch.setattr(rknn_env.subprocess, "run", lambda cmd, **kw: Proc(cmd, rc=1))
    with pytest.raises(CompileError, match=r"(?s)failed at .*rknn_toolkit2==2.5.0.*boom.*--force"):
        rknn_env.install(venv=venv, force=True, log=lambda s: None)
    assert rknn_env.find_rknn_python(venv) is None  # the marker went with the failed reinstall


def test_cli_toolchain_status(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgeplan.cli import app

    monkeypatch.setenv("EDGEPLAN_RKNN_VENV", str(tmp_path / "none"))
    res = CliRunner().invoke(app, ["toolchain", "status", "rknn"])
    assert res.exit_code == 1 and "run: edgeplan toolchain install rknn" in res.output
    res = CliRunner().invoke(app, ["toolchain", "install", "tflite"])
    assert res.exit_code != 0


# --- board-side loaders -----------------------------------------------------------------

def _spec(backend: str, module: str, ins, outs) -> StageSpec:
    return StageSpec(model="m", plan_sha256="0" * 64, stage=1, n_stages=2, device="rock5b", unit="npu",
                     target="npu", backend=backend, module=module, listen="127.0.0.1:0", microbatch=1, lo=0, hi=1,
                     inputs=tuple(Tensor(f"in{i}", s, "float32") for i, s in enumerate(ins)),
                     outputs=tuple(Tensor(f"out{i}", s, "float32") for i, s in enumerate(outs)),
                     upstream=(), downstream=())


class FakeLite:
    """Records what the loader asks of RKNNLite; answers with fixed-size outputs."""

    calls: list = []

    def load_rknn(self, path):
        FakeLite.calls.append(("load_rknn", Path(path).name))
        return 0

    def init_runtime(self, **kw):
        FakeLite.calls.append(("init_runtime", kw))
        return 0

    def inference(self, inputs, data_format):
        FakeLite.calls.append(("inference", [a.shape for a in inputs], data_format))
        return [np.arange(10, dtype=np.float32)[None, :]]

    def release(self):
        FakeLite.calls.append(("release",))


@pytest.mark.parametrize("platform, mask, expect", [("rk3588", 3, {"core_mask": 3}), ("rk3566", None, {})])
def test_rknn_loader_uses_core_mask_and_nchw(tmp_path, monkeypatch, platform, mask, expect):
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    (tmp_path / "npu.json").write_text(json.dumps({"platform": platform, "core_mask_value": mask}))
    from edgeplan.runtime import backends

    FakeLite.calls = []
    run = backends.load(tmp_path, _spec("rknn", "model.rknn", [(1, 8, 4, 4)], [(1, 10)]))
    out = run([np.zeros((1, 8, 4, 4), np.float64)])
    assert out[0].shape == (1, 10) and out[0].dtype == np.float32
    assert FakeLite.calls == [("load_rknn", "model.rknn"), ("init_runtime", expect),
                              ("inference", [(1, 8, 4, 4)], ["nchw"])]
    with pytest.raises(ValueError, match="got 2 inputs"):
        run([np.zeros((1, 8, 4, 4))] * 2)


def test_rknn_loader_without_meta_says_recompile(tmp_path):
    from edgeplan.runtime import backend_rknn

    with pytest.raises(RuntimeError, match="recompile"):
        backend_rknn.load(tmp_path, _spec("rknn", "model.rknn", [(1, 4)], [(1, 4)]))


def test_openvino_compile_and_board_loader(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'edgeplan[npu]')")
    from edgeplan.runtime import backends

    net = _net()
    x = torch.randn(1, 3, 16, 16)
    cs = npu.TARGET.compile_stage(torch.fx.symbolic_trace(net), (x,), {"platform": "intel-npu"}, tmp_path / "stage0")
    assert (cs.backend, cs.module_file) == ("openvino", "model.xml")
    assert cs.files == ("model.bin", "model.xml", "npu.json", "run_npu.py")
    spec = _spec("openvino", "model.xml", [(1, 3, 16, 16)], [(1, 4)])
    monkeypatch.setenv("EDGEPLAN_OPENVINO_DEVICE", "NPU_THAT_IS_NOT_HERE")
    with pytest.raises(RuntimeError, match="EDGEPLAN_OPENVINO_DEVICE=CPU"):
        backends.load(tmp_path / "stage0", spec)
    monkeypatch.setenv("EDGEPLAN_OPENVINO_DEVICE", "CPU")
    run = backends.load(tmp_path / "stage0", spec)
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(run([x.numpy()])[0], ref, atol=1e-2 * float(np.ptp(ref)))
    with pytest.raises(CompileError, match="fp16 IR only"):
        npu.TARGET.compile_stage(torch.fx.symbolic_trace(net), (x,), {"platform": "intel-npu", "dtype": "int8"},
                                 tmp_path / "stage9")


# --- launchers and README lines --------------------------------------------------------

_META = {
    "inputs": [{"name": "in0", "shape": [1, 128, 28, 28], "layout": "nchw"}],
    "outputs": [{"name": "out0", "shape": [1, 1000]}],
}


@pytest.mark.parametrize("backend, platform, dtype, mask, value, module", [
    ("rknn", "rk3588", "int8", "0_1_2", 7, "model.rknn"),
    ("rknn", "rk3566", "fp16", "auto", None, "model.rknn"),
    ("openvino", "intel-npu", "fp16", "auto", None, "model.xml"),
])
def test_launcher_golden(golden, backend, platform, dtype, mask, value, module):
    meta = {**_META, "backend": backend, "platform": platform, "dtype": dtype, "core_mask": mask,
            "core_mask_value": value}
    text = npu.render_launcher(meta, module, "stage1")
    compile(text, "run_npu.py", "exec")
    golden.check(f"npu/run_npu_{backend}_{platform}.py", text)


def test_runtime_requirements_golden(golden):
    lines = [f"[{b}]\n" + "\n".join(npu.TARGET.runtime_requirements(b)) for b in npu.TARGET.backends]
    golden.check("npu/README-requirements.txt", "\n\n".join(lines) + "\n")
    with pytest.raises(CompileError, match="no backend 'tvm'"):
        npu.TARGET.runtime_requirements("tvm")
