"""Plan families: one plan per distinct layout over a grid of cluster conditions (issue 12, item 1).

A *condition* scales the nominal cluster: link bandwidth (all links or one
pair), a board's compute slowdown (another process hogging its CPU), a board
absent. Its text form parses back (``nominal``, ``bandwidth=0.25``,
``bandwidth:a/b=0.5``, ``slowdown:gpu-board=3``, ``absent:cpu-board``; terms
joined by ``+``). The planner solves each condition on the scaled cluster
(``apply``), identical layouts are kept once, and the family records which
plan serves which condition with that condition's predicted figures, so the
runtime can switch between precompiled plans instead of re-planning.

``scale_costs`` applies a condition to a CostTable directly (exactly what
``build_cost_table(apply(cluster, c))`` gives, for conditions without an absent
board): the decision policies re-price variants with it in well under a
millisecond, without the LayerGraph.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeplan import jsonio
from edgeplan.errors import PlanError

SCHEMA_VERSION = 1
FAMILY_FILE = "family.json"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_TERM = re.compile(rf"^(bandwidth)(?::({_NAME})/({_NAME}))?=(.+)$|^(slowdown):({_NAME})=(.+)$|^(absent):({_NAME})$")
ALL = "*"  # bandwidth scale of every link


@dataclass(frozen=True)
class Condition:
    """Scale factors on the nominal cluster; the empty condition is ``nominal``.

    ``bandwidth``: ((a, b), scale) with (ALL, ALL) for every link, scale > 0 (0.25: 4x slower);
    ``slowdown``: (device, factor) with factor > 0 (3: compute takes 3x as long); ``absent``: devices.
    Identity factors (1) are dropped, and entries are sorted, so equal conditions have equal text.
    """

    bandwidth: tuple[tuple[tuple[str, str], float], ...] = ()
    slowdown: tuple[tuple[str, float], ...] = ()
    absent: tuple[str, ...] = ()

    def __post_init__(self):
        bw = tuple(sorted(((tuple(sorted(p)) if p != (ALL, ALL) else p), float(s))
                          for p, s in self.bandwidth if float(s) != 1.0))
        sl = tuple(sorted((d, float(f)) for d, f in self.slowdown if float(f) != 1.0))
        object.__setattr__(self, "bandwidth", bw)
        object.__setattr__(self, "slowdown", sl)
        object.__setattr__(self, "absent", tuple(sorted(set(self.absent))))

    def __str__(self) -> str:
        terms = []
        for (a, b), s in self.bandwidth:
            terms.append(f"bandwidth={s:g}" if a == ALL else f"bandwidth:{a}/{b}={s:g}")
        terms += [f"slowdown:{d}={f:g}" for d, f in self.slowdown]
        terms += [f"absent:{d}" for d in self.absent]
        return "+".join(terms) or "nominal"

    def bandwidth_scale(self, a: str, b: str) -> float:
        """Scale of the link between ``a`` and ``b`` (all-links and pair factors multiply)."""
        s = 1.0
        for (x, y), f in self.bandwidth:
            if x == ALL or {x, y} == {a, b}:
                s *= f
        return s

    def slowdown_of(self, device: str) -> float:
        return dict(self.slowdown).get(device, 1.0)

    def devices(self) -> set[str]:
        """Every device the condition names."""
        out = {d for d, _ in self.slowdown} | set(self.absent)
        for (a, b), _ in self.bandwidth:
            if a != ALL:
                out |= {a, b}
        return out


NOMINAL = Condition()


def _number(text: str, where: str, field_name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise PlanError(f"{where}: {field_name} {text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise PlanError(f"{where}: {field_name} {text!r} must be a positive number (e.g. 0.25 or 3)")
    return v


def _term(text: str, where: str) -> tuple[str, object, list[str]]:
    """(kind, key, value texts) of one grid/condition term."""
    m = _TERM.match(text.strip())
    if not m:
        raise PlanError(f"{where}: {text.strip()!r} is not one of bandwidth=S, bandwidth:A/B=S, slowdown:DEVICE=F, "
                        "absent:DEVICE")
    if m.group(1):
        key = (m.group(2), m.group(3)) if m.group(2) else (ALL, ALL)
        return "bandwidth", key, m.group(4).split(",")
    if m.group(5):
        return "slowdown", m.group(6), m.group(7).split(",")
    return "absent", m.group(9), []


def parse_condition(text: str, where: str = "condition") -> Condition:
    """Parse a condition's text form (inverse of ``str(Condition)``)."""
    if text.strip() == "nominal":
        return NOMINAL
    bw, sl, ab = [], [], []
    for part in text.split("+"):
        kind, key, values = _term(part, where)
        if len(values) > 1:
            raise PlanError(f"{where}: {part!r} has several values; a condition takes one (a grid takes several)")
        if kind == "bandwidth":
            bw.append((key, _number(values[0], where, "bandwidth scale")))
        elif kind == "slowdown":
            sl.append((key, _number(values[0], where, f"slowdown of {key}")))
        else:
            ab.append(key)
    return Condition(tuple(bw), tuple(sl), tuple(ab))


