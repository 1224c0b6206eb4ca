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


@pytest.fixture
def numpy_family(tmp_path):
    """(folder, weights): the numpy_test-backend plan family of tests/families.py (variants plan-0..2 over a, b, c)."""
    from tests.families import make_family

    root = tmp_path / "fam"
    return root, make_family(root)


@pytest.fixture(scope="session")
def lenet5_family(tmp_path_factory):
    """Folder with c.yaml (tests/families.THREE_HOSTS) and plans/ (the lenet5 family `edgeplan plan` writes for
    nominal, a slowed 4x and b slowed 4x), planned once per session; tests copy it before writing into it."""
    pytest.importorskip("torch", reason="traces lenet5")
    from typer.testing import CliRunner

    from edgeplan.cli import app
    from tests.families import LENET5_FAMILY_ARGS, THREE_HOSTS

    root = tmp_path_factory.mktemp("lenet5-family")
    (root / "c.yaml").write_text(THREE_HOSTS)
    r = CliRunner().invoke(app, ["plan", *LENET5_FAMILY_ARGS, "--cluster", str(root / "c.yaml"),
                                 "--out", str(root / "plans")])
    assert r.exit_code == 0, r.output
    return root
