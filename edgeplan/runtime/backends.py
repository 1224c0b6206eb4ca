"""Board-side module loaders, one file per backend: ``backend_<name>.py``.

Each such module exposes ``load(stage_dir: pathlib.Path, spec: StageSpec) -> Runner``,
where a Runner is a callable taking the stage's input arrays (in ``spec.inputs``
order) and returning its output arrays (in ``spec.outputs`` order). Backends are
imported only when a stage needs them, so a board installs only its own.
"""

import importlib
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

from .spec import StageSpec

Runner = Callable[[Sequence[np.ndarray]], List]


def load(stage_dir: Path, spec: StageSpec) -> Runner:
    try:
        mod = importlib.import_module(f".backend_{spec.backend}", __package__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(f"backend_{spec.backend}"):
            raise ValueError(f"{stage_dir}/stage.json: unknown backend {spec.backend!r}") from e
        raise RuntimeError(
            f"backend {spec.backend!r} for stage {spec.stage} needs {e.name!r}; see this board's README.txt"
        ) from e
    return mod.load(Path(stage_dir), spec)
