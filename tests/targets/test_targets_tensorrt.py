"""TensorRT backend of cuda units, tested up to the line where a GPU is needed (issue 18 item 1).

The compile side runs for real (ONNX export checked with ONNX Runtime, trt.json). The
board side runs for real against fake ``tensorrt`` modules with the API shapes of
TensorRT 8.2 (JetPack 4.6), 8.5 (JetPack 5) and 10.3 (JetPack 6.1+) and a fake CUDA
runtime whose "device" memory is host memory (``_fake_tensorrt``); the fake engine
runs the stage's ONNX file, so the runner's answers are compared with PyTorch.
Nothing here builds or runs a real engine: that needs a Jetson.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan import jsonio
from edgeplan.errors import CompileError
from edgeplan.runtime import backend_tensorrt, backends, trt_build
from edgeplan.runtime.spec import StageSpec, Tensor
from edgeplan.targets.registry import get_target

from . import _fake_tensorrt as fake
from ._nets import stage_module

REPO = Path(__file__).resolve().parents[2]
VERSIONS = {"8.2": "8.2.1.8", "8.5": "8.5.2.2", "10": "10.3.0.30"}


def _spec(cs, example, outs, stage: int = 1) -> StageSpec:
    def tensors(prefix, ts):
        return tuple(Tensor(f"{prefix}{i}", tuple(t.shape), "float32") for i, t in enumerate(ts))

    return StageSpec(model="t", plan_sha256="0" * 64, stage=stage, n_stages=2, device="jetson", unit="gpu",
                     target="cuda", backend=cs.backend, module=cs.module_file, listen="127.0.0.1:0",
                     microbatch=1, lo=0, hi=1, inputs=tensors("in", example), outputs=tensors("out", outs),
                     upstream=(), downstream=())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One cuda stage compiled for TensorRT (two inputs, two outputs), its reference outputs and spec."""
    out = tmp_path_factory.mktemp("trt") / "stage1"
    gm, example = stage_module()
    with torch.no_grad():
        ref = [t.numpy() for t in gm(*example)]
    cs = get_target("cuda").compile_stage(gm, example, {"arch": "sm_53", "jetpack": "4.6.1"}, out)
    spec = _spec(cs, example, ref)
    jsonio.write(out / "stage.json", spec.to_json())
    return out, cs, spec, [t.numpy() for t in example], ref


@pytest.fixture
def stage(compiled, tmp_path):
    """A fresh copy of the compiled stage folder (no engine cached yet)."""
    src, cs, spec, inputs, ref = compiled
    dst = tmp_path / "stage1"
    shutil.copytree(src, dst)
    return dst, cs, spec, inputs, ref


@pytest.fixture
def use_trt(monkeypatch):
    """Install a fake tensorrt of the given version and a fake CUDA runtime; returns (trt, cuda)."""
    def install(version: str, **kw):
        trt = fake.make(version, **kw)
        cuda = fake.FakeCuda()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(backend_tensorrt, "CudaRuntime", lambda: cuda)
        return trt, cuda
    return install


def test_auto_picks_tensorrt_and_writes_onnx_and_settings(compiled):
    out, cs, spec, _, _ = compiled
    assert cs.backend == "tensorrt" and cs.module_file == "stage.onnx"
    assert set(cs.files) == {"stage.onnx", "trt.json"} and all((out / f).is_file() for f in cs.files)
    meta = json.loads((out / "trt.json").read_text())
    assert meta["precision"] == "fp16" and meta["jetpack"] == "4.6.1" and meta["arch"] == "sm_53"
    assert [op for _, op in meta["nodes"]].count("Conv") == 2
    assert any("ONNX export checked" in n for n in cs.notes)
    import onnx

    # TensorRT 8.2's ONNX parser (JetPack 4.6) reads opsets up to 13: the Nano's stage is exported at 13
    assert meta["opset"] == 13 and onnx.load(str(out / "stage.onnx")).opset_import[0].version == 13


def test_onnx_opset_follows_the_boards_tensorrt(tmp_path):
    import onnx

    gm, example = stage_module()
    cs = get_target("cuda").compile_stage(gm, example, {"arch": "sm_87", "jetpack": "6.0"}, tmp_path)
    assert onnx.load(str(tmp_path / cs.module_file)).opset_import[0].version == 17
    assert json.loads((tmp_path / "trt.json").read_text())["opset"] == 17


