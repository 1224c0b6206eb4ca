"""`edgeplan fpl`: the branched model file (shapes, faithful split, independent branches, junction that learns)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgeplan.cli import app
from edgeplan.errors import ModelError
from edgeplan.fpl import build
from edgeplan.fpl.junction import Junction
from edgeplan.graph.load import load_model

SMALL_CNN = '''
import torch
from torch import nn

INPUT_SHAPE = (1, 1, 8, 8)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(256, 32)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.relu2(self.fc1(self.flatten(self.pool(self.relu(self.conv(x)))))))


def build():
    return SmallCNN()
'''


@pytest.fixture
def small_cnn(tmp_path):
    path = tmp_path / "small_cnn.py"
    path.write_text(SMALL_CNN)
    return f"{path}:build"


def _copy_original_weights(fpl_model: nn.Module, original: nn.Module, branch: int) -> None:
    """Load the original model's weights into branch ``branch`` and the trunk (flattened attribute names)."""
    parts = {"branch": fpl_model.branches[branch], "trunk": fpl_model.trunk}
    for key, value in original.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        flat = build._flat(owner)
        for part in parts.values():
            if hasattr(part, flat):
                getattr(part, flat).state_dict()[leaf].copy_(value)


@pytest.mark.parametrize("spec, junction", [("resnet18-cifar", "fc"), ("lenet5", "conv2")])
def test_split_is_faithful_to_the_original_model(tmp_path, spec, junction):
    """With one branch present and the original weights, the FPL model computes the original model."""
    path = build.write(build.split(spec, ("cam-a", "cam-b", "cam-c"), junction), tmp_path / "fpl_model.py")
    model = build.load_file(path)
    loaded = load_model(spec)
    original = loaded.module
    _copy_original_weights(model, original, branch=1)
    model.junction.set_present([False, True, False])
    shape = (2, *loaded.default_input_shape[1:])
    x = torch.randn(shape)
    noise = [torch.randn(shape) for _ in range(3)]
    with torch.no_grad():
        got = model(noise[0], x, noise[2])
        want = original(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_file_is_self_contained_and_branches_are_independent(tmp_path, small_cnn):
    path = build.write(build.split(small_cnn, ("a", "b", "c"), "fc1"), tmp_path / "m.py")
    text = path.read_text()
    assert "edgeplan" not in text.split('"""', 2)[2].split("SOURCES")[0]  # imports: torch only
    assert 'SOURCES = ["a", "b", "c"]' in text and "class Junction(nn.Module):" in text
    model = build.load_file(path)
    assert isinstance(model.junction, nn.Module) and model.junction.weights.shape == (3,)
    b0, b1 = (dict(model.branches[i].named_parameters()) for i in (0, 1))
    assert b0.keys() == b1.keys() and b0
    for k in b0:
        assert b0[k].data_ptr() != b1[k].data_ptr()
        assert not torch.equal(b0[k], b1[k])  # seeded differently
    # a gradient step on branch 0's input leaves branch 1 untouched
    x = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    before = {k: v.clone() for k, v in b1.items()}
    model.junction.set_present([True, False, True])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(*x).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.branches[1].parameters())
    opt.step()
    assert all(torch.equal(before[k], b1[k]) for k in b1)
    assert model(*x).shape == (4, 2)
    assert build.load_file(path)(*x).shape == (4, 2)  # build() is deterministic and loads twice


def test_junction_weight_of_the_informative_source_grows(tmp_path, small_cnn):
    """Source 1 sees the label, sources 0 and 2 see noise: SGD moves the junction's weight to source 1."""
    model = build.load_file(build.write(build.split(small_cnn, ("a", "b", "c"), "fc1"), tmp_path / "m.py")).train()
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = model.junction.mixture().detach().clone()
    for _ in range(60):
        y = torch.randint(0, 2, (32,), generator=gen)
        signal = torch.randn(32, 1, 8, 8, generator=gen) * 0.3 + (y.float() * 2 - 1).view(-1, 1, 1, 1)
        xs = [torch.randn(32, 1, 8, 8, generator=gen), signal, torch.randn(32, 1, 8, 8, generator=gen)]
        loss = nn.functional.cross_entropy(model(*xs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mix = model.junction.mixture().detach()
    assert torch.allclose(start, torch.full((3,), 1 / 3))
    assert mix[1] > start[1] + 0.05 and mix[1] > mix[0] and mix[1] > mix[2], mix


def test_junction_masks_absent_branches():
    j = Junction(3)
    with torch.no_grad():
        j.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    j.set_present([True, False, True])
    mix = j.mixture()
    assert mix[1] == 0 and torch.isclose(mix.sum(), torch.tensor(1.0))
    feats = [torch.ones(2, 4), torch.full((2, 4), float("nan")).nan_to_num(0.0), torch.zeros(2, 4)]
    torch.testing.assert_close(j(*feats), torch.full((2, 4), float(mix[0].detach())))
    with pytest.raises(ValueError, match="at least one"):
        j.set_present([False, False, False])


def test_bad_junction_position_lists_the_valid_names(small_cnn):
    with pytest.raises(ModelError, match=r"--junction-before 'conv9'.*valid layer names.*relu, pool, flatten, fc1"):
        build.split(small_cnn, ("a", "b"), "conv9")
    with pytest.raises(ModelError, match="valid layer names"):
        build.split("resnet18-cifar", ("a", "b"), "layer1_0_conv2")  # inside a residual block: two tensors cross
    with pytest.raises(ModelError, match="at least two"):
        build.split(small_cnn, ("a",), "fc1")
    with pytest.raises(ModelError, match="distinct"):
        build.split(small_cnn, ("a", "a"), "fc1")


def test_cli_writes_the_file(tmp_path, small_cnn):
    out = tmp_path / "fpl_model.py"
    r = CliRunner().invoke(app, ["fpl", small_cnn, "--sources", "cam-a,cam-b", "--junction-before", "fc",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 branches (cam-a, cam-b) before fc" in r.output
    model = build.load_file(out)
    assert model(torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)).shape == (3, 2)
    r = CliRunner().invoke(app, ["fpl", small_cnn, "--sources", "cam-a,cam-b", "--junction-before", "nope",
                                 "--out", str(out)])
    assert r.exit_code == 2 and "valid layer names" in r.output


def test_generated_file_matches_golden(golden):
    """The file a user reads and edits: changes to the template or the split show up as a diff to review."""
    golden.check("fpl/lenet5_fc1.py.txt", build.render(build.split("lenet5", ("cam-a", "cam-b"), "fc1")))
