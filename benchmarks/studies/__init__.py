"""The research studies edgeplan builds on, re-run end to end on the emulated testbed (issue 15).

Every module here that defines ``NAME`` and ``main(argv) -> int`` is a study
(`python -m benchmarks.studies` lists them); ``common`` holds what they share.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

NOT_STUDIES = frozenset({"common", "__main__"})


def studies() -> dict[str, ModuleType]:
    """NAME -> module of every study in this package, sorted by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in NOT_STUDIES or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "main"):
            found[mod.NAME] = mod
    return dict(sorted(found.items()))
