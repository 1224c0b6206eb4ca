"""A training epoch's numbers: each rank's counters, the run's row (rank 0 prints and records it), energy.

Every rank fills an ``EpochCounters``; the engine all-gathers their ``row``s and
``epoch_row`` sums them into the row metrics.json keeps and ``format_epoch`` prints,
measured beside the plan's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpochCounters:
    """One rank's running sums over an epoch (training loss and accuracy count on the last stage only)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    busy_s: float = 0.0
    iter_times: list[float] = field(default_factory=list)

    def row(self, test: tuple[float, int, int], train_s: float) -> list[float]:
        """The vector every rank contributes to the all-gather (columns as ``epoch_row`` reads them)."""
        steady = self.iter_times[1:] if len(self.iter_times) > 1 else self.iter_times
        return [self.loss_sum, self.correct, self.count, test[0], test[1], test[2], self.busy_s,
                float(np.mean(steady)), train_s]


def epoch_row(t: np.ndarray, epoch: int, iters: int, batch: int, evaluate: bool, job, ranks, predicted) -> dict:
    """The epoch's row from the gathered counters ``t`` (one ``EpochCounters.row`` per rank)."""
    count, test_count = max(t[:, 2].sum(), 1), max(t[:, 5].sum(), 1)
    epoch_s = float(t[:, 8].max())
    iter_s = float(t[:, 7].max())
    d = job.dilation
    return {
        "epoch": epoch + 1,
        "loss": float(t[:, 0].sum() / count),
        "accuracy": float(t[:, 1].sum() / count),
        "test_loss": float(t[:, 3].sum() / test_count) if evaluate else None,
        "test_accuracy": float(t[:, 4].sum() / test_count) if evaluate else None,
        "epoch_s": epoch_s,
        "samples_per_s": iters * batch / epoch_s,
        "iterations": iters,
        "measured_iter_s": iter_s,
        "board_iter_s": iter_s * d,  # emulated testbed: the boards' time (measured x dilation)
        "dilation": d,
        "predicted_iter_s": predicted.iter_s,
        "energy_j": energy(t[:, 6], epoch_s, iters, batch, job, ranks, predicted),
    }


def energy(busy: np.ndarray, epoch_s: float, iters: int, batch: int, job, ranks, predicted) -> dict:
    """Energy of the epoch: boards' idle power over the epoch plus busy power over their compute time."""
    power = {dev: (idle, busy_w) for dev, idle, busy_w in job.power}
    if power:
        total = 0.0
        devices = {r.device for r in ranks}
        for dev in devices:
            idle, busy_w = power.get(dev, (0.0, 0.0))
            b = min(sum(busy[r.rank] for r in ranks if r.device == dev), epoch_s)
            total += idle * (epoch_s - b) + busy_w * b
        return {"joules": total * job.dilation, "source": "measured busy time x board power profiles"}
    per_sample = predicted.energy_j
    return {"joules": per_sample * iters * batch, "source": "plan prediction (no power profiles in artifacts)"}


def format_epoch(row: dict) -> str:
    pred = row["predicted_iter_s"]
    pred_s = f"{pred * 1e3:.1f} ms" if pred else "n/a"
    test = f"  test acc {row['test_accuracy'] * 100:.2f}%" if row.get("test_accuracy") is not None else ""
    board = f" (boards {row['board_iter_s'] * 1e3:.1f} ms at dilation {row['dilation']:.3g})" \
        if row.get("dilation", 1.0) != 1.0 else ""
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  acc {row['accuracy'] * 100:.2f}%{test}  "
            f"time {row['epoch_s']:.2f} s  {row['samples_per_s']:.1f} samples/s  "
            f"iter measured {row['measured_iter_s'] * 1e3:.1f} ms{board} vs predicted {pred_s}  "
            f"energy {row['energy_j']['joules']:.3g} J")
