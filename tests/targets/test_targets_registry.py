"""Registry: lazy, refuses duplicates, errors list the valid kinds; no torch/tvm on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeplan.errors import CompileError
from edgeplan.targets import registry
from edgeplan.targets.base import CompiledStage, Target


def test_names_include_every_kind():
    assert {"x86", "arm-cpu", "cuda", "mali", "npu"} <= set(registry.names())


def test_unknown_kind_lists_valid_names():
    with pytest.raises(CompileError) as e:
        registry.get_target("tpu")
    for name in ("arm-cpu", "cuda", "mali", "x86"):
        assert name in str(e.value)


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x86", "edgeplan.targets.x86:TARGET")


def test_registry_import_is_light():
    code = ("import sys, edgeplan.targets.registry as r; r.names(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', 'tvm_ffi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["x86", "arm-cpu", "cuda", "mali"])
def test_targets_implement_the_interface(kind):
    t = registry.get_target(kind)
    assert isinstance(t, Target)
    assert t.name == kind and t.backends and t.description
    assert t.supports({"conv2d", "relu", "add"}) == set()
    for b in t.backends:
        assert t.runtime_requirements(b)
    with pytest.raises(CompileError, match="unknown backend"):
        t.runtime_requirements("nope")


def test_compiled_stage_is_frozen():
    cs = CompiledStage("tvm", "stage.so", ("stage.so",), 1.0, ())
    with pytest.raises(AttributeError):
        cs.backend = "onnxruntime"  # type: ignore[misc]
