"""Deterministic JSON: sorted keys, indent 2, rounded floats, trailing newline.

Golden files diff cleanly only if the same data always prints the same bytes,
so every phase writes its output through ``dumps``/``write``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeplan.runtime.canonical import FLOAT_DIGITS, dumps, sha256_of

__all__ = ["FLOAT_DIGITS", "dumps", "read", "sha256_of", "write"]


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
