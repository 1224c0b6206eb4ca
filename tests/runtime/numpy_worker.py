"""Test-only worker launcher: registers a tiny ``numpy_test`` backend, then runs the real worker.

The module file is an .npz (no pickle) with a weight ``w`` and a per-run ``delay`` in
seconds; a stage computes ``tanh(x @ w)``. Like a compiled module it only accepts its
compiled batch (``hi - lo`` samples), so replica fail-over must chunk and pad.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import numpy as np


def load(stage_dir: Path, spec):
    with np.load(Path(stage_dir) / spec.module, allow_pickle=False) as z:
        w, delay = z["w"], float(z["delay"])
    batch = spec.hi - spec.lo

    def run(inputs):
        (x,) = inputs
        if x.shape[0] != batch:
            raise ValueError(f"compiled for batch {batch}, got {x.shape[0]}")
        if delay:
            time.sleep(delay)
        return [np.tanh(x @ w).astype(np.float32)]

    return run


def install() -> None:
    mod = types.ModuleType("edgeplan.runtime.backend_numpy_test")
    mod.load = load
    sys.modules[mod.__name__] = mod


if __name__ == "__main__":
    install()
    from edgeplan.runtime import worker

    sys.exit(worker.main())
