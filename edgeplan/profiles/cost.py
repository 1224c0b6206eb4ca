"""CostTable: per-(unit, layer) times and per-link costs as plain numpy arrays.

This is the whole interface between profiles/ and planner/: the planner never
sees a LayerGraph's tensors or a profile's YAML, only these arrays. All compute
figures are per sample; a micro-batch of ``m`` samples of layers ``[i, j)`` on
unit ``u`` takes ``m * fwd_s[u, i:j].sum() + fixed_s[u, i:j].sum()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class CostTable:
    layer_names: tuple[str, ...]  # n layers, topological order of the LayerGraph
    layer_ops: tuple[str, ...]  # op kind per layer
    devices: tuple[str, ...]  # d devices
    units: tuple[tuple[int, str, str], ...]  # u units: (device index, unit name, target)
    fwd_s: np.ndarray  # [u, n] forward seconds per sample
    bwd_s: np.ndarray  # [u, n] backward seconds per sample
    fixed_s: np.ndarray  # [u, n] per-call overhead seconds (independent of batch)
    supported: np.ndarray  # [u, n] bool: unit can run layer
    param_bytes: np.ndarray  # [n]
    act_bytes: np.ndarray  # [n] output activation bytes per sample (stashed for backward)
    cut_bytes: np.ndarray  # [n + 1] bytes per sample crossing a cut after k layers
    ram_bytes: np.ndarray  # [d] usable memory
    idle_power_w: np.ndarray  # [d]
    busy_power_w: np.ndarray  # [u]
    bandwidth: np.ndarray  # [d, d] bytes/s (diagonal: inf)
    latency_s: np.ndarray  # [d, d]
    energy_per_byte_j: np.ndarray  # [d, d]

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_devices(self) -> int:
        return len(self.devices)
