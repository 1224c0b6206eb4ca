"""Study 2 (rpi_scaling): the modelled sweep (planner memory/time), a measured run as local processes, and
(netns tier) a run inside the emulated ten-Pi cluster whose per-board network bytes are measured."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.studies import rpi_scaling as rs
from benchmarks.studies import studies
from edgeplan import jsonio
from edgeplan.profiles.load import load_cluster
from edgeplan.testbed import emulate
from tests.tiers import netns_tier


def test_listed_as_a_study():
    assert studies()["rpi-scaling"] is rs


def test_modelled_sweep_memory_and_planner_choice(tmp_path):
    s = rs.Settings(models=("lenet-mlp", "resnet110"), batches=(128,), plan_boards=(1, 2, 10), train=False)
    rows, choices = rs.model_rows("resnet110", s, tmp_path)
    by_n = {r["boards"]: r for r in rows}
    # ResNet-110 at batch 128 on one Pi 3B: the planner's memory model says it does not fit in 724 MB usable
    assert not by_n[1]["fits"] and by_n[1]["memory_mb_per_board"] > by_n[1]["usable_ram_mb"] == pytest.approx(724, 1)
    assert "pi0 needs" in by_n[1]["why_not"] and "MB torch reserve (train_reserve_mb) of 724.0 MB" in by_n[1]["why_not"]
    assert by_n[10]["fits"] and by_n[10]["predicted_epoch_s"] > 0
    # each board holds 1/n of the samples: activations shrink, the weights do not
    assert by_n[1]["memory_mb_per_board"] > by_n[2]["memory_mb_per_board"] > by_n[10]["memory_mb_per_board"]
    (ch,) = choices
    assert 1 <= ch["planner_boards"] <= 10 and ch["best_data_parallel_boards"] in (2, 10)
    assert ch["planner_iter_s"] <= by_n[10]["predicted_iter_s"] * 1.001  # the planner is never worse than DP-all


def test_measured_as_local_processes_report_and_files(tmp_path):
    """LeNet-MLP on 2 'boards' (local processes here): measured rows, per-board figures, outputs."""
    s = rs.Settings(models=("lenet-mlp",), batches=(32,), plan_boards=(1, 2), run_models=("lenet-mlp",),
                    run_batches=(32,), run_boards=(2,), syncs=("sync",), train_samples=64, test_samples=32,
                    emulate=False)
    doc = rs.run(s, tmp_path, echo=lambda _line: None)
    lines, paths = rs.report(doc, tmp_path)
    assert [(r["boards"], r["sync"]) for r in doc["measured"]] == [(2, "sync")]
    for r in doc["measured"]:
        assert r["iterations"] == 2 and r["samples_per_epoch"] == 64 and r["epoch_s"] > 0
        assert 0 <= r["test_accuracy"] <= 1 and r["peak_rss_mb_max"] > 50
        assert set(r["per_board"]) == {f"pi{i}" for i in range(r["boards"])}
        assert all(b["cpu_s"] > 0 for b in r["per_board"].values())
        assert r["net_bytes_per_board_mean"] is None  # local processes share this machine's interfaces
        # the epoch time in the row is the one the run wrote
        run = jsonio.read(tmp_path / "work" / f"lenet-mlp-b32-n{r['boards']}" / f"run-{r['sync']}" / "metrics.json")
        assert r["epoch_s_emulated"] == pytest.approx(run["epochs"][0]["epoch_s"])
    assert jsonio.read(paths["json"])["measured"][0]["model"] == "lenet-mlp"
    assert paths["png"].stat().st_size > 1000 and paths["svg"].read_text().lstrip().startswith("<?xml")
    assert any(line.split()[:4] == ["lenet-mlp", "32", "2", "sync"] for line in lines), lines
    assert any(line.startswith("research finding 'planner's board count is the measured best'") for line in lines)
    # the same settings again: the row is read back from measured-rows.json, nothing is trained twice
    metrics = tmp_path / "work" / "lenet-mlp-b32-n2" / "run-sync" / "metrics.json"
    before, said = metrics.stat().st_mtime_ns, []
    again = rs.run(s, tmp_path, echo=said.append)
    assert metrics.stat().st_mtime_ns == before and again["measured"] == doc["measured"]
    assert any(line.startswith("resuming: 1 row(s) already measured") for line in said), said
    # other settings (more samples per epoch) do not reuse it
    fresh = rs.Progress(tmp_path / "work" / "measured-rows.json", replace(s, train_samples=96), said.append)
    assert fresh.rows == {} and "measuring again" in said[-1]


def test_full_grid_adds_the_planners_board_count_and_the_fit_check():
    choices = [{"model": m, "batch": 32, "planner_boards": n} for m, n in
               (("lenet-mlp", 1), ("lenet5", 1), ("resnet32", 8), ("resnet56", 10), ("resnet110", 8))]
    grid = rs.full_grid(choices)
    assert len(grid) == len(set(grid))
    # the planner's count is run where the grid lacks it (8), not where it has it (1, 10)
    assert grid[-2:] == [("resnet32", 32, 8, "sync"), ("resnet110", 32, 8, "sync")]
    assert ("resnet110", 128, 1, "sync") in grid and ("resnet110", 128, 8, "sync") not in grid
    assert {(m, n) for m, _b, n, y in grid if y == "local-sgd"} == {(m, n) for m in rs.SHALLOW for n in (4, 10)}
    s = rs.Settings(run_models=("lenet5",), run_batches=(32,), run_boards=(1, 4), syncs=rs.SYNCS)
    assert rs.cases(s, choices) == [("lenet5", 32, 1, "sync"), ("lenet5", 32, 4, "sync"),
                                    ("lenet5", 32, 4, "local-sgd")]


@netns_tier
def test_emulated_boards_measure_their_network_bytes(tmp_path):
    # a notional host 1.25x a Pi 3B's speed: each of the two emulated boards gets ~0.8 of a core instead of the
    # ~0.04 this machine's real speed gives (minutes of start-up); the bytes checked here do not depend on it
    pi = emulate.board_speed(load_cluster(rs.CLUSTER), "pi0")
    s = rs.Settings(models=("lenet5",), batches=(32,), plan_boards=(1, 2), run_models=("lenet5",), run_batches=(32,),
                    run_boards=(1, 2), syncs=("sync", "local-sgd"), sync_every=1, train_samples=64, test_samples=32,
                    quick=True, host_gflops=pi / 0.8 / 1e9)
    doc = rs.run(s, tmp_path, echo=lambda _line: None)
    assert doc["emulated"] and 0 < doc["dilation"] <= 1
    one, two, local_sgd = doc["measured"]
    assert local_sgd["sync"] == "local-sgd" and local_sgd["net_bytes_per_board_mean"] > 2 * 61_706 * 4
    assert one["cpu_utilisation_of"] == "the board's emulated capacity"
    # two boards all-reduce LeNet-5's 61,706 float32 gradients twice (2 iterations): each board sends and
    # receives at least its half of the ring's traffic; one board sends nothing but its test line noise
    grads = 61_706 * 4
    assert two["net_bytes_per_board_mean"] > 2 * grads
    assert one["net_bytes_per_board_mean"] < two["net_bytes_per_board_mean"] / 4
    assert two["epoch_s"] == pytest.approx(two["epoch_s_emulated"] * doc["dilation"])


def test_a_failed_training_is_left_out_and_not_saved(tmp_path):
    """A run that fails (a board died, a timeout) is said and not saved, so the same command retries it."""
    class Failing:
        def train(self, art, data, epochs, run_dir, extra=()):
            raise rs.c.StudyError(f"training {art} failed (exit 1); log {run_dir}.log")

    s = rs.Settings(run_models=("lenet-mlp",), run_batches=(32,), run_boards=(1,), syncs=("sync",),
                    train_samples=32, test_samples=8)
    said = []
    progress = rs.Progress(tmp_path / "rows.json", s, said.append)
    assert rs.measured_rows(Failing(), s, tmp_path, said.append, progress=progress) == []
    assert progress.rows == {} and not (tmp_path / "rows.json").exists()
    assert any("lenet-mlp-b32-n1 sync: FAILED, left out of the report (training" in line for line in said), said


def test_a_measured_peak_beyond_usable_memory_is_reported():
    """The full run's ResNet-110 at batch 32 on one board: modelled 471 MB, measured 798 MB of 724 usable."""
    rows = [{"model": "resnet110", "batch": 32, "boards": 1, "peak_rss_mb_max": 798.0, "modelled_memory_mb": 471.0},
            {"model": "resnet110", "batch": 32, "boards": 10, "peak_rss_mb_max": 391.0, "modelled_memory_mb": 76.0},
            {"model": "resnet110", "batch": 128, "boards": 1, "skipped": "does not fit", "modelled_memory_mb": 1826.0}]
    (line,) = rs._memory_lines(rows, 724.0)
    assert line.startswith("memory: resnet110 b32 on 1 board(s) peaked at 798 MB measured, over the 724 MB usable")
    assert rs._memory_lines(rows, None) == []
