"""Board folders for a Jetson Nano whose GPU runs ResNet-18 / MobileNetV2 stages on TensorRT (issue 18, done-when).

Compiles a two-stage plan on examples/clusters/rpi4-jetson.yaml with both stages on the
Nano's GPU, checks what a Nano owner gets (stage.onnx + trt.json, stage.json backend
tensorrt, README.txt per JetPack, start.sh building engines first, the compile warning),
then runs the two stages with a fake TensorRT 8.2 (JetPack 4.6's API; the engine is the
ONNX file run by ONNX Runtime) and compares the chained answer with PyTorch. Also checks
the TVM paths' build-tvm-runtime.sh, and runs its cmake configure step when a TVM source
tree is at hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.codegen.compile import BOARD_PYTHON, compile_plan
from edgeplan.runtime import backend_tensorrt, backends
from edgeplan.runtime.spec import StageSpec
from tests.codegen.codegen_helpers import make_plan

from . import _fake_tensorrt as fake

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "examples" / "clusters" / "rpi4-jetson.yaml"


def _gpu_plan(traced, device: str = "jetson", unit: str = "gpu", target: str = "cuda"):
    """Both stages (cut at the middle layer) on one unit of ``device``; the head on rpi-a."""
    plan = make_plan(traced.graph, [len(traced.graph.layers) // 2], [[(device, 1)], [(device, 1)]], head="rpi-a")
    stages = tuple(dataclasses.replace(st, replicas=tuple(dataclasses.replace(r, unit=unit, target=target)
                                                          for r in st.replicas)) for st in plan.stages)
    return dataclasses.replace(plan, stages=stages)


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def nano(request, tmp_path_factory):
    from edgeplan.graph.load import build

    traced = build(request.param)
    plan = _gpu_plan(traced)
    out = tmp_path_factory.mktemp(request.param) / "out"
    compile_plan(plan, request.param, out, cluster=CLUSTER, traced=traced)
    return request.param, traced, out


def test_nano_folder_has_onnx_stages_on_tensorrt(nano):
    _, _, out = nano
    board = out / "jetson"
    for i in (0, 1):
        spec = StageSpec.load(str(board / f"stage{i}" / "stage.json"))
        assert (spec.target, spec.backend, spec.module, spec.unit) == ("cuda", "tensorrt", "stage.onnx", "gpu")
        assert {f for f, _ in spec.files} == {"stage.onnx", "trt.json"}
        meta = json.loads((board / f"stage{i}" / "trt.json").read_text())
        assert (meta["precision"], meta["jetpack"], meta["arch"]) == ("fp16", "4.6.1", "sm_53")
    assert (board / "edgeplan_runtime" / "backend_tensorrt.py").is_file()
    assert (board / "edgeplan_runtime" / "trt_build.py").is_file()
    assert not (board / "build-tvm-runtime.sh").exists()  # TensorRT needs no source build
    manifest = json.loads((out / "manifest.json").read_text())
    assert "jetson/stage0/trt.json" in json.dumps(manifest)


def test_nano_readme_names_jetpack_tensorrt_python_and_the_first_start(nano):
    _, _, out = nano
    readme = (out / "jetson" / "README.txt").read_text()
    assert "backend tensorrt" in readme and "python3-libnvinfer" in readme
    assert "JetPack 4.6.1-4.6.6 (L4T R32.7): CUDA 10.2, TensorRT 8.2.1, Python 3.6" in readme
    assert "<- the board profile's JetPack" in readme
    assert "edgeplan_runtime.trt_build" in readme
    assert f"{'.'.join(map(str, BOARD_PYTHON))} or newer; JetPack 4.6's 3.6 will do" in readme
    assert "apache-tvm" not in readme  # a TensorRT board installs no TVM
    # what stock JetPack 4.6 (Python 3.6, pip 9) needs: a newer pip, numpy that exists for 3.6, the dataclasses backport
    assert "before the Install lines above: sudo apt-get install python3-pip && python3 -m pip install --upgrade " \
        "'pip<22'" in readme
    assert """python3 -m pip install 'numpy>=1.16,!=1.19.5,<3' 'dataclasses; python_version < "3.7"'""" in readme
    assert "WARNING" not in readme  # the worker runs on JetPack 4.6's python3, which has the TensorRT bindings


def test_nano_start_sh_builds_engines_before_any_worker(nano):
    _, _, out = nano
    start = (out / "jetson" / "start.sh").read_text()
    build_at = start.index('"$PYTHON" -m edgeplan_runtime.trt_build stage0 stage1')
    assert build_at < start.index("edgeplan_runtime.worker")
    subprocess.run(["sh", "-n", str(out / "jetson" / "start.sh")], check=True)


def test_jetpack_4_6_compiles_without_a_python_warning(nano):
    """The board runtime runs on Python 3.6, so a stock JetPack 4.6 Nano's TensorRT stages draw no warning
    (an older Python still does: test_compile_cli_warns_when_the_jetpacks_python_is_too_old)."""
    _, _, out = nano
    assert BOARD_PYTHON == (3, 6)
    report = json.loads((out / "compile-report.json").read_text())
    assert report["warnings"] == []


def test_nano_stages_chained_on_fake_tensorrt_8_2_match_torch(nano, monkeypatch, tmp_path):
    name, traced, out = nano
    trt = fake.make("8.2.1.8")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend_tensorrt, "CudaRuntime", lambda: fake.FakeCuda("53"))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    values = {traced.graph.inputs[0].name: x.numpy()}
    for i in (0, 1):
        work = tmp_path / f"stage{i}"
        shutil.copytree(out / "jetson" / f"stage{i}", work)  # engines go beside the copy, not the artifact
        spec = StageSpec.load(str(work / "stage.json"))
        got = backends.load(work, spec)([values[t.name] for t in spec.inputs])
        values.update({t.name: g for t, g in zip(spec.outputs, got, strict=True)})
        assert len(list(work.glob("*.engine"))) == 1
    with torch.no_grad():
        ref = traced.gm(x)
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
    final = values[spec.outputs[0].name]
    assert trt.builds == 2 and final.shape == ref.shape
    assert np.abs(final - ref).max() / np.ptp(ref) < 1e-4, name


def test_compile_cli_warns_when_the_jetpacks_python_is_too_old(tmp_path, monkeypatch):
    """`edgeplan compile` prints the warning when the profile's JetPack has a Python older than the runtime's
    (here JetPack 4.6.1 as if its python3 were 3.5, as JetPack 3.x's was), in the report and README.txt too."""
    from edgeplan.cli import app
    from edgeplan.graph.load import build
    from edgeplan.targets import cuda

    monkeypatch.setitem(cuda.JETPACKS, "4.6.1", dataclasses.replace(cuda.JETPACKS["4.6.1"], python="3.5"))

    traced = build("resnet18")
    plan = _gpu_plan(traced)
    plan_file = tmp_path / "plan.json"
    jsonio.write(plan_file, plan.to_json())
    r = CliRunner().invoke(app, ["compile", str(plan_file), "--model", "resnet18", "--out", str(tmp_path / "a"),
                                 "--cluster", str(CLUSTER), "--backend", "tensorrt"])
    assert r.exit_code == 0, r.output
    assert "warning: jetson/stage0 (cuda, backend tensorrt): JetPack 4.6.1's TensorRT 8.2.1 Python bindings are for " \
        "Python 3.5, but the stage worker (edgeplan_runtime/) needs Python 3.6 or newer" in r.output
    readme = (tmp_path / "a" / "jetson" / "README.txt").read_text()
    assert readme.count("WARNING: JetPack 4.6.1's TensorRT 8.2.1 Python bindings are for Python 3.5") == 1


# --- TVM GPU paths: build-tvm-runtime.sh ------------------------------------------------------------------------

ORANGEPI = """name: mali-test
devices:
  - {name: opi, profile: rk3588, address: 10.0.0.12}
  - {name: rpi-a, profile: rpi4b-4gb, address: 10.0.0.11}
network:
  default: {bandwidth_mbps: 940, latency_ms: 0.2, energy_nj_per_byte: 8}
"""


@pytest.fixture(scope="module")
def mali_folder(tmp_path_factory):
    """A board folder with Mali (TVM OpenCL) stages; TVM's compile is replaced by writing the module file,
    since this test is about the folder around it (the TVM compile has its own tests, marked tvm)."""
    from edgeplan.graph.load import build
    from edgeplan.targets import _gpu
    from edgeplan.targets.base import CompiledStage

    tmp = tmp_path_factory.mktemp("mali")
    traced = build("resnet18")
    plan = _gpu_plan(traced, "opi", "gpu", "mali")
    cluster = tmp / "cluster.yaml"
    cluster.write_text(ORANGEPI)

    def fake_compile(self, module, example_inputs, options, out_dir, backend="auto"):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "stage.so").write_bytes(b"not built in this test")
        return CompiledStage(backend="tvm", module_file="stage.so", files=("stage.so",), compile_s=0.0)

    mp = pytest.MonkeyPatch()
    mp.setattr(_gpu.GpuTarget, "compile_stage", fake_compile)
    try:
        compile_plan(plan, "resnet18", tmp / "out", cluster=cluster, traced=traced)
    finally:
        mp.undo()
    return tmp / "out" / "opi"


