"""Study 1: hybrid vs data-parallel vs centralized training on three unlike boards.

Cluster examples/clusters/three-node-hetero-cloud.yaml: an RK3566 (4x A55 + NPU, 4 GB),
an RK3588 (8 cores + Mali, 8 GB) and a Raspberry Pi 4 (2 GB) on a gigabit switch,
and a 4-vCPU cloud server behind the site's 20 Mbit/s, 40 ms WAN uplink. Each
configuration is planned, compiled and trained with the real pipeline
(`edgeplan compile`, `edgeplan train` with every rank inside `edgeplan emulate`):

  centralized-cloud  the training set is uploaded from npu-board to the cloud (timed over the
                     shaped WAN link), then the cloud trains alone
  best-single-board  the board the planner prices fastest trains alone
  data-parallel      a replica of the whole model on every board, samples split by speed
                     (the planner's data-parallel-all baseline)
  edgeplan           `edgeplan plan --mode training` over the three boards (pipeline stages x
                     replica groups, or a simpler plan when that is faster)

For each model: time per epoch, time for all epochs including the upload, energy
per epoch and test accuracy after the same number of epochs. The research
reported the hybrid plan fastest and most frugal, with accuracy at least equal.

    python -m benchmarks.studies hybrid [--quick] [--models resnet18-cifar,mobilenet_v2-cifar] [--epochs N]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.studies import common as c

NAME = "hybrid"
CLUSTER = c.CLUSTERS / "three-node-hetero-cloud.yaml"
BOARDS = ("npu-board", "gpu-board", "cpu-board")
CLOUD = "cloud"
DATA_HOLDER = "npu-board"  # where the training set sits before any training
CONFIGS = ("centralized-cloud", "best-single-board", "data-parallel", "edgeplan")


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("resnet18-cifar", "mobilenet_v2-cifar")
    dataset: str = "digits"
    train_samples: int = 512
    test_samples: int = 256
    epochs: int = 2
    batch: int = 32
    microbatches: int = 4
    emulate: bool | None = None  # None: emulate when this machine can
    host_gflops: float | None = None
    quick: bool = False
    sync_bn: bool = False  # `edgeplan train --sync-bn`: BatchNorm statistics over each replica group
    configs: tuple[str, ...] = CONFIGS  # a subset (with centralized-cloud and edgeplan) for fast tests


QUICK = {"train_samples": 128, "test_samples": 64, "epochs": 1}


def plans(model: str, work: Path, s: Settings) -> dict:
    """The four configurations' plans (each on the cluster restricted to the devices it may use)."""
    boards = c.sub_cluster(CLUSTER, BOARDS, work / "boards.yaml")
    cloud = c.sub_cluster(CLUSTER, [CLOUD], work / "cloud.yaml")
    kw = {"batch": s.batch, "microbatches": s.microbatches}
    how = {
        "centralized-cloud": (cloud, "planner"),
        "best-single-board": (boards, "best-single-device"),
        "data-parallel": (boards, "data-parallel-all"),
        "edgeplan": (boards, "planner"),
    }
    missing = {"centralized-cloud", "edgeplan"} - set(s.configs)
    if missing or set(s.configs) - set(CONFIGS):
        raise c.StudyError(f"study 1 configurations {', '.join(s.configs)}: choose from {', '.join(CONFIGS)}, "
                           "with centralized-cloud and edgeplan")
    return {k: c.plan_training(model, how[k][0], choice=how[k][1], **kw) for k in CONFIGS if k in s.configs}


def run(s: Settings, out: Path, echo=c.echo_default) -> dict:
    """Run every model x configuration; returns the JSON document (rows, labels, verdicts)."""
    work = out / "work"
    rows: list[dict] = []
    with c.Bed(CLUSTER, s.host_gflops, s.emulate, echo) as bed:
        time_kind = c.SCALED if bed.emulate else c.LOCAL
        for model in s.models:
            mwork = work / model
            data = c.prepare_data(s.dataset, c.model_input_shape(model), s.train_samples, s.test_samples,
                                  mwork / "data")
            echo(f"{model}: {data.describe()}")
            ps = plans(model, mwork, s)
            up_emul = bed.transfer(DATA_HOLDER, CLOUD, data.train_bytes)
            up_real = up_emul * bed.dilation if up_emul is not None else \
                c.modelled_transfer_s(data.train_bytes, CLUSTER, DATA_HOLDER, CLOUD)
            up_energy = c.link_energy_j(data.train_bytes, CLUSTER, DATA_HOLDER, CLOUD)
            runs, same_as = c.run_configs(bed, ps, data, s.epochs, mwork, echo,
                                           extra=("--sync-bn",) if s.sync_bn else ())
            for cfg in ps:
                r, central = runs[cfg], cfg == "centralized-cloud"
                upload_s = up_real if central else 0.0
                total_s = upload_s + s.epochs * r.real_epoch_s
                rows.append({
                    "model": model, "config": cfg, "layout": c.layout_text(ps[cfg]),
                    "same_run_as": same_as.get(cfg),
                    "ranks": sum(len(st.replicas) for st in ps[cfg].stages),
                    "dilation": r.dilation,
                    "upload_bytes": data.train_bytes if central else 0,
                    "upload_s_emulated": up_emul if central else None,
                    "upload_s": upload_s,
                    "epoch_s_emulated": r.epoch_s,
                    "epoch_s": r.real_epoch_s,
                    "total_s": total_s,
                    "energy_j_per_epoch": r.energy_j,
                    "upload_energy_j": up_energy if central else 0.0,
                    "total_energy_j": (up_energy if central else 0.0) + s.epochs * r.energy_j,
                    "test_accuracy": r.accuracy,
                    "predicted_iter_s": r.predicted_iter_s,
                    "iter_s": r.real_iter_s,
                })
            base = next(x for x in rows if x["model"] == model and x["config"] == "centralized-cloud")
            for x in rows:
                if x["model"] == model:
                    x["speedup_vs_centralized"] = base["total_s"] / x["total_s"]
        notes = list(bed.notes)
        dilation = bed.dilation
    labels = {
        "upload_s_emulated": c.MEASURED if bed.emulate else "none (not emulated)",
        "upload_s": time_kind if bed.emulate else "modelled (bytes / WAN bandwidth + latency)",
        "epoch_s_emulated": c.MEASURED if bed.emulate else c.LOCAL,
        "epoch_s": time_kind, "total_s": time_kind, "iter_s": time_kind,
        "speedup_vs_centralized": f"ratio of total_s ({time_kind})",
        "energy_j_per_epoch": c.MODELLED, "total_energy_j": c.MODELLED,
        "upload_energy_j": "modelled (bytes x the WAN link's energy per byte)",
        "test_accuracy": c.MEASURED if bed.emulate else c.LOCAL,
        "predicted_iter_s": "the plan's prediction for the real boards",
    }
    return {
        "study": NAME, "quick": s.quick, "cluster": str(CLUSTER.relative_to(c.ROOT)),
        "settings": {"models": list(s.models), "dataset": s.dataset, "train_samples": s.train_samples,
                     "test_samples": s.test_samples, "epochs": s.epochs, "batch": s.batch,
                     "microbatches": s.microbatches, "sync_bn": s.sync_bn},
        "data": data.to_json() | {"description": data.describe()},
        "emulated": bool(bed.emulate), "dilation": dilation, "notes": notes,
        "labels": labels, "rows": rows, "verdicts": verdicts(rows, s),
    }


