"""Studies (issue 15): the framework's cluster views and plans (fast), and each study's quick path run end to
end inside the emulated testbed (netns tier), checked against the files and measurements it wrote."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.studies import common as c
from benchmarks.studies import hybrid, studies, three_tier
from edgeplan import jsonio
from edgeplan.profiles.load import load_cluster
from tests.tiers import netns_tier

BURST = 64 * 1024  # bytes tc's token bucket lets through at line rate


def test_the_package_lists_its_studies():
    found = studies()
    assert {"hybrid", "three-tier"} <= set(found)
    assert all(callable(m.main) and m.__doc__ for m in found.values())


def test_training_view_drops_units_that_cannot_train_and_sub_cluster_keeps_the_wan(tmp_path):
    view = load_cluster(c.training_view(hybrid.CLUSTER, tmp_path / "v.yaml"))
    assert [u.name for u in view.device("npu-board").units] == ["cpu"]  # the NPU cannot run backward
    assert [u.name for u in view.device("gpu-board").units] == ["cpu"]  # nor the Mali
    assert [u.name for u in view.device("cloud").units] == ["cpu"]
    sub = load_cluster(c.sub_cluster(hybrid.CLUSTER, ["npu-board", "cloud"], tmp_path / "s.yaml"))
    assert [d.name for d in sub.devices] == ["npu-board", "cloud"]
    wan = sub.link("npu-board", "cloud")
    assert (wan.bandwidth, wan.latency_s) == (20e6 / 8, 0.04)
    with pytest.raises(c.StudyError, match="no device nope"):
        c.sub_cluster(hybrid.CLUSTER, ["nope"], tmp_path / "x.yaml")


def test_study1_configurations_use_the_devices_they_name(tmp_path):
    ps = hybrid.plans("lenet5", tmp_path, hybrid.Settings())
    used = {k: {r.device for s in p.stages for r in s.replicas} for k, p in ps.items()}
    assert used["centralized-cloud"] == {"cloud"}
    assert len(used["best-single-board"]) == 1 and used["best-single-board"] <= set(hybrid.BOARDS)
    assert len(ps["data-parallel"].stages) == 1  # replicas of the whole model
    assert used["edgeplan"] <= set(hybrid.BOARDS)
    # the baseline plans carry the same predictions as the planner's baseline table
    table = {b.name: b.predicted.iter_s for b in ps["edgeplan"].baselines if b.feasible}
    assert ps["best-single-board"].predicted.iter_s == pytest.approx(table["best-single-device"], rel=1e-6)
    assert ps["data-parallel"].predicted.iter_s == pytest.approx(table["data-parallel-all"], rel=1e-6)


def test_study3_uploads_are_each_remote_stage0_replicas_share(tmp_path):
    data = c.Data(tmp_path, "digits", 100, 10, (3, 32, 32))
    ps = three_tier.plans("lenet5", tmp_path, three_tier.Settings())
    assert three_tier.uploads(ps["cloud-only"], data) == {"cloud": 100 * 3073}
    assert three_tier.uploads(ps["device-only"], data) == {}
    micro = ps["edgeplan"].batch // ps["edgeplan"].microbatches
    want = {}
    for r in ps["edgeplan"].stages[0].replicas:
        if r.device != "device":
            want[r.device] = want.get(r.device, 0) + math.ceil(100 * r.samples / micro) * 3073
    assert three_tier.uploads(ps["edgeplan"], data) == want


def _check_outputs(doc: dict, paths: dict, lines: list[str], speedup_key: str, base: str) -> None:
    for p in paths.values():
        assert p.stat().st_size > 0, p
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and b"<svg" in paths["svg"].read_bytes()[:2000]
    written = jsonio.read(paths["json"])
    assert [(r["model"], r["config"]) for r in written["rows"]] == [(r["model"], r["config"]) for r in doc["rows"]]
    assert written["labels"]["epoch_s"] == c.SCALED and written["labels"]["energy_j_per_epoch"] == c.MODELLED
    rows = doc["rows"]
    epochs = doc["settings"]["epochs"]
    for r in rows:
        run = next(x for x in rows if x["model"] == r["model"] and x["config"] == (r["same_run_as"] or r["config"]))
        assert r["epoch_s"] == pytest.approx(r["epoch_s_emulated"] * doc["dilation"])
        assert r["total_s"] == pytest.approx(r["upload_s"] + epochs * r["epoch_s"])
        assert r["epoch_s"] == run["epoch_s"]
        b = next(x for x in rows if x["model"] == r["model"] and x["config"] == base)
        assert r[speedup_key] == pytest.approx(b["total_s"] / r["total_s"])
        # the printed table shows the same ratio
        line = next(ln for ln in lines if re.match(rf"\s*{re.escape(r['model'])}\s+{r['config']}\s", ln))
        assert f"{r[speedup_key]:.2f}x" in line
        assert r["test_accuracy"] is not None and 0.0 <= r["test_accuracy"] <= 1.0


def _measured_epoch_s(out, model: str, config: str) -> float:
    return jsonio.read(out / "work" / model / config / "run" / "metrics.json")["epochs"][-1]["epoch_s"]


@pytest.mark.netns
@netns_tier
def test_study1_quick_path_in_emulation(tmp_path):
    s = hybrid.Settings(models=("lenet5",), train_samples=256, test_samples=32, epochs=1, quick=True,
                        configs=("centralized-cloud", "edgeplan"))
    doc = hybrid.run(s, tmp_path, echo=lambda _line: None)
    lines, paths = hybrid.report(doc, tmp_path)
    assert doc["emulated"] and [r["config"] for r in doc["rows"]] == ["centralized-cloud", "edgeplan"]
    _check_outputs(doc, paths, lines, "speedup_vs_centralized", "centralized-cloud")
    central = doc["rows"][0]
    assert central["upload_bytes"] == 256 * 1025 and central["upload_s_emulated"] > 0  # 1x32x32 + label byte
    # the upload went over the shaped 20 Mbit/s WAN link: not faster than its bandwidth allows (less tbf's burst)
    assert central["upload_s_emulated"] >= (central["upload_bytes"] - BURST) / (20e6 / 8 * doc["dilation"])
    assert central["epoch_s_emulated"] == _measured_epoch_s(tmp_path, "lenet5", "centralized-cloud")
    assert "research finding" in lines[-1]


@pytest.mark.netns
@netns_tier
def test_study3_quick_path_in_emulation(tmp_path):
    # device-only is left out: its rank starts on a 0.04-core quota (torch import alone takes a minute)
    s = three_tier.Settings(models=("lenet5",), train_samples=256, test_samples=32, epochs=1, quick=True,
                            configs=("cloud-only", "edgeplan"))
    doc = three_tier.run(s, tmp_path, echo=lambda _line: None)
    lines, paths = three_tier.report(doc, tmp_path)
    assert [r["config"] for r in doc["rows"]] == ["cloud-only", "edgeplan"]
    _check_outputs(doc, paths, lines, "speedup_vs_cloud", "cloud-only")
    cloud, mine = doc["rows"]
    assert cloud["upload_bytes"] == 256 * 1025
    assert cloud["upload_s_emulated"] >= (cloud["upload_bytes"] - BURST) / (20e6 / 8 * doc["dilation"])
    assert mine["epoch_s_emulated"] == _measured_epoch_s(tmp_path, "lenet5", mine["same_run_as"] or "edgeplan")
    plan = three_tier.plans("lenet5", tmp_path, s)["edgeplan"]
    lenet_data = c.Data(tmp_path, "digits", 256, 32, (1, 32, 32))
    assert mine["upload_bytes"] == sum(three_tier.uploads(plan, lenet_data).values())
