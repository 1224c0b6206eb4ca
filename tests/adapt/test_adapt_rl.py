"""The learned policy (issue 12 item 4, ``--adapt rl``): seeded training reproduces its table bit for bit, the
trained table beats a random choice of plans and runs the oracle's plan most of the time in the simulator, and a
policy file trained for another family is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeplan import jsonio
from edgeplan.adapt import rl
from edgeplan.adapt import simulate as sm
from edgeplan.adapt.estimate import Estimate
from edgeplan.adapt.policy import Decision, heuristic, policy_for
from edgeplan.errors import PlanError
from edgeplan.planner import family as fm
from edgeplan.planner.objective import Objective

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "clusters" / "three-node-hetero.yaml"


@pytest.fixture(scope="module")
def setup(resnet18_family):
    f = resnet18_family
    return f.graph, f.cluster, f.family, f.plans, f.world()


@pytest.fixture(scope="module")
def trained(setup):
    _, _, fam, _, world = setup
    return rl.train(world, rl.family_digest(fam), seed=0, episodes=100, episode_s=60)


class RandomPolicy:
    """A random plan at each new change of the estimate (once per change, like the others)."""

    __name__ = "random"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, pricer, est, current, last_change):
        if est.change_id <= last_change:
            return Decision(current, False, "already switched", 0.0, 0.0, est.change_id)
        names = sorted(pricer.layouts)
        plan = names[int(self.rng.integers(len(names)))]
        return Decision(plan, plan != current, "random", 0.0, 0.0, est.change_id)


def test_seeded_training_is_reproducible(setup):
    _, _, fam, _, world = setup
    a = rl.train(world, rl.family_digest(fam), seed=3, episodes=15, episode_s=60)
    b = rl.train(world, rl.family_digest(fam), seed=3, episodes=15, episode_s=60)
    c = rl.train(world, rl.family_digest(fam), seed=4, episodes=15, episode_s=60)
    assert jsonio.dumps(a.to_json()) == jsonio.dumps(b.to_json())
    assert a == b
    assert jsonio.dumps(a.to_json()) != jsonio.dumps(c.to_json())
    assert sum(sum(v) for _, v in a.visits) == 15 * 60 / sm.EPOCH_S  # one observation per simulated epoch


def test_trained_policy_beats_random_and_follows_the_oracle(setup, trained):
    _, cluster, _, _, world = setup
    rng = np.random.default_rng(2024)  # traces the table was not trained on, from the training distribution
    served = {"rl": 0.0, "random": 0.0}
    agree = {"rl": [], "random": []}
    for k in range(8):
        trace = sm.random_trace(cluster, rng, 120, world.head)
        for name, pol in (("rl", trained), ("random", RandomPolicy(k))):
            run = sm.run(world, trace, pol, seed=k)
            served[name] += sum(s.served for s in run.steps)
            # the plan it ran is the oracle's (or as good) under the true condition of that epoch
            agree[name] += [world.figures(s.plan, fm.parse_condition(s.condition)).throughput
                            >= 0.99 * s.best_throughput for s in run.steps]
    assert served["rl"] > 1.1 * served["random"], served
    assert np.mean(agree["rl"]) > 0.5 > np.mean(agree["random"]), {k: np.mean(v) for k, v in agree.items()}


def test_no_flapping_under_steady_conditions(setup, trained):
    _, cluster, _, _, world = setup
    from edgeplan.testbed.trace import parse

    trace = parse({"duration_s": 60, "events": [{"at_s": 10, "link": "all", "scale": 0.25}]}, "steady", cluster)
    run = sm.run(world, trace, trained, seed=1)
    assert sum(s.switched for s in run.steps) <= 1
    assert all(not s.switched for s in run.steps if s.t_s >= 20)


def test_decision_has_the_heuristic_signature(setup, trained):
    _, _, _, _, world = setup
    est = Estimate(fm.parse_condition("absent:gpu-board"), 2)
    for pol in (trained, heuristic):
        d = pol(world.pricer, est, world.static, -1)
        assert isinstance(d, Decision) and d.change_id == 2
        assert "gpu-board" not in world.pricer.devices_of(d.plan)  # never a plan on an absent board
        again = pol(world.pricer, est, d.plan, d.change_id)
        assert not again.switch  # at most one switch per change


def test_policy_file_round_trip_and_refusals(setup, trained, tmp_path):
    graph, cluster, fam, plans, _ = setup
    mine = tmp_path / "mine"
    fm.write_family(mine, fam, plans)
    with pytest.raises(PlanError, match="no rl-policy.json; train one with `edgeplan adapt-train"):
        rl.load(mine)
    rl.save(mine, trained)
    assert rl.load(mine) == trained
    assert policy_for("rl", mine) == trained and policy_for("heuristic") is heuristic

    other_fam, other_plans = fm.make_family(graph, cluster, Objective(objective="throughput", batch=4),
                                            fm.expand_grid(["bandwidth=1,0.25"], cluster))
    other = tmp_path / "other"
    fm.write_family(other, other_fam, other_plans)
    rl.save(other, trained)
    with pytest.raises(PlanError) as e:
        rl.load(other)
    msg = str(e.value)
    assert "\n" not in msg and "trained for another plan family" in msg and "adapt-train" in msg
    assert str(other / "family.json") in msg

    bad = jsonio.read(mine / rl.POLICY_FILE)
    bad["q"] = {k: v[:-1] for k, v in bad["q"].items()}
    jsonio.write(mine / rl.POLICY_FILE, bad)
    with pytest.raises(PlanError, match="not a valid rl policy file"):
        rl.load(mine)


def test_adapt_train_command(setup, tmp_path):
    graph, cluster, fam, plans, _ = setup
    from typer.testing import CliRunner

    from edgeplan.cli import app

    folder = tmp_path / "plans"
    fm.write_family(folder, fam, plans)
    res = CliRunner().invoke(app, ["adapt-train", str(folder), "--model", "resnet18", "--cluster", str(CLUSTER),
                                   "--episodes", "3", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "rl-policy.json" in res.output
    pol = rl.load(folder)
    assert pol.seed == 5 and pol.episodes == 3 and pol.plans == tuple(sorted(plans))
    other = ROOT / "examples" / "clusters" / "rpi4-jetson.yaml"
    if other.is_file():
        res = CliRunner().invoke(app, ["adapt-train", str(folder), "--model", "resnet18", "--cluster", str(other)])
        assert res.exit_code != 0 and "not the cluster the family" in res.output


def test_train_folder_reads_a_compiled_family(setup, tmp_path):
    """A compiled family (art/: family.json, plan-K/plan.json, graph.json, cluster.json) trains without the model."""
    graph, cluster, fam, plans, world = setup
    art = tmp_path / "art"
    jsonio.write(art / "family.json", fam.to_json())
    for name, p in plans.items():
        jsonio.write(art / Path(name).stem / "plan.json", p.to_json())
    jsonio.write(art / "graph.json", graph.to_json())
    jsonio.write(art / "cluster.json", cluster.to_json())
    pol = rl.train_folder(art, seed=2, episodes=4, episode_s=30)
    assert pol == rl.train(world, rl.family_digest(fam), seed=2, episodes=4, episode_s=30, model=fam.model,
                           cluster=fam.cluster)
    rl.save(art, pol)
    assert policy_for("rl", art) == pol


def test_a_plan_dependent_reading_does_not_flap(setup, trained):
    """The testbed's CPU quota reads 2.7x slow on the plan that gives the board a long stage and 1.3x on the one
    that gives it a short stage: the context's bins have hysteresis (rl.Sticky), so the table leaves the nominal
    plan once and stays until the board reads nominal again."""
    _, _, _, _, world = setup
    pol = rl.Policy.from_json(trained.to_json())
    hog, mild = fm.parse_condition("slowdown:gpu-board=2.7"), fm.parse_condition("slowdown:gpu-board=1.3")
    d1 = pol(world.pricer, Estimate(hog, 1), world.static, -1)
    assert d1.switch and d1.plan != world.static, d1  # the hog moves it off the nominal plan
    d2 = pol(world.pricer, Estimate(mild, 2), d1.plan, d1.change_id)
    assert not d2.switch, d2  # 1.3 stays in the 2x bin: no way back on a milder reading of the same hog
    assert d2.reason.endswith("under slowdown:gpu-board=2"), d2.reason
    fresh = rl.Policy.from_json(trained.to_json())  # without the history, 1.3 rounds to nominal
    assert "under nominal" in fresh(world.pricer, Estimate(mild, 2), d1.plan, -1).reason
    d3 = pol(world.pricer, Estimate(fm.parse_condition("slowdown:gpu-board=1.05"), 3), d1.plan, d1.change_id)
    assert d3.switch and "under nominal" in d3.reason, d3  # the hog ends: the table's nominal choice, once


def test_sticky_bins():
    s = rl.Sticky()
    c = fm.parse_condition
    assert s.apply(c("slowdown:gpu-board=2.7")) == c("slowdown:gpu-board=2")
    assert s.apply(c("slowdown:gpu-board=1.3+bandwidth=0.3")) == c("slowdown:gpu-board=2+bandwidth=0.25")
    assert s.apply(c("slowdown:gpu-board=1.3+bandwidth=0.3")) == c("slowdown:gpu-board=2+bandwidth=0.25")  # idempotent
    assert s.apply(c("slowdown:gpu-board=1.1+bandwidth=0.4")) == c("bandwidth=0.25")  # 1.1 leaves the 2x bin
    assert s.apply(c("bandwidth=0.7")) == c("bandwidth=0.5")
    assert s.apply(c("nominal")) == c("nominal") and not s.bins


def test_sticky_grid_key_is_the_key_of_the_sticky_condition():
    """rl's fast path (Sticky.grid_key, no Condition built) moves the bins as apply does and gives the same key."""
    rng = np.random.default_rng(5)
    a, b = rl.Sticky(), rl.Sticky()
    devices = {"gpu-board", "cpu-board"}
    for _ in range(300):
        terms = [f"bandwidth={rng.choice([1, 0.9, 0.3, 0.26, 0.12, 1.9]):g}"]
        terms += [f"slowdown:{d}={rng.choice([1, 1.3, 2.7, 0.6, 9, 1.1]):g}" for d in ("gpu-board", "npu-board")
                  if rng.random() < 0.7]
        terms += ["absent:cpu-board"] if rng.random() < 0.1 else []
        cond = fm.parse_condition("+".join(terms))
        assert a.grid_key(cond, devices) == rl._grid_key(b.apply(cond), (), devices), cond
        assert a.bins == b.bins
    assert a.grid_key(fm.parse_condition("bandwidth:gpu-board/cpu-board=0.5"), devices) is None