def check_condition(cond: Condition, cluster, head: str, where: str) -> None:
    """Unknown devices, a missing head or an empty cluster: one line naming ``where`` and the field."""
    names = [d.name for d in cluster.devices]
    for d in sorted(cond.devices()):
        if d not in names:
            raise PlanError(f"{where}: unknown device {d!r} (devices of {cluster.name}: {', '.join(names)})")
    if head in cond.absent:
        raise PlanError(f"{where}: absent:{head} removes the head board, which takes the requests; "
                        "name another board or plan with another --head")
    for (a, b), _ in cond.bandwidth:
        if a == b and a != ALL:
            raise PlanError(f"{where}: bandwidth:{a}/{b} is not a link (both ends are {a})")


def expand_grid(entries: tuple[str, ...] | list[str], cluster=None, head: str | None = None) -> tuple[Condition, ...]:
    """Cartesian product of ``--variants`` entries (``bandwidth=1,0.5``, ``slowdown:b=1,3``, ``absent:b``).

    An ``absent:`` axis takes the values present/absent. Duplicates (after dropping identity factors) are
    removed; nominal comes first, then the order of the product. With ``cluster``, each entry's devices are
    checked against it (errors name the entry).
    """
    axes = []
    for k, entry in enumerate(entries):
        where = f"--variants entry {k + 1} {entry!r}"
        if "+" in entry:
            raise PlanError(f"{where}: one axis per --variants; repeat the flag for another axis")
        kind, key, values = _term(entry, where)
        if kind == "absent":
            axes.append([Condition(), Condition(absent=(key,))])
        elif kind == "bandwidth":
            axes.append([Condition(bandwidth=((key, _number(v, where, "bandwidth scale")),)) for v in values])
        else:
            axes.append([Condition(slowdown=((key, _number(v, where, f"slowdown of {key}")),)) for v in values])
        if cluster is not None:
            for c in axes[-1]:
                check_condition(c, cluster, head or cluster.head_name, where)
    out: list[Condition] = [NOMINAL]
    for combo in itertools.product(*axes):
        c = Condition(tuple(x for c in combo for x in c.bandwidth), tuple(x for c in combo for x in c.slowdown),
                      tuple(x for c in combo for x in c.absent))
        if c not in out:
            out.append(c)
    return tuple(out)


DEFAULT_SLOWDOWN = 3.0
DEFAULT_LINK_SCALE = 0.25


def default_conditions(cluster, head: str) -> tuple[Condition, ...]:
    """Nominal, each board 3x slower, each link (all links, and each explicit pair) 4x slower, each board absent.

    The head is never absent (it takes the requests).
    """
    out = [NOMINAL]
    out += [Condition(slowdown=((d.name, DEFAULT_SLOWDOWN),)) for d in cluster.devices]
    out.append(Condition(bandwidth=(((ALL, ALL), DEFAULT_LINK_SCALE),)))
    out += [Condition(bandwidth=(((ln.a, ln.b), DEFAULT_LINK_SCALE),)) for ln in cluster.links]
    out += [Condition(absent=(d.name,)) for d in cluster.devices if d.name != head and len(cluster.devices) > 1]
    return tuple(dict.fromkeys(out))


