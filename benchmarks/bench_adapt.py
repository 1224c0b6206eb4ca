"""Adaptive runtime: static vs heuristic vs rl vs oracle on the shipped traces (issue 12 item 6), simulated.

Family: resnet18 on examples/clusters/three-node-hetero-wifi.yaml (throughput, batch 4, head npu-board), the
default family (nominal, each board x3 slower, each link x4 slower, each board absent). The Wi-Fi cluster (the
boards of three-node-hetero.yaml on ~240 Mbit/s links) is the one where both of the traces' disturbances change
the best layout by a wide margin: the nominal plan splits the model npu-board -> gpu-board, a 4x bandwidth drop
makes its cut cost ~3x its period (the npu-board alone is best), a 3x CPU hog on gpu-board ~2.5x (an
npu-board-heavy split is best); on the gigabit cluster the drop cost the testbed family nothing (its cut fits
in the period even at a quarter of the bandwidth), so no policy could gain there. Traces:
examples/traces/*.yaml. Each policy runs each trace in ``edgeplan.adapt.simulate`` (the cost model is the
truth; the Estimator reads noisy monitor statuses every 0.5 s epoch; a switch pauses service for
``policy.SWITCH_S``):

- static: the best nominal plan throughout;
- heuristic: ``policy.heuristic`` (re-pricing with hysteresis, one switch per change);
- rl: the contextual bandit of ``adapt.rl``, trained here first (seeded) on random traces;
- oracle: the best plan under the true condition, switched the moment it changes (same pause).

Table: throughput, p50/p99 request latency, energy per inference (model), switches, lost requests, and the
time to recover after each change of the true condition (until an epoch serves within 10% of the best
plan's throughput under it; "never": not before the next change). Then the same policies on held-out random
traces from rl's training distribution (means per trace; changes: of the true condition). Plot: throughput
over time per trace with switch markers and the trace's events (PNG + SVG in --out). Last line, for the
alternating trace (the issue's target: heuristic >= 1.3x static): ``adapt: heuristic/static throughput
X.XXx, rl/static Y.YYx, lost L, switches N`` (L: requests lost by heuristic and rl; N: the heuristic's switches).

``--testbed`` (root) then runs static (``--adapt off``), heuristic and rl on the emulated cluster: a family
for the traces' conditions planned against the cluster as emulated here, compiled, rl-trained, and each trace replayed
by `edgeplan emulate --trace` around `edgeplan run art/ --adapt P --report r.json`; its table comes from
those reports (energy: each variant's predicted mJ weighted by the requests it answered), and its summary
line is then the last one.

Run: ``python -m benchmarks.bench_adapt [--quick] [--seed S] [--episodes N] [--out DIR] [--testbed
[--traces bw-drop ...]]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "clusters" / "three-node-hetero-wifi.yaml"
TRACES = ROOT / "examples" / "traces"
HEAD = "npu-board"
POLICIES = ("static", "heuristic", "rl", "oracle")
TARGET = "alternating"
HELD_OUT_SEED = 99
# --testbed: the variants the shipped traces call for (every link x0.25, gpu-board 3x slower), so the family
# compiles in minutes here; the simulator uses the default family
TESTBED_VARIANTS = ("bandwidth=1,0.25", "slowdown:gpu-board=1,3")
WINDOW_LEAD_S = 8.0  # --testbed: throughput counted from this long before a trace's first event to its end


def _fmt_recover(xs) -> str:
    return " ".join("never" if math.isinf(x) else f"{x:g}" for x in xs) or "-"


def plot(runs: dict, out: Path) -> list[Path]:
    """Throughput over time (per epoch), one panel per trace; switches as markers, trace events as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), squeeze=False)
    colors = {"static": "tab:gray", "heuristic": "tab:blue", "rl": "tab:orange", "oracle": "tab:green"}
    for ax, (trace, by_policy) in zip(axes[:, 0], runs.items(), strict=True):
        for name, run in by_policy.items():
            dt = run.steps[1].t_s - run.steps[0].t_s
            t = [s.t_s + dt / 2 for s in run.steps]
            ax.plot(t, [s.served / dt for s in run.steps], label=name, color=colors.get(name),
                    lw=2.4 if name == "heuristic" else 1.2, ls={"oracle": "--", "rl": "-."}.get(name, "-"))
            sw = [(s.t_s, s.served / dt) for s in run.steps if s.switched]
            if sw:
                ax.scatter([x for x, _ in sw], [y for _, y in sw], marker="v", s=36, color=colors.get(name),
                           zorder=3)
        events: dict[float, list[str]] = {}
        for at, what in next(iter(by_policy.values())).events:
            events.setdefault(at, []).append(what)
        for at, whats in events.items():
            ax.axvline(at, color="k", lw=0.6, ls=":")
            ax.annotate("; ".join(whats), (at, 0.02), xycoords=("data", "axes fraction"), fontsize=6.5, rotation=90,
                        va="bottom", ha="right")
        ax.set_title(f"{trace}: throughput per 0.5 s epoch (markers: switches; dotted: trace events)", fontsize=9)
        ax.set_ylabel("samples/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench_adapt.png", out / "bench_adapt.svg"]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return paths


