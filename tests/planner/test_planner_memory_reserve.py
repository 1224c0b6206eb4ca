"""The training-framework reserve (issue 13 + issue 15's study 2): every torch training rank holds ~311 MB
beyond its model, so the planner reserves the board's ``train_reserve_mb`` per training rank.

Study 2 ran ResNet-110 at batch 32 on one Pi 3B: 471 MB modelled, 798 MB peak RSS, over the board's 724 MB;
the planner accepted that plan. With the reserve it is refused, and a plan that only fits without it is
re-planned within memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgeplan.errors import PlanError, ProfileError
from edgeplan.planner.costmodel import Prefix, StageSpec, evaluate
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import DEFAULT_TRAIN_RESERVE_BYTES, Cluster

MB = 2**20


def _cluster(tmp_path, boards: list[tuple[str, str, str]]) -> Cluster:
    """A cluster of (name, profile, overrides YAML) on a 94 Mbit/s switch."""
    lines = ["name: reserve", "devices:"]
    for i, (name, profile, over) in enumerate(boards):
        extra = f", overrides: {{{over}}}" if over else ""
        lines.append(f"  - {{name: {name}, profile: {profile}, address: 10.0.0.{i + 1}{extra}}}")
    lines += ["network:", "  default: {bandwidth_mbps: 94, latency_ms: 0.5}"]
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_cluster(path)


def _no_reserve(c: Cluster) -> Cluster:
    return dataclasses.replace(c, devices=tuple(dataclasses.replace(d, train_reserve_bytes=0) for d in c.devices))


@pytest.fixture(scope="module")
def resnet110():
    pytest.importorskip("torch", reason="traces the zoo's ResNet-110")
    from edgeplan.graph.load import build

    return build("resnet110-cifar").graph


def test_study2_resnet110_b32_on_one_pi3b_is_refused_naming_the_reserve(tmp_path, resnet110):
    from edgeplan.planner.api import make_plan

    c = _cluster(tmp_path, [("pi0", "rpi3b", "")])
    obj = Objective(mode="training", objective="time", batch=32, microbatches=1)
    fits = make_plan(resnet110, _no_reserve(c), obj)  # what the planner accepted before the reserve
    r = fits.stages[0].replicas[0]
    assert r.memory_bytes <= r.capacity_bytes and r.reserve_bytes == 0
    assert r.memory_bytes + DEFAULT_TRAIN_RESERVE_BYTES > r.capacity_bytes  # study 2: 798 MB peak of 724
    with pytest.raises(PlanError, match=r"pi0 runs out of memory by [0-9.]+ MB \(needs 47[0-9.]+ MB \+ 311 MB "
                                        r"torch reserve \(train_reserve_mb\) of 724\.0 MB"):
        make_plan(resnet110, c, obj)


def test_a_share_that_fits_only_without_the_reserve_is_replanned(tmp_path, resnet110):
    """Pi 3B + Pi 4 (2 GB), ResNet-110 b112: without the reserve the Pi 3B takes 32 samples (fits its 724 MB
    alone, not beside 311 MB of torch); with it, its share stops at its capacity and the Pi 4 takes the rest."""
    from edgeplan.planner.api import make_plan
    from edgeplan.profiles.cost import build_cost_table

    c = _cluster(tmp_path, [("pi0", "rpi3b", ""), ("pi4", "rpi4b-2gb", "")])
    obj = Objective(mode="training", objective="time", batch=112, microbatches=1)
    before = make_plan(resnet110, _no_reserve(c), obj)
    after = make_plan(resnet110, c, obj)
    k_before = {r.device: r.samples for s in before.stages for r in s.replicas}
    k_after = {r.device: r.samples for s in after.stages for r in s.replicas}
    assert k_after["pi0"] < k_before["pi0"]
    for s in after.stages:
        for r in s.replicas:
            assert r.reserve_bytes == DEFAULT_TRAIN_RESERVE_BYTES
            assert r.memory_bytes + r.reserve_bytes <= r.capacity_bytes
    assert after.predicted.iter_s > before.predicted.iter_s  # the fast board carries more: slower, but it runs
    # the old layout, priced with the reserve, overflows the Pi 3B and says why
    costs = build_cost_table(resnet110, c)
    old = tuple(StageSpec(s.start, s.stop, tuple((costs.units.index((costs.devices.index(r.device), r.unit, r.target)),
                                                 r.samples) for r in s.replicas)) for s in before.stages)
    ev = evaluate(costs, old, obj)
    assert not ev.feasible
    assert "+ 311 MB torch reserve" in ev.why_infeasible(costs) and "pi0 needs" in ev.why_infeasible(costs)


def test_the_reserve_is_paid_per_training_rank_not_for_inference():
    """A board whose two units both train runs two torch processes: two reserves on its RAM."""
    c = random_costs(2, 4, 2, 7, units_per_device=2)
    c = dataclasses.replace(c, ram_bytes=np.full(2, 1e9), train_reserve_bytes=np.array([3e8, 2e8]))
    train = Objective(mode="training", objective="time", batch=4, microbatches=1)
    pf = Prefix(c, train)
    assert list(pf.reserve) == [3e8, 3e8, 2e8, 2e8] and list(pf.dev_ram) == [7e8, 8e8]
    both = (StageSpec(0, 2, ((0, 4),)), StageSpec(2, 4, ((1, 4),)))  # device 0's two units
    ev = evaluate(c, both, train, prefix=pf)
    need = sum(r.memory_bytes for s in ev.stages for r in s.replicas)
    assert [r.reserve_bytes for s in ev.stages for r in s.replicas] == [3e8, 3e8]
    # the memory check counts both ranks' reserves against device 0's RAM
    small = dataclasses.replace(c, ram_bytes=np.array([need + 5e8, 1e9]))
    got = evaluate(small, both, train)
    assert got.overflows and got.overflows[0][1] == pytest.approx(need + 6e8)
    assert "x 2 ranks" in got.why_infeasible(small)
    infer = evaluate(small, both, Objective(batch=4))
    assert all(r.reserve_bytes == 0 for s in infer.stages for r in s.replicas)
    assert Prefix(dataclasses.replace(c, train_reserve_bytes=None), train).reserve.sum() == 0  # synthetic: none


def test_profile_figure_provenance_and_overrides(tmp_path):
    c = _cluster(tmp_path, [("a", "rpi3b", ""), ("b", "rpi3b", "train_reserve_mb: 400"),
                            ("c", "rpi3b", "train_reserve_mb: 280, train_reserve_from: 'calibrate fit of run.json'")])
    a, b, cc = c.devices
    assert a.train_reserve_bytes is None and a.train_reserve()[0] == DEFAULT_TRAIN_RESERVE_BYTES
    assert "bench_train_reserve" in a.train_reserve()[1] and a.train_reserve()[1].startswith("estimate")
    assert b.train_reserve() == (400 * MB, "estimate: train_reserve_mb in cluster.yaml")
    assert cc.train_reserve() == (280 * MB, "measured: calibrate fit of run.json")
    # JSON round trip; the default stays out of the file and the digest; provenance is not in the digest
    assert Cluster.from_json(c.to_json()) == c
    assert "train_reserve_bytes" not in c.to_json()["devices"][0]
    plain = _cluster(tmp_path, [("a", "rpi3b", "")])
    assert plain.digest() == dataclasses.replace(plain, devices=(dataclasses.replace(
        plain.devices[0], train_reserve_source="x"),)).digest()
    assert plain.digest() != _no_reserve(plain).digest()


@pytest.mark.parametrize("over,match", [
    ("train_reserve_mb: -5", r"devices\[0\]\.overrides\.train_reserve_mb.*out of range"),
    ("train_reserve_from: 'x'", r"train_reserve_from.*set train_reserve_mb"),
])
def test_bad_reserve_is_one_line_naming_the_field(tmp_path, over, match):
    with pytest.raises(ProfileError, match=match):
        _cluster(tmp_path, [("a", "rpi3b", over)])