@pytest.mark.parametrize("level", list(VERSIONS))
def test_runner_matches_torch_on_each_api_shape(stage, use_trt, level):
    stage_dir, cs, spec, inputs, ref = stage
    trt, cuda = use_trt(VERSIONS[level])
    runner = backends.load(stage_dir, spec)
    got = runner(inputs)
    assert len(got) == 2
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape and np.abs(g - r).max() < 1e-4
    calls = [c for c, _ in trt.log]
    flags = dict(trt.log)["create_network"]
    if level == "8.2":
        assert flags == 1 and "max_workspace_size" in calls and "execute_async_v2" in calls
        assert dict(trt.log)["max_workspace_size"] == 256 << 20
    else:
        assert "set_memory_pool_limit" in calls and "execute_async_v3" in calls and "execute_async_v2" not in calls
        assert flags == (0 if level == "10" else 1)
    assert cuda.copies == 4 and cuda.syncs == 1  # two inputs in, two outputs out, one stream sync per call
    # a second call reuses the pinned buffers and gives the same answers for new inputs
    again = runner([a * 2 for a in inputs])
    assert not np.allclose(again[1], got[1]) and cuda.copies == 8


def test_engine_is_cached_by_onnx_sha256_trt_version_precision_and_gpu(stage, use_trt):
    stage_dir, cs, spec, inputs, ref = stage
    trt, cuda = use_trt("8.2.1.8")
    backends.load(stage_dir, spec)
    backends.load(stage_dir, spec)
    assert trt.builds == 1  # the second start loads the cached engine
    sha = trt_build.file_sha256(stage_dir / "stage.onnx")
    engines = sorted(p.name for p in stage_dir.glob("*.engine"))
    assert engines == [f"stage-{sha[:16]}-trt8.2.1.8-fp16-sm53.engine"]
    # JetPack upgrade: another TensorRT builds its own engine beside the old one, never loads it
    trt2, _ = use_trt("8.5.2.2")
    backends.load(stage_dir, spec)
    assert trt2.builds == 1 and len(list(stage_dir.glob("*.engine"))) == 2
    # a new stage.onnx (re-compiled stage) is a new key
    names = {trt_build.engine_name(sha, "8.2.1.8", "fp16", "53"), trt_build.engine_name("f" * 64, "8.2.1.8", "fp16",
                                                                                            "53"),
             trt_build.engine_name(sha, "8.2.1.8", "fp32", "53"), trt_build.engine_name(sha, "8.2.1.8", "fp16", "87")}
    assert len(names) == 4


def test_engine_dir_env_keeps_a_read_only_stage_folder_clean(stage, use_trt, monkeypatch, tmp_path):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt("10.3.0.30")
    monkeypatch.setenv(trt_build.ENGINE_DIR_ENV, str(tmp_path / "engines"))
    backends.load(stage_dir, spec)
    assert not list(stage_dir.glob("*.engine")) and len(list((tmp_path / "engines").glob("*.engine"))) == 1


def test_fp32_when_the_gpu_has_no_fast_fp16(stage, use_trt):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt("8.2.1.8", fast_fp16=False)
    lines = []
    trt = sys.modules["tensorrt"]
    meta = trt_build.read_meta(stage_dir)
    data = trt_build.build(trt, stage_dir / "stage.onnx", meta, 1, lines.append)
    assert data.split(b"|")[2] == b"fp32" and any("no fast fp16" in line for line in lines)


def test_engine_of_another_version_under_this_name_fails_at_load_with_the_fix(stage, use_trt):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt("8.2.1.8")
    sha = trt_build.file_sha256(stage_dir / "stage.onnx")
    bogus = stage_dir / trt_build.engine_name(sha, "8.2.1.8", "fp16", "53")
    bogus.write_bytes(b"FAKETRT|8.0.1.6|fp16|" + (stage_dir / "stage.onnx").read_bytes())
    with pytest.raises(trt_build.TrtError, match=r"stage 1: .* is not an engine TensorRT 8\.2\.1\.8 can load .*"
                                                 r"delete it and start again"):
        backends.load(stage_dir, spec)


