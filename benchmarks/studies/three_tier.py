"""Study 3: training across device, edge server and cloud (layer and sample granularity).

Cluster examples/clusters/three-tier.yaml: a Raspberry Pi 4 holding the training
data, a 4-core x86 edge server one gigabit switch away, and a 16-vCPU cloud
server behind the site's 20 Mbit/s, 40 ms WAN uplink. Each configuration is
planned, compiled and trained with the real pipeline (`edgeplan compile`,
`edgeplan train` with every rank inside `edgeplan emulate`):

  cloud-only   the training set is uploaded to the cloud over the WAN link (timed over the
               shaped link), then the cloud trains alone
  device-only  the device trains alone on its own data (nothing moves)
  edgeplan     `edgeplan plan --mode training` over all three tiers (layers split across
               tiers, samples split within a tier, or a simpler plan when that is faster);
               every board holding a stage-0 replica first receives its share of the
               samples from the device (timed the same way)

Reported per model: upload time, time per epoch, time for all epochs including
the upload, speed-up over cloud-only training, energy, test accuracy. The
research reported up to 6.9x over cloud-based training.

    python -m benchmarks.studies three-tier [--quick] [--models lenet5,mobilenet_v2-cifar] [--epochs N]
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.studies import common as c

NAME = "three-tier"
FILE = "three_tier"
CLUSTER = c.CLUSTERS / "three-tier.yaml"
DEVICE, EDGE, CLOUD = "device", "edge-server", "cloud"
CONFIGS = ("cloud-only", "device-only", "edgeplan")
RESEARCH_SPEEDUP = 6.9


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("lenet5", "mobilenet_v2-cifar")
    dataset: str = "digits"
    train_samples: int = 512
    test_samples: int = 256
    epochs: int = 2
    batch: int = 32
    microbatches: int = 4
    emulate: bool | None = None
    host_gflops: float | None = None
    quick: bool = False
    sync_bn: bool = False  # `edgeplan train --sync-bn`: BatchNorm statistics over each replica group
    configs: tuple[str, ...] = CONFIGS  # a subset (with cloud-only and edgeplan) for fast tests


QUICK = {"train_samples": 128, "test_samples": 64, "epochs": 1}


def plans(model: str, work: Path, s: Settings) -> dict:
    kw = {"batch": s.batch, "microbatches": s.microbatches}
    missing = {"cloud-only", "edgeplan"} - set(s.configs)
    if missing or set(s.configs) - set(CONFIGS):
        raise c.StudyError(f"study 3 configurations {', '.join(s.configs)}: choose from {', '.join(CONFIGS)}, "
                           "with cloud-only and edgeplan")
    where = {"cloud-only": [CLOUD], "device-only": [DEVICE]}
    return {k: c.plan_training(model, c.sub_cluster(CLUSTER, where[k], work / f"{k}.yaml") if k in where
                               else CLUSTER, **kw) for k in CONFIGS if k in s.configs}


def uploads(plan, data: c.Data) -> dict[str, int]:
    """Bytes of training samples each board other than the device must receive: its stage-0 share."""
    micro = plan.batch // plan.microbatches
    out: dict[str, int] = {}
    for r in plan.stages[0].replicas:
        if r.device != DEVICE:
            out[r.device] = out.get(r.device, 0) + math.ceil(data.train * r.samples / micro) * data.sample_bytes
    return out


def run(s: Settings, out: Path, echo=c.echo_default) -> dict:
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
            runs, same_as = c.run_configs(bed, ps, data, s.epochs, mwork, echo,
                                           extra=("--sync-bn",) if s.sync_bn else ())
            timed: dict = {}  # (destination, bytes) -> (emulated s, real s): one timing per distinct transfer
            for cfg in ps:
                r = runs[cfg]
                up_emul, up_real, up_energy, up_bytes = 0.0, 0.0, 0.0, 0
                for dst, nbytes in uploads(ps[cfg], data).items():
                    if (dst, nbytes) not in timed:
                        e = bed.transfer(DEVICE, dst, nbytes)
                        timed[(dst, nbytes)] = (e, e * bed.dilation if e is not None else
                                                c.modelled_transfer_s(nbytes, CLUSTER, DEVICE, dst))
                    e, real = timed[(dst, nbytes)]
                    up_emul = None if e is None or up_emul is None else up_emul + e
                    up_real += real  # one after the other: the device's uplink is shared
                    up_energy += c.link_energy_j(nbytes, CLUSTER, DEVICE, dst)
                    up_bytes += nbytes
                rows.append({
                    "model": model, "config": cfg, "layout": c.layout_text(ps[cfg]),
                    "same_run_as": same_as.get(cfg),
                    "tiers": sorted({rep.device for st in ps[cfg].stages for rep in st.replicas}),
                    "dilation": r.dilation,
                    "upload_bytes": up_bytes, "upload_s_emulated": up_emul, "upload_s": up_real,
                    "epoch_s_emulated": r.epoch_s, "epoch_s": r.real_epoch_s,
                    "total_s": up_real + s.epochs * r.real_epoch_s,
                    "energy_j_per_epoch": r.energy_j, "upload_energy_j": up_energy,
                    "total_energy_j": up_energy + s.epochs * r.energy_j,
                    "test_accuracy": r.accuracy,
                    "predicted_iter_s": r.predicted_iter_s, "iter_s": r.real_iter_s,
                })
            base = next(x for x in rows if x["model"] == model and x["config"] == "cloud-only")
            for x in rows:
                if x["model"] == model:
                    x["speedup_vs_cloud"] = base["total_s"] / x["total_s"]
        notes, dilation, emulated = list(bed.notes), bed.dilation, bool(bed.emulate)
    notes.append("the planner prices time per iteration only: where the data sits and the one-time upload are "
                 "added here, after planning (an input pinned to the device would be a hard constraint instead)")
    labels = {
        "upload_s_emulated": c.MEASURED if emulated else "none (not emulated)",
        "upload_s": time_kind if emulated else "modelled (bytes / link bandwidth + latency)",
        "epoch_s_emulated": c.MEASURED if emulated else c.LOCAL,
        "epoch_s": time_kind, "total_s": time_kind, "iter_s": time_kind,
        "speedup_vs_cloud": f"ratio of total_s ({time_kind})",
        "energy_j_per_epoch": c.MODELLED, "total_energy_j": c.MODELLED,
        "upload_energy_j": "modelled (bytes x the link's energy per byte)",
        "test_accuracy": c.MEASURED if emulated else c.LOCAL,
        "predicted_iter_s": "the plan's prediction for the real boards",
    }
    verdicts = []
    for model in s.models:
        mine = {x["config"]: x for x in rows if x["model"] == model}
        sp = mine["edgeplan"]["speedup_vs_cloud"]
        verdicts.append({"model": model, "edgeplan_speedup_vs_cloud": sp,
                         "edgeplan_tiers": mine["edgeplan"]["tiers"],
                         "edgeplan_is": mine["edgeplan"]["same_run_as"] or "its own plan",
                         "faster_than_cloud": sp > 1.0,
                         "at_least_device_only": mine["edgeplan"]["total_s"] <= mine["device-only"]["total_s"]
                         if "device-only" in mine else None})
    return {
        "study": NAME, "quick": s.quick, "cluster": str(CLUSTER.relative_to(c.ROOT)),
        "settings": {"models": list(s.models), "dataset": s.dataset, "train_samples": s.train_samples,
                     "test_samples": s.test_samples, "epochs": s.epochs, "batch": s.batch,
                     "microbatches": s.microbatches, "sync_bn": s.sync_bn},
        "data": data.to_json() | {"description": data.describe()},
        "emulated": emulated, "dilation": dilation, "notes": notes, "labels": labels, "rows": rows,
        "research_speedup": RESEARCH_SPEEDUP, "verdicts": verdicts,
    }


def report(doc: dict, out: Path) -> tuple[list[str], dict]:
    s = doc["settings"]
    e = s["epochs"]
    header = ["model", "configuration", "plan (device*samples per micro-batch)", "upload MB", "upload s", "s/epoch",
              f"s for {e} ep.", "speed-up vs cloud", f"J for {e} ep.", "test acc %", "iter ms pred/meas"]
    body = []
    for r in doc["rows"]:
        layout, acc = c.row_cells(r)
        body.append([r["model"], r["config"], layout, c.fmt(r["upload_bytes"] / 1e6), c.fmt(r["upload_s"]),
                     c.fmt(r["epoch_s"]), c.fmt(r["total_s"]), f"{r['speedup_vs_cloud']:.2f}x",
                     c.fmt(r["total_energy_j"]), acc, f"{r['predicted_iter_s'] * 1e3:.0f}/{r['iter_s'] * 1e3:.0f}"])
    kind = doc["labels"]["epoch_s"]
    lines = c.report_lines(3, NAME, doc, "cloud-only", header, body,
                           f"up to {RESEARCH_SPEEDUP}x over cloud-based training", [
        (v["model"], f"edgeplan {v['edgeplan_speedup_vs_cloud']:.2f}x over cloud-only, on "
                     f"{', '.join(v['edgeplan_tiers'])} (edgeplan's plan is {v['edgeplan_is']})")
        for v in doc["verdicts"]])

    def panel(key, scale=1.0):
        return c.per_model(doc["rows"], key, scale)

    fig = c.bar_panels([
        (f"time for {e} epoch(s) incl. upload\n[{kind}]", "s", panel("total_s")),
        ("speed-up over cloud-only\n[ratio of the times]", "x", panel("speedup_vs_cloud")),
        (f"energy for {e} epoch(s) incl. upload\n[{c.MODELLED}]", "J", panel("total_energy_j")),
    ], f"Study 3: device / edge server / cloud ({doc['data']['description']})")
    return lines, c.write_outputs(out, FILE, doc, lines, fig)


def main(argv: list[str] | None = None) -> int:
    ap = c.parser(__doc__, NAME)
    ap.add_argument("--models", default=",".join(Settings.models), help="comma-separated zoo names")
    c.training_options(ap, CONFIGS, "cloud-only and edgeplan")
    args = ap.parse_args(argv)
    s = Settings(models=tuple(args.models.split(",")), dataset=args.dataset,
                 emulate=False if args.local else None, host_gflops=args.host_gflops, quick=args.quick,
                 sync_bn=args.sync_bn, configs=tuple(args.configs.split(",")))
    if args.quick:
        s = replace(s, **QUICK)
    s = replace(s, **c.overrides(args, "epochs", "train_samples", "test_samples"))
    return c.finish(args, FILE, run, report, s)


if __name__ == "__main__":
    sys.exit(main())
