"""Shared test options: `--update-golden` rewrites golden files instead of comparing."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite golden files under tests/golden/ from the current output",
    )