def apply(cluster, cond: Condition):
    """The cluster under ``cond`` (pure: a new Cluster; the name and devices' order are kept)."""
    def slow(unit, f):
        return replace(unit, throughput=tuple((c, v / f) for c, v in unit.throughput),
                       mem_bandwidth=unit.mem_bandwidth / f, layer_overhead_s=unit.layer_overhead_s * f,
                       hop_overhead_s=unit.hop_overhead_s * f,
                       hop_byte_s=None if unit.hop_byte_s is None else unit.hop_byte_s * f,  # None: bw / f
                       hop_send_byte_s=None if unit.hop_send_byte_s is None else unit.hop_send_byte_s * f)

    devices = tuple(
        replace(d, units=tuple(slow(u, cond.slowdown_of(d.name)) for u in d.units)) if cond.slowdown_of(d.name) != 1
        else d for d in cluster.devices if d.name not in cond.absent)
    names = {d.name for d in devices}
    all_s = cond.bandwidth_scale("\0", "\1")  # the all-links factor alone
    default = replace(cluster.default_link, bandwidth=cluster.default_link.bandwidth * all_s)
    links = {tuple(sorted((ln.a, ln.b))): ln for ln in cluster.links if ln.a in names and ln.b in names}
    for (a, b), _ in cond.bandwidth:  # a pair without its own link gets one, from the default
        if a != ALL and a in names and b in names and (a, b) not in links:
            links[(a, b)] = replace(cluster.default_link, a=a, b=b)
    scaled = tuple(replace(ln, bandwidth=ln.bandwidth * cond.bandwidth_scale(ln.a, ln.b))
                   for _, ln in sorted(links.items()))
    return replace(cluster, devices=devices, default_link=default, links=scaled)


def scale_costs(costs, cond: Condition):
    """``costs`` (a CostTable) under ``cond``; absent boards' units can run nothing (their layers cost inf)."""
    from edgeplan.profiles.cost import CostTable

    f_unit = np.array([cond.slowdown_of(costs.devices[d]) for d, _, _ in costs.units])
    gone = np.array([costs.devices[d] in cond.absent for d, _, _ in costs.units])
    col = f_unit[:, None]
    fwd, bwd, fixed = costs.fwd_s * col, costs.bwd_s * col, costs.fixed_s * col
    sup = costs.supported & ~gone[:, None]
    if gone.any():
        fwd, bwd, fixed = (np.where(sup, a, np.inf) for a in (fwd, bwd, fixed))
    n = len(costs.devices)
    scale = np.array([[cond.bandwidth_scale(costs.devices[a], costs.devices[b]) for b in range(n)]
                      for a in range(n)])
    return CostTable(**{**{k: getattr(costs, k) for k in costs.__dataclass_fields__},
                        "fwd_s": fwd, "bwd_s": bwd, "fixed_s": fixed, "supported": sup,
                        "bandwidth": costs.bandwidth * scale,
                        "hop_s": None if costs.hop_s is None else costs.hop_s * f_unit,
                        "hop_byte_s": None if costs.hop_byte_s is None else costs.hop_byte_s * f_unit,
                        "hop_send_byte_s": None if costs.hop_send_byte_s is None else costs.hop_send_byte_s * f_unit,
                        "mem_bandwidth": None if costs.mem_bandwidth is None else costs.mem_bandwidth / f_unit})


# --- the family -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One condition and the plan that serves it, with the figures predicted under that condition."""

    condition: str  # text form
    plan: str  # plan file name in the family folder
    throughput: float
    latency_s: float
    energy_j: float