def _cli(*args, log: Path, timeout_s: float) -> None:
    """Run one `edgeplan` command (this venv's), appending its output to ``log``; a failure names the command."""
    import subprocess

    argv = [str(Path(sys.executable).with_name("edgeplan")), *map(str, args)]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        p = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"bench_adapt --testbed: `{' '.join(argv[1:])}` exited {p.returncode}; see {log}")


def window_throughput(adapt: dict, samples_per_request: int, start_s: float, end_s: float) -> float:
    """Samples per second answered while the trace ran, on the run's process clock (``answered_at_process_s``):
    from ``start_s`` (or the first answer, if later) to ``end_s`` (the trace's end; or the last answer, if the
    run ended sooner). The whole run's throughput dilutes the trace when a loaded machine makes the run outlast
    it (all nominal then), and counts the warm-up's pause that only --adapt runs have."""
    t = [x for x in adapt.get("answered_at_process_s") or [] if x <= end_s]
    if not t:
        return math.nan
    begin = max(start_s, t[0])
    end = t[-1] if t[-1] < end_s - 1.0 else end_s
    n = sum(begin < x <= end for x in t)
    return n * samples_per_request / (end - begin) if end > begin and n else math.nan


def switch_delays(changes: list[float], controller: dict) -> list[float | None]:
    """Per change of the trace (its event times, s), seconds until the controller's first switch after it and
    before the next change (None: none), on the trace's clock: a switch's ``at_s`` counts from the controller's
    start, ``started_process_age_s`` is when that was since the run command (and so the trace) started."""
    age = controller.get("started_process_age_s")
    if age is None:
        return [None] * len(changes)
    at = sorted(float(x["at_s"]) + age for x in controller.get("decisions_switched", []))
    out = []
    for k, t in enumerate(changes):
        end = changes[k + 1] if k + 1 < len(changes) else math.inf
        out.append(next((round(x - t, 2) for x in at if t <= x < end), None))
    return out


ORACLE_BIN_S = 1.0  # --testbed: "within 10% of the oracle" is judged on 1 s windows of answered samples ...
ORACLE_STEP_S = 0.5  # ... starting every 0.5 s after a change (the simulator's epoch; a 0.5 s window holds ~2 requests)


