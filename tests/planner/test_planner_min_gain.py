"""Prefer the simpler plan when the gain is noise (issue 13, item 6: ``--min-gain``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeplan.errors import PlanError
from edgeplan.planner.api import plan_from_costs
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs

OBJ = Objective(objective="throughput", batch=32)


def _two_boards(slowdown: float):
    """dev0 fast, dev1 ``slowdown`` times slower; a fast link and no runtime cost, so only compute matters."""
    c = random_costs(0, 10, 2, 2)
    sc = np.array([1.0, slowdown])[:, None]
    fwd = c.fwd_s / c.fwd_s.sum(axis=1, keepdims=True) * 0.05 * sc
    return replace(c, fwd_s=fwd, bwd_s=2 * fwd, bandwidth=c.bandwidth * 100, hop_s=c.hop_s * 0,
                   hop_byte_s=c.hop_byte_s * 0)


def test_a_second_board_for_a_small_gain_is_dropped_and_the_report_says_why():
    costs = _two_boards(20.0)
    full = plan_from_costs(costs, OBJ, min_gain=0.0)
    single = next(b for b in full.baselines if b.name == "best-single-device")
    gain = full.predicted.throughput / single.predicted.throughput - 1
    assert len(full.devices_used) == 2 and 0 < gain < 0.05  # the bigger plan gains, but less than 5%
    plan = plan_from_costs(costs, OBJ)  # default --min-gain 5%
    assert plan.devices_used == ("dev0",)
    assert plan.predicted.throughput == pytest.approx(single.predicted.throughput, rel=1e-6)
    note = next(n for n in plan.notes if n.startswith("simpler plan used"))
    assert "best-single-device" in note and "less than --min-gain 5%" in note
    assert plan_from_costs(costs, OBJ, min_gain=gain / 2).devices_used == full.devices_used  # gain above the bar


def test_a_gain_above_the_bar_keeps_the_bigger_plan():
    costs = _two_boards(5.0)
    plan = plan_from_costs(costs, OBJ)
    single = next(b for b in plan.baselines if b.name == "best-single-device")
    assert len(plan.devices_used) == 2 and plan.predicted.throughput > 1.05 * single.predicted.throughput
    assert not any(n.startswith("simpler plan used") for n in plan.notes)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_min_gain_outside_the_unit_interval_is_one_line(bad):
    with pytest.raises(PlanError, match=r"--min-gain .* outside \[0, 1\)"):
        plan_from_costs(_two_boards(5.0), OBJ, min_gain=bad)