def test_mali_folder_carries_a_runtime_build_script(mali_folder):
    script = mali_folder / "build-tvm-runtime.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True)
    for flag in ("-DUSE_OPENCL=ON", "-DUSE_CUDA=OFF", "-DUSE_LLVM=OFF", "-DCMAKE_BUILD_TYPE=Release"):
        assert f"    {flag} \\\n" in text, flag
    assert "tvm_runtime tvm_runtime_opencl" in text
    assert "ocl-icd-opencl-dev" in text and "apt-get install" in text
    import importlib.metadata

    version = importlib.metadata.version("apache-tvm")
    assert f'TVM_VERSION="{version}"' in text and f'TVM_TAG="v{version.split(".post")[0]}"' in text
    readme = (mali_folder / "README.txt").read_text()
    assert "sh build-tvm-runtime.sh" in readme and "minutes" in readme and "(opencl)" in readme


def test_mali_build_script_refuses_a_tree_without_cmakelists(mali_folder, tmp_path):
    r = subprocess.run(["sh", str(mali_folder / "build-tvm-runtime.sh")], capture_output=True, text=True,
                       env={**os.environ, "SKIP_APT": "1", "TVM_SRC": str(tmp_path), "BUILD_DIR": str(tmp_path / "b")},
                       timeout=60)
    assert r.returncode == 2 and "has no CMakeLists.txt; set TVM_SRC" in r.stderr


