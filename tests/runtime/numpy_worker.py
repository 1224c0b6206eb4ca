"""Test-only worker launcher: registers a tiny ``numpy_test`` backend, then runs the real worker.

The module file is an .npz (no pickle) with a weight ``w`` and a per-run ``delay`` in
seconds; a stage computes ``tanh(x @ w)``. Like a compiled module it only accepts its
compiled batch (``hi - lo`` samples), so replica fail-over must chunk and pad.

Fault hooks, driven by files in the stage folder so a test can flip them while the worker runs:

* ``HANG``: while it exists, every module call blocks (a hung module; the compute watchdog's case);
* ``UNREACHABLE``: addresses (one per line) this worker cannot connect to (e.g. the head's).
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import numpy as np


def load(stage_dir: Path, spec):
    stage_dir = Path(stage_dir)
    with np.load(stage_dir / spec.module, allow_pickle=False) as z:
        w, delay = z["w"], float(z["delay"])
    batch = spec.hi - spec.lo
    hang = stage_dir / "HANG"

    def run(inputs):
        (x,) = inputs
        if x.shape[0] != batch:
            raise ValueError(f"compiled for batch {batch}, got {x.shape[0]}")
        while hang.exists():
            time.sleep(0.01)
        if delay:
            time.sleep(delay)
        return [np.tanh(x @ w).astype(np.float32)]

    return run


def install_unreachable_hook(stage_dir: Path) -> None:
    """Make ``net.connect`` refuse the addresses listed in ``stage_dir/UNREACHABLE`` (checked per connect)."""
    from edgeplan.runtime import net

    real = net.connect
    path = Path(stage_dir) / "UNREACHABLE"

    def connect(address, *args, **kwargs):
        if path.exists() and address in path.read_text().split():
            raise ConnectionRefusedError(f"test hook: {address} is unreachable from here")
        return real(address, *args, **kwargs)

    net.connect = connect


def install() -> None:
    mod = types.ModuleType("edgeplan.runtime.backend_numpy_test")
    mod.load = load
    sys.modules[mod.__name__] = mod


if __name__ == "__main__":
    install()
    stage = Path(sys.argv[sys.argv.index("--stage") + 1])
    install_unreachable_hook(stage if stage.is_dir() else stage.parent)
    from edgeplan.runtime import worker

    sys.exit(worker.main())