@dataclass(frozen=True)
class Module:
    """One stage module a board may run: built once, shared by every plan that lists it."""

    device: str
    unit: str
    start: int
    stop: int
    samples: int
    plans: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    model: str
    cluster: str
    cluster_sha256: str  # the nominal cluster's
    objective: str
    batch: int
    microbatches: int
    plans: tuple[tuple[str, str], ...]  # (file, text form) per distinct layout
    variants: tuple[Variant, ...]
    modules: tuple[Module, ...]
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["plans"] = [{"file": f, "text": t} for f, t in self.plans]
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "family") -> Family:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise PlanError(f"{source}: schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                            "re-run `edgeplan plan --variants ...`")
        try:
            return cls(**{**d, "plans": tuple((p["file"], p["text"]) for p in d["plans"]),
                          "variants": tuple(Variant(**v) for v in d["variants"]),
                          "modules": tuple(Module(**{**m, "plans": tuple(m["plans"])}) for m in d["modules"])})
        except (KeyError, TypeError) as e:
            raise PlanError(f"{source}: not a valid family file ({e})") from e

    def variant(self, cond: Condition) -> Variant | None:
        text = str(cond)
        return next((v for v in self.variants if v.condition == text), None)


def layout_key(plan) -> tuple:
    """What makes two plans the same layout: stages' layers and replicas' device, unit and samples."""
    return tuple((s.start, s.stop, tuple((r.device, r.unit, r.samples) for r in s.replicas)) for s in plan.stages)


def make_family(graph, cluster, objective, conditions: tuple[Condition, ...], *, solver: str = "dp",
                min_gain: float = 0.05, record=None) -> tuple[Family, dict]:
    """Solve each condition; returns the Family and {plan file: Plan}, one plan per distinct layout.

    A condition no plan fits is an error naming it. ``record(plan, cluster) -> plan`` may add sources.
    Every plan records the nominal cluster's digest (a note names the condition it was made under), so
    `edgeplan compile plans/plan-K.json` builds it for the real boards.
    """
    from edgeplan.planner.api import make_plan
    from edgeplan.planner.textform import to_str

    head = objective.head or cluster.head_name
    for k, c in enumerate(conditions):
        check_condition(c, cluster, head, f"variant {k + 1} {c}")
    objective = replace(objective, head=head)
    files: dict[tuple, str] = {}
    plans: dict[str, object] = {}
    variants = []
    for c in conditions:
        clu = apply(cluster, c)
        try:
            p = make_plan(graph, clu, objective, solver=solver, min_gain=min_gain)
        except PlanError as e:
            raise PlanError(f"variant {c}: {e}") from e
        if record is not None:
            p = record(p, clu)
        if c != NOMINAL:  # the boards are the nominal cluster's: compile and run the plan there
            p = replace(p, cluster_sha256=cluster.digest(), notes=p.notes + (
                f"family variant: layout chosen and figures predicted under condition {c} (scaled cluster sha256 "
                f"{p.cluster_sha256[:12]}); cluster_sha256 is the nominal cluster's, which it compiles and runs on",))
        key = layout_key(p)
        if key not in files:
            files[key] = f"plan-{len(files)}.json"
            plans[files[key]] = p
        variants.append(Variant(condition=str(c), plan=files[key], throughput=p.predicted.throughput,
                                latency_s=p.predicted.latency_s, energy_j=p.predicted.energy_j))
    check_memory(graph, cluster, objective, conditions, variants, plans)
    mods: dict[tuple, list[str]] = {}
    for name, p in plans.items():
        for s in p.stages:
            for r in s.replicas:
                mods.setdefault((r.device, r.unit, s.start, s.stop, r.samples), []).append(name)
    fam = Family(model=graph.name, cluster=cluster.name, cluster_sha256=cluster.digest(),
                 objective=objective.objective, batch=objective.batch, microbatches=objective.microbatches,
                 plans=tuple((f, to_str(p)) for f, p in plans.items()), variants=tuple(variants),
                 modules=tuple(Module(*k, plans=tuple(v)) for k, v in sorted(mods.items())))
    fam = Family.from_json(_rt(fam.to_json()))  # what the caller holds is what family.json holds
    return fam, plans


def resident_bytes(graph, plans: dict) -> dict[str, tuple[float, float]]:
    """Per board: (bytes to hold every module of every plan at once, capacity).

    Loaded modules keep their weights; only the running one needs its workspace, so a board needs the
    sum of its distinct modules' parameters plus the largest (predicted peak - parameters).
    """
    params = [float(layer.param_bytes) for layer in graph.layers]
    seen: dict[str, dict[tuple, tuple[float, float]]] = {}
    cap: dict[str, float] = {}
    for p in plans.values():
        for s in p.stages:
            w = sum(params[s.start:s.stop])
            for r in s.replicas:
                seen.setdefault(r.device, {})[(s.start, s.stop, r.unit, r.samples)] = (w, max(r.memory_bytes - w, 0.0))
                cap[r.device] = float(r.capacity_bytes)
    return {d: (sum(w for w, _ in m.values()) + max(x for _, x in m.values()), cap[d]) for d, m in sorted(seen.items())}


def check_memory(graph, cluster, objective, conditions, variants, plans: dict) -> None:
    """A family whose modules do not fit on a board all at once: which board, by how much, and which
    variants help least (their plan's gain over the nominal plan under their own condition)."""
    from edgeplan.planner.api import layout_of
    from edgeplan.planner.costmodel import evaluate
    from edgeplan.profiles.cost import build_cost_table

    over = [(d, need, cap) for d, (need, cap) in resident_bytes(graph, plans).items() if cap > 0 and need > cap]
    if not over:
        return
    costs = build_cost_table(graph, cluster)
    base = variants[0].plan
    gains = []
    for c, v in zip(conditions, variants, strict=True):
        if v.plan == base:
            continue
        scaled = scale_costs(costs, c)
        mine = evaluate(scaled, layout_of(costs, plans[v.plan]), objective).value(objective)
        ev0 = evaluate(scaled, layout_of(costs, plans[base]), objective)
        nominal = ev0.value(objective) if ev0.feasible and not (set(c.absent) & set(plans[base].devices_used)) \
            else math.inf
        gains.append(((nominal - mine) / mine if math.isfinite(nominal) else math.inf, str(c), v.plan))
    gains.sort()
    mb = float(1 << 20)
    boards = "; ".join(f"{d} needs {need / mb:.1f} MB of {cap / mb:.1f} MB ({(need - cap) / mb:.1f} MB over)"
                       for d, need, cap in over)
    least = ", ".join(f"{c} ({p}, {g * 100:.1f}% better than {base} there)" for g, c, p in gains[:3])
    raise PlanError(f"plan family: the boards cannot load every module at once: {boards}; leave out the least "
                    f"useful variants (a --variants grid without them): {least or 'none (only the nominal plan)'}")


def _rt(d: dict) -> dict:
    import json

    return json.loads(jsonio.dumps(d))


def write_family(folder: Path, family: Family, plans: dict) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = [jsonio.write(folder / name, p.to_json()) for name, p in plans.items()]
    out.append(jsonio.write(folder / FAMILY_FILE, family.to_json()))
    return out


def load_family(folder: Path) -> tuple[Family, dict]:
    from edgeplan.planner.plan import load

    folder = Path(folder)
    path = folder / FAMILY_FILE
    if not path.exists():
        raise PlanError(f"{folder}: no {FAMILY_FILE}; make a family with `edgeplan plan ... --variants ... "
                        f"--out {folder}/`")
    fam = Family.from_json(jsonio.read(path), source=str(path))
    return fam, {f: load(str(folder / f)) for f, _ in fam.plans}


def format_family(fam: Family) -> str:
    """The variant table (condition -> plan, predicted figures) and the stage modules plans share."""
    lines = [f"plan family of {fam.model} on {fam.cluster} ({fam.objective}, batch {fam.batch}): "
             f"{len(fam.variants)} condition(s), {len(fam.plans)} distinct plan(s)", ""]
    w = max([len(v.condition) for v in fam.variants] + [9])
    lines.append(f"{'condition':<{w}}  {'plan':<12} {'samples/s':>10} {'latency ms':>11} {'mJ/sample':>10}")
    for v in fam.variants:
        lines.append(f"{v.condition:<{w}}  {v.plan:<12} {v.throughput:>10.4g} {v.latency_s * 1e3:>11.4g} "
                     f"{v.energy_j * 1e3:>10.4g}")
    lines += ["", "plans:"]
    lines += [f"  {f}: {t}" for f, t in fam.plans]
    shared = [m for m in fam.modules if len(m.plans) > 1]
    lines += ["", f"stage modules: {len(fam.modules)} distinct, {len(shared)} shared by several plans"]
    for m in fam.modules:
        lines.append(f"  {m.device}:{m.unit} layers {m.start}-{m.stop - 1} x{m.samples}: {', '.join(m.plans)}")
    return "\n".join(lines) + "\n"