def _tvm_source() -> Path | None:
    """An apache-tvm source tree (with its submodules) of the installed version: $EDGEPLAN_TVM_SRC.

    PyPI has no apache-tvm sdist; a `git clone --recursive --branch v0.27.0` of apache/tvm is one.
    """
    src = os.environ.get("EDGEPLAN_TVM_SRC")
    return Path(src) if src and (Path(src) / "CMakeLists.txt").is_file() else None


@pytest.mark.tvm
def test_mali_build_script_configures_the_runtime(mali_folder, tmp_path):
    src = _tvm_source()
    if src is None:
        pytest.skip("no apache-tvm source tree: set EDGEPLAN_TVM_SRC to a checkout of the installed version's tag "
                    "(`pip download --no-binary :all: apache-tvm` finds no sdist on PyPI)")
    if shutil.which("ninja") is None:
        pytest.skip("ninja is needed for the configure step (apt-get install ninja-build)")
    # CMake >= 3.26: $EDGEPLAN_CMAKE, else the script's own check (it pip-installs one when the system's is older)
    env = {**os.environ, "SKIP_APT": "1", "CONFIGURE_ONLY": "1", "TVM_SRC": str(src), "BUILD_DIR": str(tmp_path / "b")}
    if os.environ.get("EDGEPLAN_CMAKE"):
        env["CMAKE"] = os.environ["EDGEPLAN_CMAKE"]
    r = subprocess.run(["sh", str(mali_folder / "build-tvm-runtime.sh")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cache = (tmp_path / "b" / "out" / "CMakeCache.txt").read_text()
    assert re.search(r"^USE_OPENCL:\w+=ON$", cache, re.M) and re.search(r"^USE_LLVM:\w+=OFF$", cache, re.M)
    targets = subprocess.run(["ninja", "-C", str(tmp_path / "b" / "out"), "-t", "targets", "all"], check=True,
                             capture_output=True, text=True).stdout
    assert "\ntvm_runtime: " in targets and "\ntvm_runtime_opencl: " in targets  # what the script builds
