"""Turn a model spec string into an ``nn.Module`` (and, with ``build``, a traced LayerGraph).

A spec is one of:

* a zoo name (``edgeplan.graph.zoo.ZOO``), e.g. ``resnet18``;
* ``path/to/file.py:callable``: a function or class in that file returning an ``nn.Module``
  when called with no arguments; the file may set ``INPUT_SHAPE = (1, 3, 224, 224)`` to give
  the default input shape;
* ``torchvision:<name>`` (or a bare torchvision model name), when torchvision is installed
  (random weights, never downloaded).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgeplan.errors import ModelError
from edgeplan.graph import zoo
from edgeplan.graph.trace import Traced, trace


@dataclass(frozen=True, eq=False)
class LoadedModel:
    module: nn.Module  # in eval mode
    name: str
    default_input_shape: tuple[int, ...] | None


def _forms() -> str:
    return (f"a zoo name ({', '.join(sorted(zoo.ZOO))}), 'path/to/file.py:callable', "
            f"or 'torchvision:<name>'")


def load_model(spec: str) -> LoadedModel:
    """Load the model ``spec`` names (see the module docstring); errors say which form failed and why."""
    spec = spec.strip()
    if spec in zoo.ZOO:
        entry = zoo.ZOO[spec]
        return LoadedModel(entry.build().eval(), spec, entry.input_shape)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec.removeprefix("torchvision:"), explicit=True)
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return _load_file(Path(path), attr)
    if spec.endswith(".py"):
        _load_file(Path(spec), "")  # raises: names the callables the file has
    if _torchvision_has(spec):
        return _load_torchvision(spec, explicit=False)
    raise ModelError(f"unknown model {spec!r}; give {_forms()}")


def _torchvision_has(name: str) -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    import torchvision.models

    return name in torchvision.models.list_models()


def _load_torchvision(name: str, explicit: bool) -> LoadedModel:
    if importlib.util.find_spec("torchvision") is None:
        raise ModelError(
            f"model 'torchvision:{name}' needs torchvision, which is not installed: `pip install torchvision` "
            f"(matching your torch version), or use a zoo model ({', '.join(sorted(zoo.ZOO))})"
        )
    import torch
    import torchvision.models

    valid = torchvision.models.list_models()
    if name not in valid:
        raise ModelError(f"torchvision has no model {name!r}; valid names: {', '.join(sorted(valid))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = torchvision.models.get_model(name, weights=None)
    return LoadedModel(module.eval(), f"torchvision:{name}" if explicit else name, None)


def _candidates(module) -> list[str]:
    """Functions and nn.Module classes defined in the loaded file (what could follow the colon)."""
    out = []
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj):
            out.append(attr)
    return sorted(out)


def _load_file(path: Path, attr: str) -> LoadedModel:
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist; give an existing 'file.py:callable'")
    mod_name = "edgeplan_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"model file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling-free fx codegen look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        line = ""
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(path):
                line = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        raise ModelError(f"model file {str(path)!r} failed to import{line}: {type(e).__name__}: {e}") from e
    choices = _candidates(module)
    listing = ", ".join(choices) if choices else "none: define a function returning an nn.Module"
    if not attr:
        raise ModelError(f"model file {str(path)!r} needs a callable after a colon, e.g. "
                         f"'{path}:{choices[0] if choices else 'build'}'; callables in the file: {listing}")
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelError(f"model file {str(path)!r} has no callable {attr!r}; callables in the file: {listing}")
    try:
        built = factory()
    except TypeError as e:
        raise ModelError(f"'{path}:{attr}' must be callable with no arguments ({e}); wrap it in a function "
                         f"that passes them") from e
    if not isinstance(built, nn.Module):
        raise ModelError(f"'{path}:{attr}' returned {type(built).__name__}, not an nn.Module; callables in the "
                         f"file: {listing}")
    shape = getattr(module, "INPUT_SHAPE", None)
    default = _shape_tuple(shape) if shape is not None else None
    return LoadedModel(built.eval(), f"{path.stem}:{attr}", default)


def _shape_tuple(shape):
    """INPUT_SHAPE as a tuple: of ints, or of int tuples (one shape per input of a multi-input model)."""
    if all(isinstance(d, (tuple, list)) for d in shape):
        return tuple(tuple(int(x) for x in d) for d in shape)
    return tuple(int(d) for d in shape)


def build(spec: str, input_shape: tuple[int, ...] | None = None) -> Traced:
    """Load ``spec`` and trace it on ``input_shape`` (the model's default shape when None)."""
    loaded = load_model(spec)
    shape = input_shape if input_shape is not None else loaded.default_input_shape
    if shape is None:
        raise ModelError(f"model {loaded.name!r} has no default input shape; pass one (--input-shape 1,3,224,224)")
    return trace(loaded.module, tuple(shape), loaded.name, expected_shape=loaded.default_input_shape)
