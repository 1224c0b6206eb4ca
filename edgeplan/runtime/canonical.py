"""Deterministic JSON text and its sha256: sorted keys, indent 2, floats rounded to 6 significant digits.

One definition for both sides: the host writes plan.json, golden files and digests through
``edgeplan.jsonio`` (which uses this module), and the board-side runtime, which cannot import
edgeplan, stamps run reports with the same plan digest.
"""

import hashlib
import json
import math

FLOAT_DIGITS = 6  # significant digits kept for floats


def round_floats(value):
    """``value`` with every float rounded to ``FLOAT_DIGITS`` significant digits (tuples become lists)."""
    if isinstance(value, float):
        if value == 0.0 or not math.isfinite(value):
            return value
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {str(k): round_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v) for v in value]
    return value


def dumps(obj) -> str:
    """Serialise plain data (dicts, lists, numbers, strings) deterministically."""
    return json.dumps(round_floats(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def sha256_of(obj) -> str:
    """Content hash of plain data, stable across runs and machines."""
    return hashlib.sha256(dumps(obj).encode()).hexdigest()
