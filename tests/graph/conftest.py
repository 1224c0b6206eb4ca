"""Traced zoo graphs, cached per test session: tracing is the slow part of these tests."""

from __future__ import annotations

import pytest

from edgeplan.graph.load import build
from edgeplan.graph.trace import Traced


class _Cache:
    def __init__(self):
        self._traced: dict[str, Traced] = {}

    def __call__(self, name: str) -> Traced:
        if name not in self._traced:
            self._traced[name] = build(name)
        return self._traced[name]


@pytest.fixture(scope="session")
def traced_zoo() -> _Cache:
    return _Cache()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny forward passes: one intra-op thread is faster than two fighting other jobs for 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
