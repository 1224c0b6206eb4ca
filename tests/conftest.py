"""Shared test fixtures.

``golden``: compare text with a file under tests/golden/; `pytest --update-golden`
(or `make golden`) rewrites the files instead, so a changed output shows up as a
reviewable diff in git.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite golden files under tests/golden/ from the current output",
    )


class Golden:
    def __init__(self, update: bool):
        self.update = update

    def check(self, relpath: str, text: str) -> None:
        path = GOLDEN_DIR / relpath
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {path} is missing; run `make golden` (pytest --update-golden) to create it")
        expected = path.read_text()
        if text != expected:
            diff = "".join(difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), f"golden/{relpath}", "current", n=2))
            pytest.fail(f"output differs from golden/{relpath} (run `make golden` if intended):\n{diff[:6000]}")


@pytest.fixture
def golden(request) -> Golden:
    return Golden(request.config.getoption("--update-golden"))
