"""The MLP variant of LeNet for study 2 (rpi_scaling): LeNet-300-100 (LeCun et al. 1998) on 32x32 grey images.

A model file `edgeplan` loads as ``benchmarks/studies/lenet_mlp.py:build`` (338,610 weights:
1,024*300+300 + 300*100+100 + 100*10+10). Not a study itself (no NAME/main).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 1, 32, 32)


class LeNet300100(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(32 * 32, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, classes)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def build() -> nn.Module:
    torch.manual_seed(0)
    return LeNet300100()
