"""Compile small stages for every target; run x86 builds through the board-side loaders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan.errors import CompileError
from edgeplan.runtime import backends
from edgeplan.runtime.spec import StageSpec, Tensor
from edgeplan.targets import _tvm
from edgeplan.targets.registry import get_target

from ._nets import stage_module

AARCH64 = 183


def _spec(cs, target: str, example, outs) -> StageSpec:
    def tensors(prefix, ts):
        return tuple(Tensor(f"{prefix}{i}", tuple(t.shape), str(t.dtype).replace("torch.", "")) for i, t in
                     enumerate(ts))
    return StageSpec(model="t", plan_sha256="0" * 64, stage=0, n_stages=1, device="local", unit="cpu",
                     target=target, backend=cs.backend, module=cs.module_file, listen="127.0.0.1:0",
                     microbatch=1, lo=0, hi=1, inputs=tensors("in", example), outputs=tensors("out", outs),
                     upstream=(), downstream=())


def _run_and_compare(tmp_path, backend: str):
    gm, example = stage_module()
    with torch.no_grad():
        ref = gm(*example)
    cs = get_target("x86").compile_stage(gm, example, {}, tmp_path, backend=backend)
    assert cs.module_file in cs.files and (tmp_path / cs.module_file).exists()
    runner = backends.load(tmp_path, _spec(cs, "x86", example, ref))
    outs = runner([t.numpy() for t in example])
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref, strict=True):
        assert o.shape == tuple(r.shape)
        assert np.abs(o - r.numpy()).max() < 1e-4
    return cs


@pytest.mark.tvm
def test_x86_tvm_matches_torch(tmp_path):
    cs = _run_and_compare(tmp_path, "tvm")
    assert cs.backend == "tvm" and cs.module_file == "stage.so"
    assert _tvm.elf_machine(tmp_path / "stage.so") == 62


def test_x86_onnxruntime_matches_torch(tmp_path):
    cs = _run_and_compare(tmp_path, "onnxruntime")
    assert cs.backend == "onnxruntime" and cs.files == ("stage.onnx",)


@pytest.mark.tvm
def test_x86_auto_measures_both_and_keeps_one(tmp_path):
    cs = _run_and_compare(tmp_path, "auto")
    assert cs.backend in ("tvm", "onnxruntime")
    assert cs.files == (cs.module_file,)
    measured = [n for n in cs.notes if n.startswith("measured")]
    assert measured and "tvm" in measured[0] and "onnxruntime" in measured[0]
    timed = dict(cs.measured_ms)
    assert set(timed) == {"tvm", "onnxruntime"} and all(v > 0 for v in timed.values())
    assert cs.backend == min(timed, key=timed.get)


@pytest.mark.tvm
def test_x86_auto_says_when_onnx_export_fails_and_tvm_is_kept(tmp_path, monkeypatch):
    """The ONNX -> TVM fallback is a printed note (CompiledStage.printed), not only a report line."""
    from edgeplan.targets import _onnx

    def refuse(module, example_inputs, out_path, where):
        raise CompileError(f"{where}: ONNX export failed (RuntimeError: op not exportable); compile it with tvm")

    monkeypatch.setattr(_onnx, "export", refuse)
    cs = _run_and_compare(tmp_path, "auto")
    assert cs.backend == "tvm" and cs.measured_ms == ()
    assert len(cs.printed) == 1 and cs.printed[0] in cs.notes
    assert cs.printed[0].startswith("onnx export failed, so backend auto compiled tvm only")
    assert "op not exportable" in cs.printed[0]


@pytest.mark.tvm
@pytest.mark.parametrize("kind,options", [
    ("arm-cpu", {"mcpu": "cortex-a53"}),
    ("arm-cpu", {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": "+neon,+dotprod"}),
    ("cuda", {"arch": "sm_53", "host_mcpu": "cortex-a57"}),
    ("cuda", {"arch": "sm_87"}),
    ("mali", {"device": "mali", "model": "g610"}),
])
def test_aarch64_libraries_are_aarch64_elf(tmp_path, kind, options):
    gm, example = stage_module()
    cs = get_target(kind).compile_stage(gm, example, options, tmp_path, backend="tvm")
    assert cs.backend == "tvm"
    assert _tvm.elf_machine(tmp_path / cs.module_file) == AARCH64


def test_bad_options_name_the_fix(tmp_path):
    gm, example = stage_module()
    with pytest.raises(CompileError, match="cortex-a72"):
        get_target("arm-cpu").compile_stage(gm, example, {"mcpu": "cortex-a99"}, tmp_path, backend="tvm")
    with pytest.raises(CompileError, match="sm_53"):
        get_target("cuda").compile_stage(gm, example, {"arch": "sm_99"}, tmp_path)
    with pytest.raises(CompileError, match="valid target_options"):
        get_target("x86").compile_stage(gm, example, {"platform": "rk3588"}, tmp_path)
    with pytest.raises(CompileError, match="not mtriple"):
        get_target("arm-cpu").compile_stage(gm, example, {"mtriple": "x86_64-linux-gnu"}, tmp_path)
    with pytest.raises(CompileError, match="valid: auto"):
        get_target("mali").compile_stage(gm, example, {}, tmp_path, backend="onnxruntime")


def test_missing_aarch64_linker_names_pip_and_apt(monkeypatch):
    monkeypatch.setattr(_tvm.shutil, "which", lambda name: None)
    monkeypatch.setattr(_tvm.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("EDGEPLAN_AARCH64_CC", raising=False)
    with pytest.raises(CompileError, match=r"pip install ziglang.*apt-get install gcc-aarch64-linux-gnu"):
        _tvm.cross_cc()


def test_ziglang_links_aarch64_when_gcc_cross_is_absent(monkeypatch, tmp_path):
    """Without Debian's cross gcc the pip-installed ziglang links a real aarch64 shared library."""
    real_which = shutil.which
    monkeypatch.setattr(_tvm.shutil, "which", lambda name: None if name == _tvm.CROSS_CC else real_which(name))
    monkeypatch.delenv("EDGEPLAN_AARCH64_CC", raising=False)
    cc = _tvm.cross_cc()
    assert "ziglang cc -target aarch64-linux-gnu" in Path(cc).read_text()
    (tmp_path / "f.c").write_text("float twice(float x) { return 2.0f * x; }\n")
    p = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp_path / "f.so"), str(tmp_path / "f.c")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert _tvm.elf_machine(tmp_path / "f.so") == AARCH64
    assert _tvm.cross_cc() == cc  # cached script reused


