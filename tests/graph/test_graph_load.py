"""Model specs: zoo names, file.py:callable, torchvision; each failure names what to fix."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
from torch import nn

from edgeplan.errors import ModelError
from edgeplan.graph.load import build, load_model

MODEL_FILE = textwrap.dedent("""
    from torch import nn

    INPUT_SHAPE = (1, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x).relu()

    def build():
        return Net()

    def not_a_model():
        return 3

    def needs_args(width):
        return nn.Linear(width, 2)
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(MODEL_FILE)
    return path


def test_zoo_name():
    loaded = load_model("lenet5")
    assert loaded.name == "lenet5" and loaded.default_input_shape == (1, 1, 32, 32)
    assert not loaded.module.training


@pytest.mark.parametrize("attr", ["build", "Net"])
def test_file_callable_function_or_class(model_file, attr):
    loaded = load_model(f"{model_file}:{attr}")
    assert isinstance(loaded.module, nn.Module) and not loaded.module.training
    assert loaded.name == f"mymodel:{attr}" and loaded.default_input_shape == (1, 4)
    g = build(f"{model_file}:{attr}").graph
    assert [layer.op for layer in g.layers] == ["linear", "relu"] and g.total_params == 10


def test_missing_callable_lists_choices(model_file):
    with pytest.raises(ModelError) as err:
        load_model(f"{model_file}:resnet")
    msg = str(err.value)
    assert "'resnet'" in msg and "Net, build, needs_args, not_a_model" in msg


def test_callable_not_returning_module(model_file):
    with pytest.raises(ModelError, match="returned int, not an nn.Module"):
        load_model(f"{model_file}:not_a_model")


def test_callable_needing_arguments(model_file):
    with pytest.raises(ModelError, match="no arguments"):
        load_model(f"{model_file}:needs_args")


def test_file_without_callable(model_file):
    with pytest.raises(ModelError, match="needs a callable after a colon.*callables in the file: Net, build"):
        load_model(str(model_file))


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"{tmp_path / 'nope.py'}:build")


def test_file_that_fails_to_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\n\nraise ValueError('boom')\n")
    with pytest.raises(ModelError, match=r"failed to import \(line 3\): ValueError: boom"):
        load_model(f"{path}:build")


def test_unknown_spec_lists_forms():
    with pytest.raises(ModelError) as err:
        load_model("resnet1000")
    msg = str(err.value)
    assert "resnet18" in msg and "file.py:callable" in msg and "torchvision:" in msg


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_torchvision_missing_is_explained():
    with pytest.raises(ModelError, match="torchvision, which is not installed"):
        load_model("torchvision:resnet18")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_torchvision_model():
    loaded = load_model("torchvision:resnet18")
    assert sum(p.numel() for p in loaded.module.parameters()) == 11_689_512


def test_build_without_any_shape(tmp_path):
    path = tmp_path / "noshape.py"
    path.write_text("from torch import nn\n\ndef build():\n    return nn.Linear(3, 3)\n")
    with pytest.raises(ModelError, match="no default input shape"):
        build(f"{path}:build")
    assert build(f"{path}:build", (2, 3)).graph.inputs[0].shape == (2, 3)
