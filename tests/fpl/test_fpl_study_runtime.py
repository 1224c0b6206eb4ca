"""The FPL study's distributed SGD and federated averaging through the real runtime (local ranks, gloo):
a data-parallel plan over the three source boards, `--data BOARD=DIR` per replica, ends with the weights the
study's in-process method gives (so the emulated figures measure the same training)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.studies import fpl
from edgeplan.cli import app
from edgeplan.fpl import views
from edgeplan.training import launch, sources
from edgeplan.training.config import TrainConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("dp")
    base = work / "small_cnn.py"
    base.write_text(fpl.SMALL_CNN)
    data = [replace(v, x_train=v.x_train[:96], y_train=v.y_train[:96]) for v in views.digits_views(3)]
    folders = views.write(data, [work / src for src in fpl.SOURCES])
    plan = fpl._dp_plan(base, fpl.SOURCES, 32, work)
    return work, base, data, [f"{s}={d}" for s, d in zip(fpl.SOURCES, folders, strict=True)], plan


def test_data_parallel_plan_is_one_replica_per_source_board(setup):
    _, _, _, _, plan = setup
    assert len(plan.stages) == 1 and plan.batch == 96
    assert [(r.device, r.samples) for r in plan.stages[0].replicas] == [(s, 32) for s in fpl.SOURCES]
    assert plan.predicted.iter_s > 0


@pytest.mark.parametrize("method", ["dsgd", "fedavg"])
def test_runtime_trains_like_the_in_process_method(setup, method):
    work, base, data, data_args, plan = setup
    s = fpl.Settings(epochs=2, batch=32, lr=0.1, samples=96)
    sync = fpl.RUNTIME_METHODS[method]
    art = launch.prepare(plan, plan.model_ref, work / f"art-{method}", sync=sync)
    # fedavg: one round per epoch, after its 3rd (last) step
    cfg = TrainConfig(epochs=2, lr=s.lr, momentum=s.momentum, sync=sync, sync_every=3, timeout_s=120.0)
    cfg = sources.configure(plan.model_ref, plan, cfg, data_args)
    assert [b for _, b, _ in cfg.sources] == list(fpl.SOURCES)
    result = launch.run(art, cfg, local=True, echo=lambda _line: None)
    keep: dict = {}
    rows = (fpl.run_dsgd if method == "dsgd" else fpl.run_fedavg)(base, data, s, keep)
    got = torch.load(result.state_dict, weights_only=True)
    want = keep["model"].state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{method} {k}")
    # accuracy: every replica scores the whole test split on its own view = the study's mean over the views
    assert [e["test_accuracy"] for e in result.epochs] == pytest.approx([r["test_accuracy"] for r in rows], abs=1e-5)
    # the training moved: the weights are not the initial ones
    init = fpl._base_params(base)[0]
    assert not torch.allclose(got[next(iter(want))], init.detach(), atol=1e-4)


def test_data_folders_must_match_the_replicas(setup, tmp_path):
    work, _, _, data_args, plan = setup
    art = launch.prepare(plan, plan.model_ref, tmp_path / "art")
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--data", data_args[0]])
    assert r.exit_code != 0 and "missing cam-b, cam-c" in r.output, r.output
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--data", "trunk=/x"])
    assert r.exit_code != 0 and "replica board of this data-parallel plan (cam-a, cam-b, cam-c)" in r.output, r.output