def within_oracle(changes: list[float], answered: list[float], oracle: list[float], end_s: float) -> list[float]:
    """Per change of the trace (event times, s): seconds until the run's throughput is within 10% of the oracle
    run's, on the trace's clock (``answered_at_process_s`` of both reports): the offset k (a multiple of
    ``ORACLE_STEP_S``) of the first window (t+k, t+k+ORACLE_BIN_S] before the next change in which the run
    answered >= 90% of the requests the oracle run answered in that same window (inf: none). The simulator's
    ``Summary.recover_s`` is the same rule on its 0.5 s epochs, against the best plan's modelled throughput;
    here the oracle is measured, its own pauses included (a window in which the oracle switches is easy)."""
    import bisect

    def count(xs, a, b):
        return bisect.bisect_right(xs, b) - bisect.bisect_right(xs, a)

    a, o = sorted(answered), sorted(oracle)
    out = []
    for i, t in enumerate(changes):
        nxt = changes[i + 1] if i + 1 < len(changes) else end_s
        k, got = 0.0, math.inf
        while t + k + ORACLE_BIN_S <= nxt + 1e-9:
            lo, hi = t + k, t + k + ORACLE_BIN_S
            if count(a, lo, hi) >= 0.9 * count(o, lo, hi):
                got = k
                break
            k += ORACLE_STEP_S
        out.append(got)
    return out


def sim_predicted(plans: dict, cluster_file: Path, traces: list[Path]) -> None:
    """What the simulator predicts for the testbed's own family on the emulated cluster (cost model = truth):
    static, heuristic and oracle samples/s per trace, to read the testbed's table against."""
    from edgeplan.adapt import simulate as sm
    from edgeplan.adapt.policy import heuristic
    from edgeplan.graph.load import build
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed.trace import load as load_trace

    cluster = load_cluster(cluster_file)
    world = sm.World.from_family(build("resnet18").graph, cluster, plans)
    out = []
    for path in traces:
        got = {p: sm.Summary.of(sm.run(world, load_trace(path, cluster), {"heuristic": heuristic}.get(p, p), name=p))
               .throughput for p in ("static", "heuristic", "oracle")}
        out.append(f"{path.stem} static {got['static']:.2f} heuristic {got['heuristic']:.2f} oracle "
                   f"{got['oracle']:.2f} (oracle/static {got['oracle'] / got['static']:.2f}x)")
    print("simulator on this family and emulated cluster, samples/s: " + "; ".join(out))