def test_aarch64_linker_override(monkeypatch):
    monkeypatch.setenv("EDGEPLAN_AARCH64_CC", "sh")
    assert _tvm.cross_cc() == shutil.which("sh")
    monkeypatch.setenv("EDGEPLAN_AARCH64_CC", "no-such-cc")
    with pytest.raises(CompileError, match="EDGEPLAN_AARCH64_CC"):
        _tvm.cross_cc()


def test_arm_cpu_refuses_to_tune_here(tmp_path):
    gm, example = stage_module()
    with pytest.raises(CompileError, match="tune on a board"):
        get_target("arm-cpu").compile_stage(gm, example, {"tune-trials": "8"}, tmp_path, backend="tvm")


@pytest.mark.tvm
@pytest.mark.skipif(not os.environ.get("EDGEPLAN_SLOW_TESTS"),
                    reason="MetaSchedule tuning takes ~5 min on 2 cores; set EDGEPLAN_SLOW_TESTS=1 to run it")
def test_x86_tuning_database_is_cached_and_used(tmp_path, monkeypatch):
    """A few MetaSchedule trials create the target's database; the next compile applies it, still exact."""
    from edgeplan.targets import _tune

    monkeypatch.setenv("EDGEPLAN_TUNE_DIR", str(tmp_path / "tune"))
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU()).eval())
    example = (torch.randn(1, 4, 10, 10),)
    target = get_target("x86")
    cs = target.compile_stage(gm, example, {"tune-trials": "4"}, tmp_path / "a", backend="tvm")
    assert _tune.has_database(target.tvm_target({}, "t"))
    assert any("MetaSchedule database" in n for n in cs.notes)
    cs2 = target.compile_stage(gm, example, {}, tmp_path / "b", backend="tvm")
    assert any("MetaSchedule database" in n for n in cs2.notes)
    runner = backends.load(tmp_path / "b", _spec(cs2, "x86", example, (gm(*example),)))
    with torch.no_grad():
        assert np.abs(runner([example[0].numpy()])[0] - gm(*example).numpy()).max() < 1e-4


@pytest.mark.tvm
@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_zoo_models_build_aarch64_libraries(tmp_path, model):
    from edgeplan.graph import zoo

    entry = zoo.get(model)
    net = entry.build().eval()
    example = (torch.randn(*entry.input_shape),)
    for kind, options in (("arm-cpu", {"mcpu": "cortex-a72"}), ("cuda", {"arch": "sm_53"}),
                          ("cuda", {"arch": "sm_87"}), ("mali", {})):
        out = tmp_path / f"{kind}-{options.get('arch', 'x')}"
        cs = get_target(kind).compile_stage(net, example, options, out, backend="tvm")
        assert _tvm.elf_machine(out / cs.module_file) == AARCH64, (model, kind, options)
