"""What newer Pythons have built in, written for the board's oldest Python (3.6, JetPack 4.6).

The board runtime runs on Python 3.6 and newer (``codegen.compile.BOARD_PYTHON``); these
stand in for the 3.8-3.10 built-ins it used, so each module reads the same on every version.
"""

import itertools
import operator
from functools import reduce

_MISSING = object()


def zip_strict(*iterables):
    """``zip(*iterables, strict=True)`` (3.10): ValueError when one runs out before the others."""
    for values in itertools.zip_longest(*iterables, fillvalue=_MISSING):
        if any(v is _MISSING for v in values):
            lengths = "shorter" if values[0] is not _MISSING else "longer"
            raise ValueError(f"zip_strict: argument 1 is {lengths} than another argument")
        yield values


def prod(values, start=1):
    """``math.prod`` (3.8): the product of ``values`` (``start`` when empty)."""
    return reduce(operator.mul, values, start)


try:
    from concurrent.futures import InvalidStateError  # novermin (guarded: the fallback below)
except ImportError:  # Python < 3.8, where finishing a done future does not raise
    class InvalidStateError(Exception):
        """Stands in for ``concurrent.futures.InvalidStateError`` (3.8), which older Pythons never raise."""


def settle(future, result=None, exception=None) -> bool:
    """Finish ``future`` with ``result`` (or ``exception``) unless it is done already (its caller
    cancelled it, giving up): False then. 3.8+ raises InvalidStateError there; 3.6/3.7 would
    silently overwrite a cancelled future, so the check comes first."""
    if future.done():
        return False
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set (3.8+)
        return False
    return True
