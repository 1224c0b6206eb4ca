"""Registry of target kinds: name -> Target, imported lazily.

Built-in kinds are listed as ``module:attribute`` strings so importing the registry
costs nothing (no torch, no TVM); a target module is imported the first time its
kind is asked for. ``register`` adds a kind at run time and refuses duplicates.
"""

from __future__ import annotations

import importlib

from ..errors import CompileError
from .base import Target

_BUILTIN: dict[str, str] = {
    "arm-cpu": "edgeplan.targets.arm_cpu:TARGET",
    "cuda": "edgeplan.targets.cuda:TARGET",
    "mali": "edgeplan.targets.mali:TARGET",
    "npu": "edgeplan.targets.npu:TARGET",
    "x86": "edgeplan.targets.x86:TARGET",
}

_registered: dict[str, Target | str] = dict(_BUILTIN)


def names() -> tuple[str, ...]:
    """All known target kinds, sorted."""
    return tuple(sorted(_registered))


def register(name: str, target: Target | str) -> None:
    """Add a target kind (a Target or a lazy ``"module:attr"`` string); duplicates are refused."""
    if name in _registered:
        raise ValueError(f"target kind {name!r} is already registered; known kinds: {', '.join(names())}")
    _registered[name] = target


def get_target(kind: str) -> Target:
    """The Target for ``kind``; CompileError listing the valid kinds when unknown."""
    entry = _registered.get(kind)
    if entry is None:
        raise CompileError(
            f"unknown target kind {kind!r}; valid kinds: {', '.join(names())} "
            "(set `target:` of the compute unit in the board profile to one of them)"
        )
    if isinstance(entry, str):
        mod_name, attr = entry.split(":")
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                raise CompileError(
                    f"target kind {kind!r} is registered but its module {mod_name} is not installed"
                ) from e
            raise
        entry = getattr(mod, attr)
        _registered[kind] = entry
    return entry
