"""TVM modules built for this CPU (AVX2/AVX-512) assume 64-byte aligned arguments; the board-side
loader must hand them aligned buffers whatever numpy gives it (a slice of a batch starts anywhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeplan.runtime.backend_tvm import ALIGNMENT, aligned, load_module_file
from edgeplan.targets.registry import get_target


def _misaligned(shape, offset_bytes=4) -> np.ndarray:
    n = int(np.prod(shape))
    raw = np.empty(n * 4 + 2 * ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data % ALIGNMENT) + offset_bytes
    x = raw[start:start + n * 4].view(np.float32).reshape(shape)
    x[...] = np.random.default_rng(0).standard_normal(shape)
    assert x.ctypes.data % ALIGNMENT == offset_bytes
    return x


def test_aligned_copies_only_when_needed():
    x = _misaligned((3, 5))
    y = aligned(x)
    assert y.ctypes.data % ALIGNMENT == 0 and np.array_equal(x, y) and y.dtype == x.dtype
    assert aligned(y) is y  # already aligned: no copy


@pytest.mark.tvm
def test_tvm_stage_runs_on_a_misaligned_input(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU()).eval()
    gm = torch.fx.symbolic_trace(net)
    shape = (2, 16, 24, 24)
    cs = get_target("x86").compile_stage(gm, (torch.randn(shape),), {}, tmp_path, backend="tvm")
    run = load_module_file(tmp_path / cs.module_file, "x86")
    x = _misaligned(shape)
    (y,) = run([x])
    with torch.no_grad():
        want = net(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(y, want, atol=1e-4)