@pytest.mark.parametrize("level", ["8.2", "10"])
def test_op_tensorrt_rejects_names_stage_node_op_and_fix(stage, use_trt, level):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt(VERSIONS[level], reject_op="Gemm")
    with pytest.raises(trt_build.TrtError) as e:
        backends.load(stage_dir, spec)
    msg = str(e.value)
    nodes = json.loads((stage_dir / "trt.json").read_text())["nodes"]
    idx = [op for _, op in nodes].index("Gemm")
    assert msg.startswith(f"stage 1: TensorRT {VERSIONS[level]} rejects ONNX node {idx} {nodes[idx][0]!r} (op Gemm)")
    assert "--backend tvm" in msg and "\n" not in msg
    assert not list(stage_dir.glob("*.engine"))


def test_tensorrt_older_than_jetpack_4_6_is_refused(stage, use_trt):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt("7.1.3.0")
    with pytest.raises(trt_build.TrtError, match="stage 1: TensorRT 7.1.3.0 is older than 8.0.*upgrade JetPack"):
        backends.load(stage_dir, spec)


def test_missing_bindings_name_the_stage_the_package_and_the_python(stage, monkeypatch):
    stage_dir, cs, spec, inputs, ref = stage
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(trt_build.TrtError, match=r"stage 1: TensorRT's Python bindings are not importable .*"
                                                 r"python3-libnvinfer.*JetPack 4\.6: 3\.6"):
        backends.load(stage_dir, spec)


