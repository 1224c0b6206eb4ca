"""Current cluster conditions from the monitor's measurements (issue 12 item 4, first half).

Input: what the head's ``status()`` holds per worker: ``{"device", "stage", "alive",
"predicted_compute_s", "monitor": Monitor.snapshot()}`` (edgeplan/runtime/monitor.py). Each
``update(status)`` turns the change since the previous status into raw factors:

- per board, slowdown = measured seconds per stage call / predicted seconds per call (from the
  ``compute_seconds`` histogram's sum and count; summed over the board's stages);
- per link a -> b, bandwidth scale = measured send throughput (the monitor's own EWMA of timed
  sends, ``links[peer].throughput_bytes_per_second``) / the cluster file's bandwidth;
- a board whose workers are all not alive is absent.

Link factors become an all-links scale when most measured pairs agree (pairs not measured, e.g. of
boards the current plan does not use, are assumed to follow it), plus a term per pair that differs.

Raw factors are divided by a *reference* (their value under nominal conditions: the model's and the
throughput probe's own error; 1 when not calibrated, ``calibrate()`` takes the current smoothed
values) and worked on in log space. A change is *committed* only when ``confirm`` consecutive factors
all lie beyond ``threshold`` (a ratio) of the committed value on the same side and agree with each
other within it; the committed value is their mean (rounded to 2 significant digits, so the
condition's text is stable). Every commit bumps ``change_id``; the policies switch at most once per
change. An EWMA of each factor is kept for reports.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from edgeplan.planner.family import ALL, Condition

ALPHA = 0.3  # weight of the newest update in the smoothed log-factor
THRESHOLD = 1.3  # a factor must move by more than this ratio (either way) to count as a change
CONFIRM = 3  # ... for this many consecutive updates
PAIR_OUTLIER = 1.3  # a pair whose scale differs from the all-links median by more than this gets its own term


@dataclass(frozen=True)
class Estimate:
    """The committed conditions and how many changes have been committed since start."""

    condition: Condition
    change_id: int


def _q(x: float) -> float:
    """Two significant digits: 0.25, 3.0, 1.4."""
    return float(f"{x:.2g}")


def _peer_device(peer: str) -> str:
    return peer.split("/", 1)[0]


class Estimator:
    """Stateful smoothing over successive statuses; ``update`` returns the current Estimate."""

    def __init__(self, cluster, *, alpha: float = ALPHA, threshold: float = THRESHOLD, confirm: int = CONFIRM,
                 head: str | None = None):
        self.cluster = cluster
        self.head = head or cluster.devices[0].name
        self.alpha, self.threshold, self.confirm = alpha, threshold, confirm
        self.reference: dict[str, float] = {}
        self._smooth: dict[str, float] = {}  # key -> smoothed log factor
        self._committed: dict[str, float] = {}  # key -> committed log factor
        self._recent: dict[str, list[float]] = {}  # key -> the last ``confirm`` log factors
        self._prev: dict[str, tuple[float, float]] = {}  # worker key -> (compute sum, count)
        self._absent: tuple[str, ...] = ()
        self.change_id = 0
        self._estimate = Estimate(Condition(), 0)

    def _raw(self, status: dict) -> tuple[dict[str, float], tuple[str, ...]]:
        busy: dict[str, list[float]] = {}
        alive: dict[str, bool] = {}
        links: dict[str, float] = {}
        for key, w in status.get("workers", {}).items():
            dev = w["device"]
            alive[dev] = alive.get(dev, False) or bool(w.get("alive", True))
            mon = w.get("monitor") or {}
            comp = mon.get("compute_seconds") or {}
            s, n = float(comp.get("sum", 0.0)), float(comp.get("count", 0))
            ps, pn = self._prev.get(key, (0.0, 0.0))
            self._prev[key] = (s, n)
            pred = w.get("predicted_compute_s")
            if n > pn and pred:
                acc = busy.setdefault(dev, [0.0, 0.0])
                acc[0] += s - ps
                acc[1] += (n - pn) * float(pred)
            for peer, ln in (mon.get("links") or {}).items():
                thr = ln.get("throughput_bytes_per_second")
                dst = _peer_device(peer)
                dst = self.head if dst == "head" else dst
                if not thr or dst == dev:
                    continue
                nominal = self.cluster.link(dev, dst).bandwidth
                links[f"link:{'/'.join(sorted((dev, dst)))}"] = float(thr) / nominal
        raw = {f"slowdown:{d}": a / p for d, (a, p) in busy.items() if p > 0 and a > 0}
        raw.update(links)
        absent = tuple(sorted(d for d, ok in alive.items() if not ok and d != self.head))
        return raw, absent

    def update(self, status: dict) -> Estimate:
        raw, absent = self._raw(status)
        changed = absent != self._absent
        self._absent = absent
        for key, v in raw.items():
            x = math.log(v / self.reference.get(key, 1.0))
            old = self._smooth.get(key)
            self._smooth[key] = x if old is None else (1 - self.alpha) * old + self.alpha * x
            c = self._committed.setdefault(key, 0.0)
            recent = self._recent.setdefault(key, [])
            recent.append(x)
            del recent[:-self.confirm]
            lim = math.log(self.threshold)
            if (len(recent) == self.confirm and max(recent) - min(recent) < lim
                    and (min(recent) - c > lim or c - max(recent) > lim)):
                self._committed[key] = math.log(_q(math.exp(sum(recent) / len(recent))))
                recent.clear()
                changed = True
        if changed:
            self.change_id += 1
            self._estimate = self._build()
        return self._estimate

    def calibrate(self, keys=None) -> None:
        """Take the current smoothed factors as nominal (call after a warm-up under known conditions);
        ``keys``: only those (a factor first measured later, e.g. a link only another layout uses)."""
        for key, s in list(self._smooth.items()):
            if keys is not None and key not in keys:
                continue
            self.reference[key] = self.reference.get(key, 1.0) * math.exp(s)
            self._smooth[key] = 0.0
            if key in self._committed:
                self._committed[key] = 0.0
            self._recent.pop(key, None)
        self._estimate = self._build()

    def estimate(self) -> Estimate:
        """The latest committed estimate (rebuilt only when a change is committed: updates stay cheap)."""
        return self._estimate

    def smoothed(self) -> dict[str, float]:
        """The EWMA of every factor (relative to the reference), for reports: ``slowdown:DEV``, ``link:A/B``."""
        return {k: math.exp(v) for k, v in sorted(self._smooth.items())}

    def _build(self) -> Estimate:
        slow = tuple((k.split(":", 1)[1], _q(math.exp(v))) for k, v in sorted(self._committed.items())
                     if k.startswith("slowdown:"))
        pairs = {tuple(k.split(":", 1)[1].split("/")): math.exp(v) for k, v in self._committed.items()
                 if k.startswith("link:")}
        bw: list = []
        if pairs:  # an all-links term when most pairs agree (unmeasured pairs follow it), else pair terms only
            med = statistics.median(pairs.values())
            agree = sum(max(s / med, med / s) <= PAIR_OUTLIER for s in pairs.values())
            base = med if 2 * agree > len(pairs) else 1.0
            bw.append(((ALL, ALL), _q(base)))
            for p, s in sorted(pairs.items()):
                if max(s / base, base / s) > PAIR_OUTLIER:
                    bw.append((p, _q(s / base)))
        cond = Condition(bandwidth=tuple(bw), slowdown=slow, absent=self._absent)
        return Estimate(cond, self.change_id)
