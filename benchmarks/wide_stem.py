"""A high-resolution stem (bench_truth's large-activation case): narrow 1x1 convolutions on a 256 x 256
image, so each sample brings 768 KiB into its first stage (and 1-2 MB across any cut) for 37 MFLOP. The
runtime's per-byte hop is then about a quarter of a stage call, where the zoo's CIFAR models and vit-tiny
spend under 2% of it there.

    python benchmarks/bench_truth.py --emulate --models benchmarks/wide_stem.py:model --batch 2
"""

import torch

INPUT_SHAPE = (1, 3, 256, 256)


def model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1))
