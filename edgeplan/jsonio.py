"""Deterministic JSON: sorted keys, indent 2, rounded floats, trailing newline.

Golden files diff cleanly only if the same data always prints the same bytes,
so every phase writes its output through ``dumps``/``write``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

FLOAT_DIGITS = 6  # significant digits kept for floats


def _round(value: Any) -> Any:
    if isinstance(value, float):
        if value == 0.0 or not math.isfinite(value):
            return value
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {str(k): _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    """Serialise plain data (dicts, lists, numbers, strings) deterministically."""
    return json.dumps(_round(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def sha256_of(obj: Any) -> str:
    """Content hash of plain data, stable across runs and machines."""
    return hashlib.sha256(dumps(obj).encode()).hexdigest()


def write(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(obj))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: str | os.PathLike[str]) -> Any:
    with open(path) as f:
        return json.load(f)