def test_worker_exits_nonzero_at_start_with_one_line_when_tensorrt_is_missing(stage):
    stage_dir, cs, spec, inputs, ref = stage
    pytest.importorskip("zmq")
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("a real tensorrt is installed here; this checks a board without it")
    r = subprocess.run([sys.executable, "-m", "edgeplan.runtime.worker", "--stage", str(stage_dir)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 4, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "stage 1" in lines[0] and "python3-libnvinfer" in lines[0], r.stderr
    assert "READY" not in r.stdout


_WORKER_WITH_FAKE_TENSORRT = """
import runpy, sys
from tests.targets import _fake_tensorrt as fake
from edgeplan.runtime import backend_tensorrt
sys.modules["tensorrt"] = fake.make(sys.argv[1], reject_op=sys.argv[2] or None)
backend_tensorrt.CudaRuntime = lambda: fake.FakeCuda()
sys.argv = ["worker", "--stage", sys.argv[3]]
runpy.run_module("edgeplan.runtime.worker", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("case", ["rejected op", "engine of another TensorRT"])
def test_worker_exits_nonzero_at_start_with_one_line_on_bad_tensorrt_input(stage, case):
    """Issue 18 "Bad input" on the board: the stage worker (a fake TensorRT 8.2, JetPack 4.6's) stops before it
    listens, with exit status 4 and one line naming the stage, the op or version, and the fix."""
    stage_dir, cs, spec, inputs, ref = stage
    reject = "Gemm" if case == "rejected op" else ""
    if case == "engine of another TensorRT":
        sha = trt_build.file_sha256(stage_dir / "stage.onnx")
        bogus = stage_dir / trt_build.engine_name(sha, "8.2.1.8", "fp16", "53")
        bogus.write_bytes(b"FAKETRT|8.0.1.6|fp16|" + (stage_dir / "stage.onnx").read_bytes())
    r = subprocess.run([sys.executable, "-c", _WORKER_WITH_FAKE_TENSORRT, "8.2.1.8", reject, str(stage_dir)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 4, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]  # a progress line ("building ..."), then the reason
    lines = [ln for ln in err if "cannot load module" in ln]
    assert len(lines) == 1 and lines[0] == err[-1] and "stage 1: " in lines[0], r.stderr
    if reject:
        assert "TensorRT 8.2.1.8 rejects ONNX node" in lines[0] and "(op Gemm)" in lines[0]
        assert "--backend tvm" in lines[0]
    else:
        assert "is not an engine TensorRT 8.2.1.8 can load" in lines[0] and "delete it and start again" in lines[0]
    assert "READY" not in r.stdout


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_trt_build_cli_builds_once_then_finds_the_cache(stage, use_trt, capsys):
    stage_dir, cs, spec, inputs, ref = stage
    trt, _ = use_trt("8.5.2.2")
    assert trt_build.main([str(stage_dir)]) == 0
    assert trt_build.main([str(stage_dir / "stage.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{stage_dir}: built ") and out[1].startswith(f"{stage_dir}: cached ")
    assert trt.builds == 1


def test_trt_build_cli_fails_with_one_line_per_bad_stage(stage, use_trt, capsys, tmp_path):
    stage_dir, cs, spec, inputs, ref = stage
    use_trt("8.2.1.8", reject_op="Conv")
    assert trt_build.main([str(stage_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # a progress line ("building ..."), then the reason
    bad = [line for line in err if "rejects" in line]
    assert len(bad) == 1 and bad[0] == err[-1] and "(op Conv)" in bad[0]
    assert bad[0].startswith(f"{stage_dir}: stage 1: ")


def test_bad_cuda_options_name_the_fix(tmp_path):
    gm, example = stage_module()
    target = get_target("cuda")
    with pytest.raises(CompileError, match="unknown jetpack '4.2'.*4.6.1"):
        target.compile_stage(gm, example, {"arch": "sm_53", "jetpack": "4.2"}, tmp_path / "a")
    with pytest.raises(CompileError, match="JetPack 6.0 does not support sm_53"):
        target.compile_stage(gm, example, {"arch": "sm_53", "jetpack": "6.0"}, tmp_path / "b")
    with pytest.raises(CompileError, match="precision 'int8' is not one of fp16, fp32"):
        target.compile_stage(gm, example, {"precision": "int8"}, tmp_path / "c")
    with pytest.raises(CompileError, match="workspace_mb"):
        target.compile_stage(gm, example, {"workspace_mb": "lots"}, tmp_path / "d")
    with pytest.raises(CompileError, match="no backend 'onnxruntime'; valid: auto, tensorrt, tvm"):
        target.compile_stage(gm, example, {}, tmp_path / "e", backend="onnxruntime")


def test_install_notes_and_warnings_follow_the_profiles_jetpack():
    target = get_target("cuda")
    nano = {"arch": "sm_53", "jetpack": "4.6.1"}
    notes = target.install_notes("tensorrt", nano)
    assert any(line.startswith("JetPack 4.6.1-4.6.6 (L4T R32.7): CUDA 10.2, TensorRT 8.2.1, Python 3.6")
               and "<- the board profile's JetPack" in line for line in notes)
    assert not any("JetPack 6" in line for line in notes)  # the Nano stops at JetPack 4.6.x
    orin = target.install_notes("tensorrt", {"arch": "sm_87", "jetpack": "6.0"})
    assert any("TensorRT 10.3.0" in line for line in orin) and any("TensorRT 8.5.2" in line for line in orin)
    # were the board runtime to need Python 3.10, JetPack 4.6's bindings (for 3.6) would warn and name the fix;
    # JetPack 6 would not. It needs 3.6 (codegen.compile.BOARD_PYTHON), which JetPack 4.6 has: no warning
    (w,) = target.runtime_warnings("tensorrt", nano, (3, 10))
    assert "Python 3.6" in w and "needs Python 3.10" in w and "no JetPack for sm_53 has Python 3.10" in w
    (w,) = target.runtime_warnings("tensorrt", {"arch": "sm_87", "jetpack": "5.1.2"}, (3, 10))
    assert "flash JetPack 6.0 or newer for sm_87" in w
    assert target.runtime_warnings("tensorrt", {"arch": "sm_87", "jetpack": "6.0"}, (3, 10)) == ()
    assert target.runtime_warnings("tensorrt", nano, (3, 6)) == ()
    (w,) = target.runtime_warnings("tvm", nano, (3, 6))
    assert "CUDA 10.2" in w and "CUDA 13" in w and "build-tvm-runtime.sh" in w
    (w,) = target.runtime_warnings("tensorrt", {"arch": "sm_53"}, (3, 10))
    assert "names no jetpack" in w


@pytest.mark.tvm
def test_backend_tvm_keeps_the_tvm_path_with_a_jetson_profiles_options(tmp_path):
    """--backend tvm on a unit whose profile names jetpack/precision: those describe the board, TVM ignores them."""
    from edgeplan.targets import _tvm

    gm, example = stage_module()
    options = {"arch": "sm_53", "host_mcpu": "cortex-a57", "jetpack": "4.6.1", "precision": "fp16"}
    cs = get_target("cuda").compile_stage(gm, example, options, tmp_path, backend="tvm")
    assert cs.backend == "tvm" and _tvm.elf_machine(tmp_path / cs.module_file) == 183  # EM_AARCH64
    assert get_target("cuda").runtime_build("tvm").cmake_flags[-1] == "-DUSE_CUDA=/usr/local/cuda"
    assert get_target("cuda").runtime_build("tensorrt") is None
