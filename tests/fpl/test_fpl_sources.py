"""Training across sources: each branch on its own folder, a source leaving and coming back, per-branch checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch

from edgeplan.fpl import build, views
from edgeplan.training import sources
from edgeplan.training.sources import SourceError, SourceRun

from .test_fpl_build import SMALL_CNN

NAMES = ("cam-a", "cam-b", "cam-c")


@pytest.fixture
def fpl_file(tmp_path):
    cnn = tmp_path / "small_cnn.py"
    cnn.write_text(SMALL_CNN.replace("nn.Linear(32, 2)", "nn.Linear(32, 10)"))
    return build.write(build.split(f"{cnn}:build", NAMES, "fc1"), tmp_path / "fpl_model.py")


@pytest.fixture
def folders(tmp_path):
    paths = views.write(views.digits_views(3), [tmp_path / "data" / n for n in NAMES])
    return {n: str(p) for n, p in zip(NAMES, paths, strict=True)}


def _args(folders):
    return [f"{n}={d}" for n, d in folders.items()]


def _weights(path, part):
    return torch.load(path, weights_only=True)[part]


def test_a_source_leaves_and_comes_back(tmp_path, fpl_file, folders):
    run = SourceRun(epochs=3, batch=32, lr=0.1, samples=640)
    lines = []
    rows = sources.train(f"{fpl_file}:build", _args(folders), run, tmp_path / "run", ["cam-b=2"], echo=lines.append)
    assert [r["present"] for r in rows] == [list(NAMES), ["cam-a", "cam-c"], list(NAMES)]
    assert rows[1]["junction"]["cam-b"] == 0.0 and rows[2]["junction"]["cam-b"] > 0.0
    assert abs(sum(rows[1]["junction"].values()) - 1.0) < 1e-6
    assert "cam-b" not in rows[1]["bytes_sent"] and rows[1]["bytes_sent"]["cam-a"] > 0
    # 20 batches of 32 samples, each sending a 256-float feature out and its gradient back: counted bytes
    assert rows[0]["bytes_sent"]["cam-a"] == 20 * 32 * 256 * 4 * 2
    assert rows[2]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    ck = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in (ck / "epoch-0001").iterdir()) == ["branch-cam-a.pt", "branch-cam-c.pt", "trunk.pt"]
    assert sorted(p.name for p in (ck / "epoch-0002").iterdir()) == [
        "branch-cam-a.pt", "branch-cam-b.pt", "branch-cam-c.pt", "trunk.pt"]
    # cam-a's branch trained in epoch 2; cam-b's came back and trained again in epoch 3
    a0, a1 = (_weights(ck / f"epoch-000{e}" / "branch-cam-a.pt", "state") for e in (0, 1))
    assert not torch.equal(a0["conv.weight"], a1["conv.weight"])
    b0, b2 = (_weights(ck / f"epoch-000{e}" / "branch-cam-b.pt", "state") for e in (0, 2))
    assert not torch.equal(b0["conv.weight"], b2["conv.weight"])
    assert "sources cam-a,cam-c" in lines[1] and "junction cam-a=" in lines[1]


def test_a_missing_folder_is_an_absent_source_and_resume_matches(tmp_path, fpl_file, folders):
    """A folder that disappears between epochs takes its branch out; resuming gives the uninterrupted result."""
    run = SourceRun(epochs=2, batch=32, samples=320)

    def drop_c(row):
        if row["epoch"] == 1:
            shutil.rmtree(folders["cam-c"])

    model = build.load_file(fpl_file)
    datasets = sources.load_sources(folders, (1, 8, 8), 0, 320)
    trainer = sources.SourceTrainer(model, datasets, folders, run, tmp_path / "a")
    rows = trainer.run(on_epoch=drop_c)
    assert rows[1]["present"] == ["cam-a", "cam-b"] and rows[1]["junction"]["cam-c"] == 0.0

    again = {n: str(p) for n, p in zip(NAMES, views.write(views.digits_views(3), [tmp_path / "d2" / n for n in NAMES]),
                                        strict=True)}
    full = sources.SourceTrainer(build.load_file(fpl_file), sources.load_sources(again, (1, 8, 8), 0, 320), again,
                                 SourceRun(epochs=3, batch=32, samples=320), tmp_path / "full").run()
    sources.SourceTrainer(build.load_file(fpl_file), sources.load_sources(again, (1, 8, 8), 0, 320), again,
                          SourceRun(epochs=2, batch=32, samples=320), tmp_path / "resumed").run()
    resumed = sources.SourceTrainer(build.load_file(fpl_file), sources.load_sources(again, (1, 8, 8), 0, 320), again,
                                    SourceRun(epochs=3, batch=32, samples=320, resume=True), tmp_path / "resumed").run()
    assert len(resumed) == 3
    assert resumed[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)
    assert resumed[-1]["test_accuracy"] == full[-1]["test_accuracy"]


def test_bad_data_and_absent_flags_name_the_sources(tmp_path, fpl_file, folders):
    with pytest.raises(SourceError, match=r"'cam-z' is not a source of this model; sources: cam-a, cam-b, cam-c"):
        sources.parse_data(["cam-z=/x"], NAMES)
    with pytest.raises(SourceError, match="twice"):
        sources.parse_data(["cam-a=/x", "cam-a=/y"], NAMES)
    with pytest.raises(SourceError, match="SOURCE=DIR"):
        sources.parse_data(["cam-a"], NAMES)
    assert sources.parse_absent(["cam-b=2-3,5"], NAMES) == {"cam-b": frozenset({1, 2, 4})}
    with pytest.raises(SourceError, match="EPOCHS like 2 or 2-3,5"):
        sources.parse_absent(["cam-b=two"], NAMES)
    # views of different samples are refused: labels must be aligned
    other = views.write([views.digits_views(3, seed=1)[1]], [tmp_path / "other"])[0]
    with pytest.raises(SourceError, match="labels differ"):
        sources.train(f"{fpl_file}:build", [f"cam-a={folders['cam-a']}", f"cam-b={other}"], SourceRun(),
                      tmp_path / "run")
    with pytest.raises(SourceError, match="not a flexible-parallel-learning model"):
        sources.train("lenet5", ["cam-a=/x"], SourceRun(), tmp_path / "run")


def test_data_flags_on_a_plan_without_branches_name_its_replica_boards():
    from edgeplan.training.config import TrainConfig

    from ..training.training_helpers import training_plan

    plan = training_plan("lenet5", (), ((8,),), batch=8, microbatches=1)
    cfg = TrainConfig()
    assert sources.configure("lenet5", plan, cfg, [], []) is cfg
    board = plan.stages[0].replicas[0].device
    with pytest.raises(SourceError, match=f"replica board of this data-parallel plan \\({board}\\).*--dataset"):
        sources.configure("lenet5", plan, cfg, ["cam-a=/x"])
    with pytest.raises(SourceError, match="--absent applies to plans with parallel input branches"):
        sources.configure("lenet5", plan, cfg, [f"{board}=/x"], ["cam-a=1"])
    # a folder per replica board: the replica reads its own view (tests/fpl/test_fpl_study_runtime.py trains it)
    got = sources.configure("lenet5", plan, cfg, [f"{board}=/x"])
    assert got.sources == (("", board, "/x"),)
