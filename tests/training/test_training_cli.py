"""`edgeplan train` on the command line: a short local run and a clear error for a wrong folder."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.codegen import manifest
from edgeplan.training import launch

from .training_helpers import training_plan


def test_train_local_prints_epoch_line_and_state_dict(tmp_path):
    plan = training_plan("lenet5", (), ((3, 5),), batch=16, microbatches=2)  # one stage, 2 replicas
    art = launch.prepare(plan, "lenet5", tmp_path / "art", sync="local-sgd")
    assert sorted(p.name for p in art.iterdir()) == ["board0a", "board0b", "manifest.json", "plan.json",
                                                     "training.json"]
    assert manifest.verify(art) == []  # training artifacts are checked like inference ones
    assert (art / "board0a" / "start-training.sh").stat().st_mode & 0o111
    assert jsonio.read(art / "training.json")["input_shape"] == [1, 1, 32, 32]
    r = CliRunner().invoke(app, ["train", str(art), "--local", "--epochs", "1", "--max-iters", "3",
                                 "--dataset", "synthetic", "--timeout", "30"])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.output.splitlines() if line.startswith("epoch 1:"))
    assert re.search(r"loss [\d.]+ +acc [\d.]+% +test acc [\d.]+% +time [\d.]+ s +[\d.]+ samples/s +"
                     r"iter measured [\d.]+ ms vs predicted 50.0 ms +energy [\d.e+-]+ J", line), line
    assert jsonio.read(art / "run" / "metrics.json")["sync"] == "local-sgd"  # the compile-time default
    assert (art / "run" / "model_state_dict.pt").exists()


def test_train_on_inference_folder_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(app, ["train", str(tmp_path), "--local"])
    assert r.exit_code == 2
    assert "no plan.json" in r.output and "--mode training" in r.output


def test_train_needs_a_board_or_local(tmp_path):
    plan = training_plan("lenet5", (), ((8,),), batch=8, microbatches=1)
    art = launch.prepare(plan, "lenet5", tmp_path / "art")
    r = CliRunner().invoke(app, ["train", str(art), "--device", "nope"])
    assert r.exit_code == 2 and "nope have no rank in this plan; boards in the plan: board0a" in r.output


def test_compile_turns_a_training_plan_into_training_artifacts(tmp_path):
    import pytest

    from edgeplan.codegen.compile import compile_plan
    from edgeplan.errors import CompileError

    plan = training_plan("lenet5", (3,), ((2,), (2,)), batch=4, microbatches=2)
    jsonio.write(tmp_path / "plan.json", plan.to_json())
    r = CliRunner().invoke(app, ["compile", str(tmp_path / "plan.json"), "--model", "lenet5",
                                 "--out", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    art = tmp_path / "art"
    assert (art / "training.json").is_file() and not list(art.glob("*/stage*"))  # launchers, no modules
    assert manifest.verify(art) == []
    with pytest.raises(CompileError, match="already exists; pass --force"):
        compile_plan(plan, "lenet5", art)
