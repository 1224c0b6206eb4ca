"""`edgeplan train art/ --data SOURCE=DIR`: one rank per source branch + the trunk, a source away for an epoch.

The planned, compiled run (local ranks, gloo) must end with the weights the
single-process semantics (``SourceTrainer``) gives for the same presence pattern.
"""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.fpl import build, views
from edgeplan.planner.plan import load as load_plan
from edgeplan.training import launch, sources
from edgeplan.training.config import TrainConfig
from edgeplan.training.sources import SourceRun, SourceTrainer

from .test_fpl_build import SMALL_CNN

CLUSTER = "examples/clusters/fpl-five.yaml"


def test_ranks_train_like_the_single_process_semantics_with_a_source_away(tmp_path):
    cnn = tmp_path / "small_cnn.py"
    cnn.write_text(SMALL_CNN.replace("nn.Linear(32, 2)", "nn.Linear(32, 10)"))
    model = build.write(build.split(f"{cnn}:build", ("cam-a", "cam-b"), "fc1"), tmp_path / "fpl_model.py")
    spec = f"{model}:build"
    r = CliRunner().invoke(app, ["plan", spec, "--cluster", CLUSTER, "--mode", "training", "--objective", "time",
                                 "--pin", "input0=cam-a", "--pin", "input1=cam-b", "--batch", "32",
                                 "--microbatches", "2", "--out", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    plan = load_plan(str(tmp_path / "plan.json"))
    assert plan.stages[0].kind == "branches"
    art = launch.prepare(plan, spec, tmp_path / "art")
    folders = {n: str(p) for n, p in zip(("cam-a", "cam-b"), views.write(
        views.digits_views(2), [tmp_path / "a", tmp_path / "b"]), strict=True)}
    data_args = [f"{n}={d}" for n, d in folders.items()]

    # a branch plan needs --data; --data names the model's sources
    cfg = TrainConfig(epochs=3, samples=96, lr=0.1, timeout_s=60.0)
    r = CliRunner().invoke(app, ["train", str(art), "--local"])
    assert r.exit_code == 2 and "--data SOURCE=DIR" in r.output
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--data", "cam-z=/x"])
    assert r.exit_code == 2 and "sources: cam-a, cam-b" in r.output

    lines = []
    cfg = sources.configure(spec, plan, cfg, data_args, ["cam-b=2"])
    result = launch.run(art, cfg, local=True, echo=lines.append)
    assert "epoch 2: sources cam-a (cam-b away: junction weight masked)" in lines, lines
    assert len(result.epochs) == 3 and result.state_dict is not None
    ranks = jsonio.read(art / "training.json")["ranks"]
    assert [(x["device"], x["stage"]) for x in ranks[:2]] == [("cam-a", 0), ("cam-b", 0)]

    reference = build.load_file(model)
    datasets = sources.load_sources(folders, (1, 8, 8), 0, 96)
    SourceTrainer(reference, datasets, folders, SourceRun(epochs=3, batch=32, lr=0.1, samples=96,
                                                          absent=(("cam-b", (1,)),)), tmp_path / "ref").run()
    got = torch.load(result.state_dict, weights_only=True)
    want = reference.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    # the absence mattered: the same training with cam-b present throughout ends elsewhere
    always = build.load_file(model)
    SourceTrainer(always, sources.load_sources(folders, (1, 8, 8), 0, 96), folders,
                  SourceRun(epochs=3, batch=32, lr=0.1, samples=96), tmp_path / "always").run()
    assert not torch.allclose(got["branches.1.conv.weight"], always.state_dict()["branches.1.conv.weight"], atol=1e-4)


def test_cli_compiles_a_planned_fpl_training_plan_for_its_boards(tmp_path):
    """`edgeplan compile` of a pinned FPL training plan (stage 0: one branch per source board, each with the whole
    micro-batch) on the cluster it was planned on: the artifacts the emulated study runs train from."""
    from edgeplan.codegen import manifest

    cnn = tmp_path / "small_cnn.py"
    cnn.write_text(SMALL_CNN)
    model = build.write(build.split(f"{cnn}:build", ("cam-a", "cam-b"), "fc1"), tmp_path / "fpl_model.py")
    r = CliRunner().invoke(app, ["plan", f"{model}:build", "--cluster", CLUSTER, "--mode", "training", "--objective",
                                 "time", "--pin", "input0=cam-a", "--pin", "input1=cam-b", "--batch", "32",
                                 "--microbatches", "1", "--out", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["compile", str(tmp_path / "plan.json"), "--out", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    art = launch.load(tmp_path / "art")
    assert art.plan.stages[0].kind == "branches"
    assert [rep.device for rep in art.plan.stages[0].replicas] == ["cam-a", "cam-b"]
    assert manifest.verify(tmp_path / "art") == []
