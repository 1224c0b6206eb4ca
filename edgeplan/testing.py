"""Golden plans in your own test suite: a pytest plugin and ``assert_plan_matches``.

Keep the plans you ship as files in your repository; a test re-plans and compares, so a
change of edgeplan, a board profile or your model shows up as a readable diff (stage
boundaries, devices, shares, predicted figures beyond a tolerance) instead of a silent
change of what runs where::

    from edgeplan.testing import assert_plan_matches, plan_model

    def test_resnet_plan_is_stable():
        plan = plan_model("resnet18", "clusters/shelf.yaml", objective="throughput", batch=8)
        assert_plan_matches("tests/golden/resnet18-shelf.json", plan)

Rewrite the golden files after a change you accept with ``pytest --edgeplan-update-golden``
(or ``EDGEPLAN_UPDATE_GOLDEN=1 pytest``); a missing golden file fails until then. The
plugin is registered through the ``pytest11`` entry point when edgeplan is installed (or
add ``pytest_plugins = ["edgeplan.testing"]`` to your conftest.py); ``plan_golden`` is
the same check as a fixture. This module imports torch only inside plan_model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgeplan import jsonio
from edgeplan.plandiff import DEFAULT_TOLERANCE, as_plan_dict, diff_plans, format_diff

UPDATE_OPTION = "--edgeplan-update-golden"
UPDATE_ENV = "EDGEPLAN_UPDATE_GOLDEN"

_update_stack: list[bool] = []  # the option per configured pytest session (pytester nests sessions)


def updating() -> bool:
    """Whether golden plans are being rewritten (the pytest option or EDGEPLAN_UPDATE_GOLDEN=1)."""
    return bool(_update_stack and _update_stack[-1]) or os.environ.get(UPDATE_ENV, "") not in ("", "0")


def assert_plan_matches(golden: str | os.PathLike[str], plan: Any, *, tolerance: float = DEFAULT_TOLERANCE,
                        update: bool | None = None) -> None:
    """Fail with a readable diff when ``plan`` (a Plan, plan dict, plan.json or artifact folder) differs from
    the ``golden`` file; with ``update`` (default: :func:`updating`) write it there instead.

    Predicted figures may differ by ``tolerance`` (relative); everything else must be equal.
    """
    golden = Path(golden)
    data = as_plan_dict(plan)
    if update if update is not None else updating():
        golden.parent.mkdir(parents=True, exist_ok=True)
        jsonio.write(golden, data)
        return
    if not golden.is_file():
        raise AssertionError(f"golden plan {golden} does not exist; create it with `pytest {UPDATE_OPTION}` "
                             f"({UPDATE_ENV}=1) or `edgeplan plan ... --out {golden}`")
    lines = diff_plans(golden, data, tolerance)
    if lines:
        raise AssertionError(format_diff(lines, str(golden), "this plan")
                             + f"if the change is intended, rewrite the golden file with `pytest {UPDATE_OPTION}`")


def plan_model(model: str, cluster: str | os.PathLike[str], *, mode: str = "inference", objective: str | None = None,
               batch: int = 1, microbatches: int = 1, input_shape: tuple[int, ...] | None = None,
               solver: str = "dp", head: str | None = None):
    """``edgeplan plan MODEL --cluster CLUSTER ...`` as a function: the same Plan, sources recorded."""
    from edgeplan.graph.load import build
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.objective import Objective
    from edgeplan.planner.plan import record_sources
    from edgeplan.profiles.load import load_cluster

    objective = objective or ("throughput" if mode == "inference" else "time")
    obj = Objective(mode=mode, objective=objective, batch=batch, microbatches=microbatches,
                    schedule="none" if mode == "inference" else "1f1b", head=head)
    clu = load_cluster(cluster)
    traced = build(model, input_shape)
    return record_sources(make_plan(traced.graph, clu, obj, solver=solver), model_ref=model,
                          input_shape=input_shape, cluster_path=str(cluster), cluster=clu)


# --- pytest plugin (loaded through the pytest11 entry point or pytest_plugins) ------------------


def pytest_addoption(parser) -> None:
    parser.getgroup("edgeplan").addoption(
        UPDATE_OPTION, action="store_true", default=False,
        help=f"rewrite golden plan files checked by edgeplan.testing.assert_plan_matches (or {UPDATE_ENV}=1)")


def pytest_configure(config) -> None:
    _update_stack.append(bool(config.getoption(UPDATE_OPTION, default=False)))


def pytest_unconfigure(config) -> None:
    if _update_stack:
        _update_stack.pop()


@pytest.fixture
def plan_golden():
    """``plan_golden(golden_path, plan, tolerance=0.02)``: assert_plan_matches as a fixture."""
    return assert_plan_matches
