"""A board's CPU share, read the same whichever plan runs (issue 12: a CPU hog priced and read as a share).

What a hog is, for the model, the estimator and the emulation: another process on the board takes part of
its CPU, so our workers keep a *share* of the board's nominal CPU capacity. For throughput that is the same
as a slowdown of 1/share on every stage of the board (the board's busy time per batch / share is its period),
which is how the pricer already prices ``slowdown:DEV`` (policy.Pricer); so only the reading had to change.

Measured seconds per stage call / predicted (estimate.Estimator's reading where nothing better exists) reads
a share honestly only when the CPU is shared at a fine grain (a real hog under CFS slows every call by
~1/share). The testbed emulates a board as a CFS *quota* (netns.quota_us) and a hog as a smaller quota
(trace.schedule): a quota caps capacity, not speed, so a short stage runs at full speed until the quota is
spent and a long one waits for the next period: the same hog read 4-5x on a plan that gave the board a long
stage and 1.2-1.8x on one with a short stage, and the best plan then depended on the plan running
(plan-1 -> plan-2 -> plan-1 under one hog). Here the share is read where the emulation sets it: the board's
cgroup quota (``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) against the quota the
testbed gave it at build time (``cores`` in the EDGEPLAN_TESTBED state file, ``cgroup`` its folder). It
does not depend on the plan, and a board the running plan does not use is still read (its factor never
expires, so no probe is needed to learn that a hog ended).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def cgroup_cores(cgroup: str | Path) -> float | None:
    """Cores the cgroup's CPU quota allows (quota / period); None when unlimited or unreadable."""
    path = Path(cgroup)
    try:
        if (path / "cpu.max").exists():
            quota, period = (path / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((path / "cpu.cfs_quota_us").read_text())
        period = int((path / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def share_reader(boards: dict) -> Callable[[], dict[str, float]] | None:
    """``boards``: the testbed state's ``{device: {"cgroup": folder, "cores": nominal quota}}``. Returns a
    callable giving ``{device: current quota / nominal quota}`` (boards whose quota cannot be read left out),
    or None when no board names a cgroup (a state file of an older testbed)."""
    nominal = {d: (b["cgroup"], float(b["cores"])) for d, b in boards.items()
               if b.get("cgroup") and float(b.get("cores") or 0) > 0}
    if not nominal:
        return None

    def read() -> dict[str, float]:
        out = {}
        for dev, (cg, cores) in nominal.items():
            now = cgroup_cores(cg)
            if now is not None:
                out[dev] = min(1.0, now / cores)
        return out

    return read


def testbed_share_reader(env: dict | None = None) -> Callable[[], dict[str, float]] | None:
    """The share reader of the emulated cluster this process runs in (EDGEPLAN_TESTBED), else None: on real
    boards the estimator reads a hog from stage call times (module docstring)."""
    from edgeplan.testbed.emulate import read_state

    state = read_state(env)
    return None if state is None else share_reader(state.get("boards") or {})
