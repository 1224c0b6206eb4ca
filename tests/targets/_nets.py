"""Small stage-like nets for target tests: residual edges and several inputs/outputs, as cut stages have."""

from __future__ import annotations

import torch


class ResidualTwoOut(torch.nn.Module):
    """Two inputs (an activation and a skip tensor crossing the cut), two outputs (one is a pass-through skip)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x, skip):
        a = torch.relu(self.bn(self.c1(x)))
        b = self.c2(a) + skip
        return b, self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(b, 1), 1))


def stage_module(seed: int = 0):
    """An fx GraphModule in eval mode with non-trivial BN statistics, plus example inputs."""
    torch.manual_seed(seed)
    m = ResidualTwoOut()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    gm = torch.fx.symbolic_trace(m.eval())
    return gm, (torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12))
