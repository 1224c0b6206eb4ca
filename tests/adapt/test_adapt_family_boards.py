"""A compiled plan family's board folders (issue 12 leftovers): what a board holds comes from EVERY variant.

The family is lenet5 on examples/clusters/rpi4-jetson.yaml with two layouts: plan-0 runs stage 0 on the
Jetson Nano's GPU (TensorRT), plan-1 on the Nano's CPU (ONNX Runtime); stage 1 stays on rpi-a. So the Nano's
board folder must tell its owner about both backends (plan-0 alone says nothing of onnxruntime), the CPU
module on JetPack 4.6's Python 3.6 draws the onnxruntime warning, and `run --local`'s foreign-module check
reads the family's module folders.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeplan import hostcheck, jsonio
from edgeplan.adapt.compile import SUMMARY
from edgeplan.errors import ArtifactError

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "examples" / "clusters" / "rpi4-jetson.yaml"
AARCH64_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (183).to_bytes(2, "little") + b"\0" * 44


def _plan(graph, unit: str, target: str):
    """Stage 0 (layers up to the middle) on the Nano's ``unit``, stage 1 on rpi-a's CPU; head on rpi-a."""
    from tests.codegen.codegen_helpers import make_plan

    plan = make_plan(graph, [len(graph.layers) // 2], [[("jetson", 1)], [("rpi-a", 1)]], head="rpi-a",
                     target="arm-cpu")
    first = dataclasses.replace(plan.stages[0], replicas=tuple(dataclasses.replace(r, unit=unit, target=target)
                                                               for r in plan.stages[0].replicas))
    return dataclasses.replace(plan, stages=(first, *plan.stages[1:]), cluster_path=str(CLUSTER), model_ref="lenet5")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """`edgeplan compile plans/` of the two-layout family (CPU stages on ONNX Runtime: no TVM build here)."""
    pytest.importorskip("torch", reason="traces lenet5")
    pytest.importorskip("onnxruntime", reason="checks the TensorRT stage's ONNX export")
    from edgeplan.cli import app
    from edgeplan.graph.load import build
    from edgeplan.planner import family as fm
    from edgeplan.targets._cpu import CpuTarget

    root = tmp_path_factory.mktemp("family-boards")
    graph = build("lenet5").graph
    plans = {"plan-0.json": _plan(graph, "gpu", "cuda"), "plan-1.json": _plan(graph, "cpu", "arm-cpu")}
    fam = fm.Family(model="lenet5", cluster="rpi4-jetson", cluster_sha256="", objective="throughput", batch=1,
                    microbatches=1, plans=tuple((f, f) for f in plans),
                    variants=(fm.Variant("nominal", "plan-0.json", 1.0, 1.0, 1.0),
                              fm.Variant("slowdown:jetson=4", "plan-1.json", 1.0, 1.0, 1.0)), modules=())
    fm.write_family(root / "plans", fam, plans)
    compile_stage = CpuTarget.compile_stage

    def onnx_only(self, module, inputs, options, out_dir, backend="auto"):
        return compile_stage(self, module, inputs, options, out_dir, "onnxruntime" if backend == "auto" else backend)

    with pytest.MonkeyPatch.context() as mp:  # auto would time TVM against ONNX Runtime (minutes)
        mp.setattr(CpuTarget, "compile_stage", onnx_only)
        r = CliRunner().invoke(app, ["compile", str(root / "plans"), "--out", str(root / "art"),
                                     "--cluster", str(CLUSTER)])
    assert r.exit_code == 0, r.output
    return root / "art", r.output


def _modules(art: Path, device: str) -> dict:
    return jsonio.read(art / SUMMARY)["boards"][device]["modules"]


def test_the_family_puts_both_backends_on_the_nano(family):
    """The premise: one Nano module per backend, and plan-0 (the first variant on the Nano) has only TensorRT."""
    art, _ = family
    backends = {m["backend"]: m["plans"] for m in _modules(art, "jetson").values()}
    assert backends == {"tensorrt": ["plan-0"], "onnxruntime": ["plan-1"]}


def test_board_readme_is_the_union_of_the_modules_it_may_run(family):
    art, _ = family
    readme = (art / "jetson" / "README.txt").read_text()
    for mod, m in _modules(art, "jetson").items():
        assert f"  {mod}/  layers [{m['layers'][0]}, {m['layers'][1]})" in readme
    assert "plan-0 stage 0 of 2" in readme and "plan-1 stage 0 of 2" in readme
    assert "sudo apt-get install python3-libnvinfer" in readme  # plan-0's TensorRT
    assert "trt_build FOLDER... (the TensorRT stage folders listed above)" in readme  # module folders, not stage*/
    assert "pip install numpy 'onnxruntime>=1.20,<2'" in readme  # plan-1's ONNX Runtime
    assert "JetPack 4.6.1-4.6.6 (L4T R32.7): CUDA 10.2, TensorRT 8.2.1" in readme  # the GPU's per-JetPack notes
    assert readme.index("numpy>=1.16") < readme.index("python3-libnvinfer")  # the runtime's own line first
    assert "plan family" in readme and "stage0/" not in readme  # family folders, not one plan's
    rpi = (art / "rpi-a" / "README.txt").read_text()
    assert "libnvinfer" not in rpi and "onnxruntime>=1.20" in rpi  # per board, not the family's union
    service = (art / "jetson" / "edgeplan-stage.service").read_text()
    assert all(mod in service for mod in _modules(art, "jetson"))


def test_onnxruntime_on_jetpack_4_6_warns_in_compile_and_readme(family):
    art, output = family
    cpu_mod = next(mod for mod, m in _modules(art, "jetson").items() if m["backend"] == "onnxruntime")
    line = (f"warning: jetson/{cpu_mod} (arm-cpu, backend onnxruntime): JetPack 4.6.1's python3 is 3.6, and "
            "onnxruntime>=1.20,<2 needs Python 3.10+")
    assert output.count(line) == 1, output
    assert "put the stage on the board's GPU (target cuda, TensorRT)" in output
    warnings = jsonio.read(art / SUMMARY)["warnings"]
    assert len(warnings) == 1 and "jetson/" in warnings[0]  # rpi-a's ONNX Runtime: its profile names no JetPack
    readme = (art / "jetson" / "README.txt").read_text()
    assert readme.count("WARNING: JetPack 4.6.1's python3 is 3.6, and onnxruntime>=1.20,<2 needs Python 3.10+") == 1
    assert "WARNING" not in (art / "rpi-a" / "README.txt").read_text()


def test_hostcheck_reads_every_module_folder_of_the_family(family, tmp_path):
    art, _ = family
    summary = jsonio.read(art / SUMMARY)
    found = {(p.parent.parent.name, p.parent.name) for p in hostcheck.stage_files(art)}
    assert found == {(d, mod) for d, b in summary["boards"].items() for mod in b["modules"]}
    assert hostcheck.foreign_stages(art, "x86_64") == []  # ONNX files run anywhere
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    cpu_mod = next(mod for mod, m in summary["boards"]["jetson"]["modules"].items() if m["backend"] == "onnxruntime")
    spec = json.loads((copy / "jetson" / cpu_mod / "stage.json").read_text())
    (copy / "jetson" / cpu_mod / spec["module"]).write_bytes(AARCH64_ELF)  # as a TVM aarch64 build would be
    bad = hostcheck.foreign_stages(copy, "x86_64")
    assert [(b["device"], b["module"]) for b in bad] == [("jetson", cpu_mod)]
    with pytest.raises(ArtifactError) as e:
        hostcheck.check_runs_here(copy, arch="x86_64")
    assert f"board jetson module {cpu_mod} (target arm-cpu, backend onnxruntime): stage.onnx is an aarch64 " \
        "library" in str(e.value)
    assert f"edgeplan deploy {copy} --cluster {CLUSTER}" in str(e.value)  # the initial variant's cluster file