def verdicts(rows: list[dict], s: Settings) -> list[dict]:
    """Per model: did the research's finding hold (edgeplan fastest, most frugal, accuracy at least equal)?

    Accuracy ties are judged within one test sample (1 / test_samples).
    """
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["config"]: r for r in rows if r["model"] == model}
        hy, others = mine["edgeplan"], [r for k, r in mine.items() if k != "edgeplan"]
        fastest = hy["total_s"] <= min(r["total_s"] for r in others)
        frugal = hy["total_energy_j"] <= min(r["total_energy_j"] for r in others)
        accs = [r["test_accuracy"] for r in others if r["test_accuracy"] is not None]
        acc_ok = hy["test_accuracy"] is not None and (not accs or hy["test_accuracy"] >= max(accs) - 1 / s.test_samples)
        out.append({"model": model, "fastest": fastest, "most_frugal": frugal, "accuracy_at_least_equal": acc_ok,
                    "held": fastest and frugal and acc_ok,
                    "edgeplan_is": hy["same_run_as"] or "its own plan"})
    return out


def report(doc: dict, out: Path) -> tuple[list[str], dict]:
    """The printed table (and verdicts) and the written files."""
    s = doc["settings"]
    e = s["epochs"]
    header = ["model", "configuration", "plan (device*samples per micro-batch)", "upload s", "s/epoch",
              f"s for {e} ep.", "speed-up", "J/epoch", f"J for {e} ep.", "test acc %", "iter ms pred/meas"]
    body = []
    for r in doc["rows"]:
        layout, acc = c.row_cells(r)
        body.append([r["model"], r["config"], layout, c.fmt(r["upload_s"]), c.fmt(r["epoch_s"]),
                     c.fmt(r["total_s"]), f"{r['speedup_vs_centralized']:.2f}x", c.fmt(r["energy_j_per_epoch"]),
                     c.fmt(r["total_energy_j"]), acc,
                     f"{r['predicted_iter_s'] * 1e3:.0f}/{r['iter_s'] * 1e3:.0f}"])
    kind = doc["labels"]["epoch_s"]
    lines = c.report_lines(1, NAME, doc, "centralized", header, body,
                           "hybrid fastest, most frugal, accuracy at least equal", [
        (v["model"], f"{'held' if v['held'] else 'did not hold'} (fastest {v['fastest']}, most frugal "
                     f"{v['most_frugal']}, accuracy {v['accuracy_at_least_equal']}; edgeplan's plan is "
                     f"{v['edgeplan_is']})") for v in doc["verdicts"]])

    def panel(key, scale=1.0):
        return c.per_model(doc["rows"], key, scale)

    fig = c.bar_panels([
        (f"time for {e} epoch(s) incl. upload\n[{kind}]", "s", panel("total_s")),
        (f"energy per epoch\n[{c.MODELLED}]", "J", panel("energy_j_per_epoch")),
        (f"test accuracy after {e} epoch(s)\n[{doc['labels']['test_accuracy']}]", "%", panel("test_accuracy", 100)),
    ], f"Study 1: hybrid vs data-parallel vs centralized ({doc['data']['description']})")
    return lines, c.write_outputs(out, NAME, doc, lines, fig)


def main(argv: list[str] | None = None) -> int:
    ap = c.parser(__doc__, NAME)
    ap.add_argument("--models", default=",".join(Settings.models), help="comma-separated zoo names")
    c.training_options(ap, CONFIGS, "centralized-cloud and edgeplan")
    args = ap.parse_args(argv)
    s = Settings(models=tuple(args.models.split(",")), dataset=args.dataset,
                 emulate=False if args.local else None, host_gflops=args.host_gflops, quick=args.quick,
                 sync_bn=args.sync_bn, configs=tuple(args.configs.split(",")))
    if args.quick:
        s = replace(s, **QUICK)
    s = replace(s, **c.overrides(args, "epochs", "train_samples", "test_samples"))
    return c.finish(args, NAME, run, report, s)


if __name__ == "__main__":
    sys.exit(main())