def testbed(args, traces: list[Path]) -> None:
    """The same comparison on the emulated cluster (root): plan a family (``TESTBED_VARIANTS``) against the
    cluster as emulated here, compile it once (ONNX Runtime stages), train rl on it, then per trace and policy
    `edgeplan emulate CLUSTER --trace T -- edgeplan run art/ --adapt P --report r.json`. static is --adapt off
    (the nominal variant); oracle is --adapt oracle (adapt/oracle.py: switches at the trace's events to the
    best-priced variant under its true condition, through the same switch). ``--policies``: run only these;
    the others' reports are read from an earlier run in the same --out (their rows say "earlier")."""
    import math as _m

    from edgeplan import jsonio
    from edgeplan.planner.family import load_family
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed.trace import load as load_trace

    work = args.out / "testbed"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    log.write_text("")
    gf = ["--host-gflops", f"{args.host_gflops:g}"]
    emu, plans, art = work / f"emu-{args.host_gflops:g}.yaml", work / "plans", work / "art"
    t0 = time.monotonic()
    if emu.is_file():  # measured op-class speeds vary run to run: a new file would re-plan and recompile
        print(f"testbed: reusing {emu} (delete it to re-measure this machine)")
    else:
        _cli("emulate", CLUSTER, "--write-cluster", emu, *gf, log=log, timeout_s=300)
    _cli("plan", "resnet18", "--cluster", emu, "--objective", "throughput", "--batch", "4", "--head", HEAD,
         *[x for v in TESTBED_VARIANTS for x in ("--variants", v)], "--out", plans, log=log, timeout_s=600)
    if (art / "compile-family.json").is_file() and (art / "family.json").is_file() \
            and (art / "family.json").read_bytes() == (plans / "family.json").read_bytes():
        print(f"testbed: reusing {art} (compiled for this very family)")
    else:
        _cli("compile", plans, "--out", art, "--force", "--backend", "onnxruntime", log=log, timeout_s=1800)
    _cli("adapt-train", art, "--seed", args.seed, "--episodes", args.episodes or 300, log=log, timeout_s=900)
    fam, fplans = load_family(plans)
    energy = {Path(n).stem: p.predicted.energy_j for n, p in fplans.items()}
    nominal = fam.variants[0]
    print(f"testbed: resnet18 family ({' x '.join(TESTBED_VARIANTS)}) planned on {emu} ({len(fplans)} plans), "
          f"compiled and rl-trained in {time.monotonic() - t0:.0f} s; log {log}")
    sim_predicted(fplans, emu, traces)
    print(f"samples/s: while the trace ran (from {WINDOW_LEAD_S:g} s before its first event to its end); "
          "run /s: the whole run")
    print("switches: all (probes among them: re-measurements of expired factors); per chg: switches per change of "
          "the trace (simultaneous events are one); pause ok: pauses <= the old plan's slowest stage + 50 ms")
    print(f"\n{'trace':<12}{'policy':<10}{'samples/s':>10}{'run /s':>8}{'p50 ms':>8}{'p99 ms':>8}{'mJ/inf':>8}"
          f"{'x static':>9}{'x oracle':>9}{'switches':>9}{'probes':>7}{'per chg':>8}{'lost':>6}{'dup':>5}"
          f"{'pause max ms':>13}{'pause ok':>9}{'run':>8}  switch s after each change (trace clock; -: none)"
          " | s to within 10% of oracle per change (within_oracle)")
    got: dict[tuple[str, str], dict] = {}
    window: dict[tuple[str, str], float] = {}
    for path in traces:
        trace = load_trace(path, load_cluster(CLUSTER))
        dur = trace.duration_s or (max(ev.at_s for ev in trace.events) + 20)
        requests = max(50, _m.ceil(nominal.throughput * dur * 1.2 / 4))  # batch 4 samples per request
        for pol in ("off", "oracle", "heuristic", "rl"):
            rep_path = work / f"{path.stem}-{pol}.json"
            earlier = pol not in args.policies
            if earlier and not rep_path.is_file():
                continue
            if not earlier:
                _cli("emulate", CLUSTER, *gf, "--trace", path, "--", Path(sys.executable).with_name("edgeplan"),
                     "run", art, "--adapt", pol, "--requests", requests, "--report", rep_path, log=log,
                     timeout_s=max(600, 4 * dur))
            rep = jsonio.read(rep_path)
            ad = rep.get("adapt") or {}
            answered = ad.get("answered_by_variant") or {}
            n = sum(answered.values())
            mj = sum(energy[v] * k for v, k in answered.items()) / n * 1e3 if n else _m.nan
            pauses = [x["pause_s"] for x in ad.get("switches", []) if x.get("pause_s") is not None]
            name = "static" if pol == "off" else pol
            got[(path.stem, name)] = rep
            first = min(ev.at_s for ev in trace.events)
            w = window[(path.stem, name)] = window_throughput(ad, rep["samples_per_request"],
                                                              first - WINDOW_LEAD_S, dur)
            if pol == "off" and rep["throughput"] > 0:  # the others: as many requests as the trace needs here
                requests = min(requests, max(50, _m.ceil(max(rep["throughput"], w if w == w else 0) * dur * 1.5 / 4)))
            changes = sorted({ev.at_s for ev in trace.events})
            probes = sum(bool(x.get("probe")) for x in (ad.get("controller") or {}).get("decisions_switched", []))
            ok = f"{ad.get('pauses_within_target', 0)}/{ad.get('pauses_measured', 0)}" if pauses else "-"
            xs = w / window.get((path.stem, "static"), _m.nan)
            xo = w / window.get((path.stem, "oracle"), _m.nan)
            orc = got.get((path.stem, "oracle"))
            near = "-" if orc is None or name in ("oracle",) else _fmt_recover(within_oracle(
                changes, ad.get("answered_at_process_s") or [],
                (orc.get("adapt") or {}).get("answered_at_process_s") or [], dur))
            print(f"{path.stem:<12}{name:<10}{w:>10.2f}{rep['throughput']:>8.2f}{rep['latency_s']['p50'] * 1e3:>8.0f}"
                  f"{rep['latency_s']['p99'] * 1e3:>8.0f}{mj:>8.0f}{xs:>9.2f}{xo:>9.2f}"
                  f"{ad.get('switch_count', 0):>9}{probes:>7}"
                  f"{ad.get('switch_count', 0) / len(changes):>8.2f}{ad.get('lost', 0):>6}{ad.get('duplicated', 0):>5}"
                  f"{(max(pauses) * 1e3 if pauses else _m.nan):>13.0f}{ok:>9}{'earlier' if earlier else 'now':>8}  "
                  + " ".join("-" if d is None else f"{d:g}" for d in switch_delays(
                      changes, ad.get("controller") or {})) + f" | {near}", flush=True)
    for stem in dict.fromkeys(k[0] for k in got):  # static's row printed before the oracle's
        if (stem, "static") in window and (stem, "oracle") in window:
            print(f"{stem}: static/oracle {window[(stem, 'static')] / window[(stem, 'oracle')]:.2f}x")
    target = TARGET if any(k[0] == TARGET for k in got) else next(iter(got))[0]
    if not all((target, p) in got for p in ("static", "heuristic", "rl")):
        print(f"testbed: no summary line (trace {target} lacks a static, heuristic or rl report)")
        return
    st = window[(target, "static")]
    lost = sum((got[(target, p)].get("adapt") or {}).get("lost", 0) for p in ("heuristic", "rl"))
    print(f"testbed, trace {target} (throughput while the trace ran):")
    print(f"adapt: heuristic/static throughput {window[(target, 'heuristic')] / st:.2f}x, "
          f"rl/static {window[(target, 'rl')] / st:.2f}x, lost {lost}, "
          f"switches {(got[(target, 'heuristic')].get('adapt') or {}).get('switch_count', 0)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short rl training (for tests): 20 episodes of 60 s")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rl training and of the measurement noise")
    ap.add_argument("--episodes", type=int, default=None, help="rl training episodes of 120 s (default 300)")
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out" / "bench_adapt", help="folder for the plot")
    ap.add_argument("--testbed", action="store_true",
                    help="also run heuristic, rl and static (--adapt off) in `edgeplan emulate --trace` (root)")
    ap.add_argument("--traces", nargs="*", default=None,
                    help="trace names for --testbed, run in this order (default: all shipped)")
    ap.add_argument("--policies", nargs="*", default=["off", "oracle", "heuristic", "rl"],
                    choices=["off", "oracle", "heuristic", "rl"],
                    help="--testbed: the policies to run (off = static); the others' reports are read from an "
                         "earlier run in --out when there")
    ap.add_argument("--host-gflops", type=float, default=100.0, help="--testbed: `edgeplan emulate --host-gflops`")
    args = ap.parse_args(argv)

    from edgeplan.adapt import rl
    from edgeplan.adapt import simulate as sm
    from edgeplan.adapt.policy import SWITCH_S, heuristic
    from edgeplan.graph.load import build
    from edgeplan.planner import family as fm
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import trace as tr

    graph = build("resnet18").graph
    cluster = load_cluster(CLUSTER)
    fam, plans = fm.make_family(graph, cluster, Objective(objective="throughput", batch=4, head=HEAD),
                                fm.default_conditions(cluster, HEAD))
    world = sm.World.from_family(graph, cluster, plans)
    episodes = args.episodes or (20 if args.quick else rl.EPISODES)
    episode_s = 60.0 if args.quick else rl.EPISODE_S
    t0 = time.process_time()
    policy = rl.train(world, rl.family_digest(fam), seed=args.seed, episodes=episodes, episode_s=episode_s)
    train_s = time.process_time() - t0
    print(f"family: {len(plans)} plans of resnet18 on {cluster.name} (throughput, batch 4); static = "
          f"{world.static}; epoch {sm.EPOCH_S:g} s, switch pause {SWITCH_S:g} s, noise {sm.NOISE:g}")
    print(f"rl: {episodes} episodes of {episode_s:g} s, seed {args.seed}: {len(policy.q)} contexts, "
          f"trained in {train_s:.1f} s CPU")

    runs: dict[str, dict] = {}
    rows = []
    for path in sorted(TRACES.glob("*.yaml")):
        trace = tr.load(path, cluster)
        name = path.stem
        runs[name] = {}
        for pol in POLICIES:
            p = {"heuristic": heuristic, "rl": policy}.get(pol, pol)
            run = sm.run(world, trace, p, name=pol, seed=args.seed)
            runs[name][pol] = run
            rows.append((name, sm.Summary.of(run)))
    print(f"\n{'trace':<12}{'policy':<10}{'samples/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'mJ/inf':>8}{'switches':>9}"
          f"{'lost':>6}{'vs best':>8}  recover s (per change)")
    for name, s in rows:
        print(f"{name:<12}{s.policy:<10}{s.throughput:>10.2f}{s.p50_s * 1e3:>8.0f}{s.p99_s * 1e3:>8.0f}"
              f"{s.energy_j * 1e3:>8.0f}{s.switches:>9}{s.lost:>6}{s.vs_best:>8.3f}  {_fmt_recover(s.recover_s)}")
    # generalisation: traces from the training distribution that rl never saw (a seed of their own)
    import numpy as np

    rng = np.random.default_rng(HELD_OUT_SEED)
    held = [sm.random_trace(cluster, rng, 120.0, world.head) for _ in range(3 if args.quick else 20)]
    print(f"\nheld-out random traces ({len(held)} x 120 s, seed {HELD_OUT_SEED}): mean per trace")
    print(f"{'policy':<10}{'samples/s':>10}{'switches':>9}{'changes':>8}{'vs best':>8}")
    for pol in POLICIES:
        p = {"heuristic": heuristic, "rl": policy}.get(pol, pol)
        sums = [sm.Summary.of(sm.run(world, t, p, name=pol, seed=args.seed + k)) for k, t in enumerate(held)]
        print(f"{pol:<10}{np.mean([x.throughput for x in sums]):>10.2f}{np.mean([x.switches for x in sums]):>9.2f}"
              f"{np.mean([len(x.recover_s) for x in sums]):>8.2f}{np.mean([x.vs_best for x in sums]):>8.3f}")
    for p in plot(runs, args.out):
        print(f"wrote {p}")
    target = TARGET if TARGET in runs else next(iter(runs))
    got = {s.policy: s for name, s in rows if name == target}
    st = got["static"].throughput
    print(f"adapt: heuristic/static throughput {got['heuristic'].throughput / st:.2f}x, "
          f"rl/static {got['rl'].throughput / st:.2f}x, lost {got['heuristic'].lost + got['rl'].lost}, "
          f"switches {got['heuristic'].switches}")
    if args.testbed:
        shipped = {p.stem: p for p in sorted(TRACES.glob("*.yaml"))}
        unknown = sorted(set(args.traces or ()) - set(shipped))
        if unknown:
            raise SystemExit(f"bench_adapt --traces: {', '.join(unknown)} not in {TRACES} ({', '.join(shipped)})")
        chosen = [shipped[t] for t in args.traces] if args.traces else list(shipped.values())  # in the order given
        testbed(args, chosen)


if __name__ == "__main__":
    main()
