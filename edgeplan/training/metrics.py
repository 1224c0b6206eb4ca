"""A training epoch's numbers: each rank's counters, the run's row (rank 0 prints and records it), energy.

Every rank fills an ``EpochCounters``; the engine all-gathers their ``row``s and
``epoch_row`` sums them into the row metrics.json keeps and ``format_epoch`` prints,
measured beside the plan's prediction.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import numpy as np

RESOURCE_COLUMNS = 4  # cpu seconds, peak resident bytes, network bytes received, sent (ResourceProbe.stop)
PHASE_COLUMNS = 5  # forward, backward, optimizer step (with all-reduce), all-reduce seconds; micro-batches


@dataclass
class EpochCounters:
    """One rank's running sums over an epoch (training loss and accuracy count on the last stage only)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    busy_s: float = 0.0
    iter_times: list[float] = field(default_factory=list)
    resources: list[float] = field(default_factory=lambda: [0.0] * RESOURCE_COLUMNS)  # ResourceProbe.stop()
    # compute only (waits for peers excluded): each figure the plan predicts per stage (issue 14 item 5)
    forward_s: float = 0.0
    backward_s: float = 0.0
    step_s: float = 0.0  # optimizer step, gradient all-reduce included
    allreduce_s: float = 0.0
    microbatches: int = 0  # backward passes run (each a forward too)

    def row(self, test: tuple[float, int, int], train_s: float) -> list[float]:
        """The vector every rank contributes to the all-gather (columns as ``epoch_row`` reads them)."""
        steady = self.iter_times[1:] if len(self.iter_times) > 1 else self.iter_times
        return [self.loss_sum, self.correct, self.count, test[0], test[1], test[2], self.busy_s,
                float(np.mean(steady)), train_s, *self.resources,
                self.forward_s, self.backward_s, self.step_s, self.allreduce_s, float(self.microbatches)]


def net_bytes(path: str = "/proc/net/dev") -> tuple[int, int]:
    """(received, sent) bytes of every interface but loopback: in an emulated board's network
    namespace, exactly that board's traffic."""
    rx = tx = 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx


class ResourceProbe:
    """What a training rank used over an epoch: CPU seconds (the process's CPU clock: the serving
    monitor's /proc reading counts 10 ms ticks, too coarse for an emulated Pi's 0.04 cores over a
    short epoch), resident memory (the serving monitor, runtime/monitor.py) and its board's network
    bytes (/proc/net/dev)."""

    def __init__(self, device: str, stage: int, unit: str):
        from edgeplan.runtime.monitor import Monitor

        self.monitor = Monitor(device, stage, unit)
        self._cpu0, self._net0 = 0.0, (0, 0)

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._net0 = net_bytes()

    def stop(self) -> list[float]:
        snap = self.monitor.snapshot()
        rx, tx = net_bytes()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return [time.process_time() - self._cpu0,
                float(max(peak, snap["process_resident_memory_bytes"])),
                float(rx - self._net0[0]), float(tx - self._net0[1])]


def epoch_row(t: np.ndarray, epoch: int, iters: int, batch: int, evaluate: bool, job, ranks, predicted,
              stages=()) -> dict:
    """The epoch's row from the gathered counters ``t`` (one ``EpochCounters.row`` per rank); ``stages``:
    the plan's, whose per-micro-batch predictions stand beside the measured figures (``stage_figures``)."""
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
        "boards": boards(t, epoch_s, job, ranks),
        "stages": stage_figures(t, iters, job, ranks, stages),
    }


def stage_figures(t: np.ndarray, iters: int, job, ranks, stages) -> list[dict]:
    """Per plan stage, each measured figure beside the plan's prediction of the same quantity, in board
    seconds (measured x the testbed's dilation): forward and backward of one micro-batch on the stage's
    slowest replica (the plan's ``forward_s`` and ``compute_s - forward_s``), and per iteration the
    optimizer step and the gradient all-reduce (measured only: the plan does not write them per stage)."""
    col = 9 + RESOURCE_COLUMNS
    if t.shape[1] < col + PHASE_COLUMNS:
        return []
    d = job.dilation
    out = []
    for st in stages:
        rows = t[[r.rank for r in ranks if r.stage == st.index]]
        if not len(rows):
            continue
        mb = np.maximum(rows[:, col + 4], 1.0)
        fwd, bwd = float((rows[:, col] / mb).max()) * d, float((rows[:, col + 1] / mb).max()) * d
        ar = float(rows[:, col + 3].max()) / max(iters, 1) * d
        step = float((rows[:, col + 2] - rows[:, col + 3]).max()) / max(iters, 1) * d
        p_fwd = st.forward_s
        out.append({"stage": st.index, "forward_s": [fwd, p_fwd],
                    "backward_s": [bwd, None if p_fwd is None else st.compute_s - p_fwd],
                    "optimizer_s": [step, None], "allreduce_s": [ar, None]})
    return out


def boards(t: np.ndarray, epoch_s: float, job, ranks) -> dict:
    """Per board over the epoch's training: CPU seconds and utilisation (in cores of the machine the
    ranks ran on), peak resident memory of its ranks, and network bytes (the board's interfaces;
    measured only where each board has its own, i.e. on real boards or in the emulated testbed)."""
    if t.shape[1] < 9 + RESOURCE_COLUMNS:
        return {}
    out = {}
    for dev in sorted({r.device for r in ranks}):
        rows = t[[r.rank for r in ranks if r.device == dev]]
        cpu = float(rows[:, 9].sum())
        out[dev] = {"cpu_s": cpu, "cpu_cores": cpu / epoch_s if epoch_s > 0 else 0.0,
                    "peak_rss_bytes": int(rows[:, 10].sum()),
                    # ranks of one board read the same interface counters: take one, not their sum
                    "net_rx_bytes": None if job.local else int(rows[:, 11].max()),
                    "net_tx_bytes": None if job.local else int(rows[:, 12].max())}
    return out


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
    def ms(pair) -> str:
        got, want = pair
        return f"{got * 1e3:.2f}" + (f"/{want * 1e3:.2f}" if want is not None else "/-")

    stages = "".join(f"\n  stage {s['stage']} (board ms, measured/predicted): forward {ms(s['forward_s'])}  "
                     f"backward {ms(s['backward_s'])} per micro-batch; optimizer {ms(s['optimizer_s'])}  "
                     f"all-reduce {ms(s['allreduce_s'])} per iteration" for s in row.get("stages") or ())
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  acc {row['accuracy'] * 100:.2f}%{test}  "
            f"time {row['epoch_s']:.2f} s  {row['samples_per_s']:.1f} samples/s  "
            f"iter measured {row['measured_iter_s'] * 1e3:.1f} ms{board} vs predicted {pred_s}  "
            f"energy {row['energy_j']['joules']:.3g} J{stages}")
