"""Current cluster conditions from the monitor's measurements (issue 12 item 4, first half).

Input: what the head's ``status()`` holds per worker: ``{"device", "stage", "alive",
"predicted_compute_s", "monitor": Monitor.snapshot()}`` (edgeplan/runtime/monitor.py). Each
``update(status)`` turns the change since the previous status into raw factors:

- per board, slowdown = measured seconds per stage call / predicted seconds per call (from the
  ``compute_seconds`` histogram's sum and count; summed over the board's stages);
- per link a -> b, bandwidth scale = measured throughput / the cluster file's bandwidth. Where the
  receiving worker reports it, the throughput of the large frames that arrived from the peer since the
  previous status (deltas of ``rx_links[peer].rx_timed_bytes_total`` / ``rx_timed_seconds_total``, timed by
  wire.Reader): the only side that sees the link, as a send returns once its bytes are in the socket
  buffer (on the testbed the sender read ~1.2x nominal during a 4x drop). A link once read at its receiver
  is read only there (the two sides' biases differ; mixing them would read as changes); ``WHOLE_STREAK``
  consecutive intervals in which its large frames all arrived whole before the receiver asked
  (``rx_whole_bytes_total`` moved, no timed frame) read nominal: the link outran the receiver (how a
  recovery shows; a single such interval during a drop is a receiver that came late, and reading it as
  nominal made the testbed's estimate flap). A receiver's reading
  is capped at the link's reference (the cluster file's bandwidth before calibration): frames that left a
  shaper's burst allowance or a queue arrive faster than the link carries (the testbed read one pair at
  3.6x nominal), and a link is never taken for faster than nominal. Else the sender's:
  the throughput of the timed sends since the previous status (deltas of ``timed_bytes_total`` and
  ``timed_seconds_total``: a step change shows in full in the first status after it), else the
  monitor's own EWMA of timed sends (``throughput_bytes_per_second``, which lags a step by ~10 sends);
- a board whose workers are all not alive is absent;
- a board the status gives a CPU share for (``status["cpu_share"][device]``, 0..1 of its nominal CPU:
  adapt/share.py, the testbed's cgroup quota) reads slowdown = 1 / share, and its stage call times are not
  used: a quota caps capacity, not speed, so call times read the same hog 4-5x on a plan with a long stage on
  the board and 1.2-1.8x on one with a short stage (share.py's docstring). The share is read every update
  whichever plan runs, so the board's factor never expires (no probe to learn a hog ended), its reference is 1
  (the share is exact, not a model), and the pricer's slowdown of 1/share is the capacity cap (the board's
  busy time per batch / share is its period).

Link factors become an all-links scale when most measured pairs agree (pairs not measured, e.g. of
boards the current plan does not use, are assumed to follow it), plus a term per pair that differs.

Raw factors are divided by a *reference* (their value under nominal conditions: the model's and the
throughput probe's own error; 1 when not calibrated, ``calibrate()`` takes the current smoothed
values) and worked on in log space. A link first measured *after* calibration (one only another layout
uses) has no reading under nominal conditions to take: it is compared with the cluster file's bandwidth
(the nominal the plan was made for) through the probe's bias on the links calibrated (their median
reference), so a link already degraded when first seen reads as degraded. If the median of its first
``confirm`` readings is above that, it becomes its reference: a probe that over-reads a pair (sends that
return once in the socket buffer) is bias, never "faster than nominal".

A change is *committed* only when ``confirm`` consecutive factors
all lie beyond ``threshold`` (a ratio) of the committed value on the same side and agree with each
other within it (``confirm_big`` of them when they all lie beyond ``big``: a 4x drop or a 3x hog is acted
on one status sooner); the committed value is their mean (rounded to 2 significant digits, so the
condition's text is stable). Every commit bumps ``change_id``; the policies switch at most once per
change. An EWMA of each factor is kept for reports.

A link reading is confounded with its boards' CPU: a send is timed from start to last byte, so a starved
sender or receiver makes the link read slow. While a board reads slower than ``threshold``, a link of it
that reads degraded by no more than that slowdown (x ``threshold``) is read with the slowdown divided out
(capped at its reference: ``_confounded``); a link far slower than the board is read as it is. Dropping such a
reading instead (as before) left a committed drop standing while its board was hogged: on the testbed's
alternating trace a bandwidth recovery that came with a hog read "still 0.24x + hog", the policy switched to
the plan for both, then again when the link expired or was re-measured (2 switches for one change).

A factor is *measured* in an update only when its counters moved (stage calls; a link's ``sent_bytes_total``):
a layout the head no longer runs keeps reporting its last figures, which say nothing about now. A committed
factor off nominal that goes unmeasured (the plan moved off that board or link, often *because* it was slow)
would otherwise stay slow forever and the policy would never come back. So after ``stale`` unmeasured updates
it expires to nominal (a change: the policy may return to the plan that uses it, which measures it again with
real requests). If it then re-commits within ``threshold`` of the value it expired from (still slow), its
next expiry waits twice as long (up to ``max_backoff`` x), so a slowdown that persists costs O(log t)
switches; once measured nominal, the wait goes back to ``stale``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from edgeplan.planner.family import ALL, Condition

ALPHA = 0.3  # weight of the newest update in the smoothed log-factor
THRESHOLD = 1.3  # a factor must move by more than this ratio (either way) to count as a change
CONFIRM = 3  # ... for this many consecutive updates
BIG = 2.0  # a factor beyond this ratio of its committed value (a 4x bandwidth drop, a 3x CPU hog) ...
CONFIRM_BIG = 2  # ... commits after this many consecutive agreeing updates (noise does not move 2x twice alike)
PAIR_OUTLIER = 1.3  # a pair whose scale differs from the all-links median by more than this gets its own term
STALE = 10  # updates (5 s at 0.5 s epochs) a committed off-nominal factor may go unmeasured before it expires
MAX_BACKOFF = 64  # the expiry wait doubles per confirmation that the factor is still off, up to this x STALE
WHOLE_STREAK = 4  # statuses in a row (2 s) of frames only arriving whole before a receiver-read link reads nominal


@dataclass(frozen=True)
class Estimate:
    """The committed conditions and how many changes have been committed since start."""

    condition: Condition
    change_id: int
    # factors at nominal only because they expired unmeasured (``slowdown:DEV``, ``link:A/B``) and not measured
    # since: the rl table keeps such contexts apart from measured ones
    expired: tuple[str, ...] = ()
    probe: tuple[str, ...] = ()  # the factors this very change expired (rl decides a probe by pricing)


def _q(x: float) -> float:
    """Two significant digits: 0.25, 3.0, 1.4."""
    return float(f"{x:.2g}")


def _peer_device(peer: str) -> str:
    return peer.split("/", 1)[0]


class Estimator:
    """Stateful smoothing over successive statuses; ``update`` returns the current Estimate."""

    def __init__(self, cluster, *, alpha: float = ALPHA, threshold: float = THRESHOLD, confirm: int = CONFIRM,
                 head: str | None = None, stale: int = STALE, max_backoff: int = MAX_BACKOFF, big: float = BIG,
                 confirm_big: int = CONFIRM_BIG):
        self.cluster = cluster
        self.big, self.confirm_big = big, min(confirm_big, confirm)
        self.stale, self.max_backoff = stale, max_backoff
        self.updates = 0
        self._seen: dict[str, int] = {}  # key -> update it was last measured in
        self._wait: dict[str, int] = {}  # key -> updates unmeasured before it expires (STALE x back-off)
        self._expired: dict[str, float] = {}  # key -> committed log factor it expired from (not re-measured yet)
        self._sent: dict[tuple[str, str], float] = {}  # (worker key, peer) -> sent_bytes_total last seen
        self._timed: dict[tuple[str, str], tuple[float, float]] = {}  # ... -> (timed bytes, timed seconds) last seen
        self._rx: dict[tuple[str, str], tuple[float, float]] = {}  # ... -> (rx timed bytes, rx timed seconds) last seen
        self._whole: dict[tuple[str, str], float] = {}  # ... -> rx_whole_bytes_total last seen
        self._streak: dict[str, int] = {}  # link -> consecutive statuses its frames only arrived whole
        self._rx_keys: set = set()  # links read at their receiver at least once: read only there from then on
        self._whole_at: dict[str, int] = {}  # link -> the update its frames last arrived whole in
        self.expiries = 0
        self._held = 0  # updates a ready commit has waited for a factor still moving
        self.moving: tuple[str, ...] = ()  # factors off their committed value but not steady, as of the last update
        self._just: tuple[str, ...] = ()  # factors the latest change expired
        self.head = head or cluster.head_name
        self.alpha, self.threshold, self.confirm = alpha, threshold, confirm
        self.reference: dict[str, float] = {}
        self._smooth: dict[str, float] = {}  # key -> smoothed log factor
        self._committed: dict[str, float] = {}  # key -> committed log factor
        self._recent: dict[str, list[float]] = {}  # key -> the last ``confirm`` log factors
        self._prev: dict[str, tuple[float, float]] = {}  # worker key -> (compute sum, count)
        self._absent: tuple[str, ...] = ()
        self.change_id = 0
        self._estimate = Estimate(Condition(), 0)
        self.calibrated = False
        self._late: dict[str, int] = {}  # link first measured after calibration -> its readings so far (to confirm)
        self._first: dict[str, list[float]] = {}  # ... and those readings while they are fewer than ``confirm``
        self._wlast: dict[str, int] = {}  # worker key -> the update its stage counters last moved in
        self._wdone: set = set()  # workers whose model error is settled (running at calibration, or since)
        self._wfirst: dict[str, list[float]] = {}  # worker key -> its first measured/predicted ratios (settling)
        self._wref: dict[str, float] = {}  # worker key -> its reference (model error beyond the warm-up's)
        self._share_keys: set = set()  # ``slowdown:DEV`` read from a CPU share (reference 1, never call times)

    def _raw(self, status: dict) -> tuple[dict[str, float], tuple[str, ...]]:
        busy: dict[str, list[float]] = {}
        alive: dict[str, bool] = {}
        links: dict[str, float] = {}
        rx: dict[str, float] = {}  # the same, as receivers measured them
        whole: set = set()  # links whose large frames arrived whole at their receiver (the link kept up)
        shares = {d: float(v) for d, v in (status.get("cpu_share") or {}).items() if v is not None and v > 0}
        for key, w in status.get("workers", {}).items():
            dev = self.head if w["device"] == "head" else w["device"]  # the head's own receive side (flat_status)
            alive[dev] = alive.get(dev, False) or bool(w.get("alive", True))
            mon = w.get("monitor") or {}
            comp = mon.get("compute_seconds") or {}
            s, n = float(comp.get("sum", 0.0)), float(comp.get("count", 0))
            ps, pn = self._prev.get(key, (0.0, 0.0))
            self._prev[key] = (s, n)
            pred = w.get("predicted_compute_s")
            if n > pn and pred and dev not in shares:
                self._wlast[key] = self.updates
                if self._settling(key, dev, (s - ps) / ((n - pn) * float(pred))):
                    continue
                acc = busy.setdefault(dev, [0.0, 0.0])
                acc[0] += (s - ps) / self._wref.get(key, 1.0)
                acc[1] += (n - pn) * float(pred)
            for peer, ln in (mon.get("rx_links") or {}).items():  # frames that arrived from ``peer``: src -> dev
                rb, rs = ln.get("rx_timed_bytes_total"), ln.get("rx_timed_seconds_total")
                if rb is not None and rs is not None:
                    pb, pt = self._rx.get((key, peer), (0.0, 0.0))
                    self._rx[(key, peer)] = (float(rb), float(rs))
                    src = _peer_device(peer)
                    src = self.head if src == "head" else src
                    wb = float(ln.get("rx_whole_bytes_total") or 0.0)
                    if wb > self._whole.get((key, peer), 0.0) and src != dev:
                        whole.add(f"link:{'/'.join(sorted((dev, src)))}")
                    self._whole[(key, peer)] = wb
                    if float(rb) > pb and float(rs) > pt and src != dev:
                        lk = f"link:{'/'.join(sorted((dev, src)))}"
                        rx[lk] = min(self.reference.get(lk, 1.0),
                                     (float(rb) - pb) / (float(rs) - pt) / self.cluster.link(src, dev).bandwidth)
            for peer, ln in (mon.get("links") or {}).items():
                thr = ln.get("throughput_bytes_per_second")
                sent = ln.get("sent_bytes_total")
                tb, ts = ln.get("timed_bytes_total"), ln.get("timed_seconds_total")
                if tb is not None and ts is not None:  # this interval's timed sends: no EWMA lag
                    pb, pt = self._timed.get((key, peer), (0.0, 0.0))
                    self._timed[(key, peer)] = (float(tb), float(ts))
                    thr = (float(tb) - pb) / (float(ts) - pt) if float(tb) > pb and float(ts) > pt else None
                    if thr is None:
                        continue
                elif sent is not None:  # measured only if it sent since the last status
                    grew = float(sent) > self._sent.get((key, peer), 0.0)
                    self._sent[(key, peer)] = float(sent)
                    if not grew:
                        continue
                dst = _peer_device(peer)
                dst = self.head if dst == "head" else dst
                if not thr or dst == dev:
                    continue
                nominal = self.cluster.link(dev, dst).bandwidth
                links[f"link:{'/'.join(sorted((dev, dst)))}"] = float(thr) / nominal
        raw = {f"slowdown:{d}": a / p for d, (a, p) in busy.items() if p > 0 and a > 0}
        for d, share in shares.items():
            raw[f"slowdown:{d}"] = 1.0 / min(1.0, share)
            self._share_keys.add(f"slowdown:{d}")
        self._rx_keys.update(rx)
        raw.update((k, v) for k, v in links.items() if k not in self._rx_keys)
        for k in self._rx_keys:  # an interval with no frame on the link says nothing: its streak stands (a
            if k in rx:  # hogged sender sends a frame every few statuses; resetting there hid its recovery)
                self._streak[k] = 0
            elif k in whole:
                self._streak[k] = self._streak.get(k, 0) + 1
                self._whole_at[k] = self.updates
        if self.calibrated:  # frames that kept coming whole: the link keeps up, nominal (its reference)
            raw.update((k, self.reference[k]) for k in whole
                       if self._streak.get(k, 0) >= WHOLE_STREAK and k in self.reference)
        raw.update(rx)
        absent = tuple(sorted(d for d, ok in alive.items() if not ok and d != self.head))
        return raw, absent

    def update(self, status: dict) -> Estimate:
        raw, absent = self._raw(status)
        changed = absent != self._absent
        self._absent = absent
        self.updates += 1
        lim, big = math.log(self.threshold), math.log(self.big)
        rebuild = False
        ready, moving, just = {}, [], []
        raw.update(self._confounded(raw, lim))
        for key, v in raw.items():
            self._seen[key] = self.updates
            if self.calibrated and (key not in self.reference or self._late.get(key, self.confirm) < self.confirm):
                self._late_reference(key, v)
            x = math.log(v / self.reference.get(key, 1.0))
            # A board is never taken for faster than nominal (its reading relative to calibration is capped at 1, as a
            # link's is at its reference): the family plans for slowdowns, and a faster reading is the calibration's
            # error, not a condition. On the testbed at load 2-9 the npu-board drifted to 0.65x, then read 0.43x on
            # the npu-only plan (the whole model on it), which priced that plan best under every condition: the
            # heuristic stayed on it for 80 s of the alternating trace (its drop and hogs included); a hogged gpu-
            # board read 0.25x once the hog ended (its plan-dependent reference) and sent the runtime to a plan that
            # measured nothing, then a probe back.
            if key.startswith("slowdown:"):
                x = max(x, 0.0)
            old = self._smooth.get(key)
            self._smooth[key] = x if old is None else (1 - self.alpha) * old + self.alpha * x
            if key not in self._committed:  # first measured: what the estimate already assumes for it is no change
                self._committed[key] = self._assumed(key)
            c = self._committed[key]
            recent = self._recent.setdefault(key, [])
            recent.append(x)
            del recent[:-self.confirm]
            fast = recent[-self.confirm_big:]
            if key in self._first and x > c:  # a late link over-reading while its bias settles: not a change
                continue
            if (len(recent) == self.confirm and max(recent) - min(recent) < lim
                    and (min(recent) - c > lim or c - max(recent) > lim)):
                ready[key] = math.log(_q(math.exp(sum(recent) / len(recent))))
            elif (len(fast) == self.confirm_big and max(fast) - min(fast) < lim
                  and (min(fast) - c > big or c - max(fast) > big)):  # a large step: commit sooner
                ready[key] = math.log(_q(math.exp(sum(fast) / len(fast))))
            elif abs(x - c) > lim:
                moving.append(key)  # off its committed value but not steady yet (e.g. a link EWMA still converging)
            elif key in self._expired and len(recent) == self.confirm and max(abs(r) for r in recent) < lim:
                del self._expired[key]  # measured nominal again: back to the short wait
                self._wait.pop(key, None)
                rebuild = True
        # A degraded link whose frames have started arriving whole (a recovery, read nominal only after
        # WHOLE_STREAK statuses) is moving too: on the testbed's alternating trace a hog read at once (its share)
        # with the link's recovery not yet read committed "drop + hog", and the plan for both measures no link,
        # so only an expiry probe found the recovery (2 switches for one change).
        # It may hold a commit for WHOLE_STREAK more updates than other moving factors.
        recovering = [k for k in self._rx_keys if self._streak.get(k, 0) > 0
                      and self.updates - self._whole_at.get(k, -(10 ** 9)) <= WHOLE_STREAK
                      and self._committed.get(k, 0.0) < -lim and k not in ready]
        moving += [k for k in recovering if k not in moving]
        # Factors that change together commit together (one change, one switch): a steady factor waits while
        # another is still moving, for at most ``confirm`` updates.
        self.moving = tuple(moving)
        if ready and moving and self._held < self.confirm + (WHOLE_STREAK if recovering else 0):
            self._held += 1
            ready = {}
        if ready:
            self._held = 0
            changed = True
            for key, new in ready.items():
                self._committed[key] = new
                self._recent[key].clear()
                was = self._expired.pop(key, None)
                if was is not None and abs(new - was) < lim:  # still off after expiring: wait longer next time
                    self._wait[key] = min(self._wait.get(key, self.stale) * 2, self.stale * self.max_backoff)
        for key, c in self._committed.items():
            if abs(c) > 1e-9 and self.updates - self._seen.get(key, self.updates) >= self._wait.get(key, self.stale):
                self._expired[key] = c
                just.append(key)
                self._committed[key] = 0.0
                self._recent.pop(key, None)
                self.expiries += 1
                changed = True
        if changed:
            self.change_id += 1
            self._just = tuple(sorted(just))
        if changed or rebuild:
            self._estimate = self._build()
        return self._estimate

    def _settling(self, key: str, dev: str, q: float) -> bool:
        """A worker that first runs after calibration (its layout was not running then: a switch started it)
        while another worker of its board measured that board within the last ``confirm`` updates: its own
        model error (measured/predicted at the controller's warm-up, from 3 requests) would read as a change of
        the board, and a switch alone must not read as one. Its first ``confirm`` readings are left out (True);
        then its reference is set so that their median reads as the board's committed slowdown. A board no
        other worker measured recently keeps the warm-up's figure (nothing says what it should read)."""
        if not self.calibrated or key in self._wdone:
            return False
        dk = f"slowdown:{dev}"
        first = self._wfirst.get(key)
        if first is None:
            if self._seen.get(dk, -(10 ** 9)) < self.updates - self.confirm:
                self._wdone.add(key)
                return False
            first = self._wfirst[key] = []
        first.append(q)
        if len(first) < self.confirm:
            return True
        del self._wfirst[key]
        self._wdone.add(key)
        self._wref[key] = statistics.median(first) / (self.reference.get(dk, 1.0) * math.exp(
            self._committed.get(dk, 0.0)))
        return False

    def _confounded(self, raw: dict[str, float], lim: float) -> dict[str, float]:
        """Link readings a slow board at either end explains, corrected: a send is timed from its start to its last
        byte, so a CPU-starved sender (its send thread waits for CPU) or receiver (it drains its socket late) makes
        the link read slow too. While a board reads slower than ``threshold``, a link of it that reads degraded by
        no more than that slowdown (x threshold) reads with the slowdown divided out, at most its reference (a
        link far slower than the board is read as it is). Returns ``{link key: corrected raw reading}``."""
        if not self.calibrated:
            return {}
        slow: dict[str, float] = {}
        for key in list(self._committed) + list(raw):
            if key.startswith("slowdown:"):
                d = key.split(":", 1)[1]
                x = math.log(raw[key] / self.reference.get(key, 1.0)) if key in raw else self._committed[key]
                slow[d] = x
        out = {}
        for key, v in raw.items():
            if not key.startswith("link:") or key not in self.reference:
                continue
            s = max(slow.get(d, 0.0) for d in key.split(":", 1)[1].split("/"))
            x = math.log(v / self.reference[key])
            if s > lim and -(s + lim) <= x < -lim:
                out[key] = self.reference[key] * math.exp(min(0.0, x + s))
        return out

    def _late_reference(self, key: str, raw: float) -> None:
        """A factor first measured after calibration. A link's reference is the probe's bias on the links
        calibrated (their median; 1 if none): its readings are compared with the cluster file's bandwidth at
        once. After ``confirm`` readings, if their median is above that, it becomes the reference (the probe
        over-reads this pair: bias, not a faster link); the median, not the max, as a first send into an empty
        socket buffer reads far too fast. A board's reference is 1 (the controller's warm-up scales every module)."""
        if not key.startswith("link:"):
            self.reference[key] = 1.0
            return
        n = self._late.get(key)
        if n is None:
            biases = [r for k, r in self.reference.items() if k.startswith("link:") and k not in self._late]
            self.reference[key] = statistics.median(biases) if biases else 1.0
            n = 0
        self._late[key] = n + 1
        first = self._first.setdefault(key, [])
        first.append(raw)
        if n + 1 == self.confirm:
            del self._first[key]
            med = statistics.median(first)
            if med > self.reference[key]:
                self.reference[key] = med
                self._smooth.pop(key, None)
                self._recent.pop(key, None)

    def _assumed(self, key: str) -> float:
        """The committed log factor of a factor never measured: a link follows the estimate's all-links term
        (as the policies price it), a board is nominal."""
        if not key.startswith("link:"):
            return 0.0
        a, b = key.split(":", 1)[1].split("/")
        return math.log(self._estimate.condition.bandwidth_scale(a, b))

    def calibrate(self, keys=None) -> None:
        """Take the current smoothed factors as nominal (call after a warm-up under known conditions);
        ``keys``: only those. Factors first measured after a full calibration get a reference of their own
        (``_late_reference``: a link is compared with the cluster file's bandwidth, not its first readings)."""
        if keys is None:
            self.calibrated = True
            # the workers running now are the ones calibrated; others settle when they first run (``_settling``)
            self._wdone = {k for k, u in self._wlast.items() if u >= self.updates - self.confirm}
        for key, s in list(self._smooth.items()):
            if keys is not None and key not in keys:
                continue
            if key in self._share_keys:  # a share is exact: nominal is 1 whatever it reads now
                self.reference[key] = 1.0
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
        # pairs unmeasured past their expiry wait follow the all-links term (like pairs never measured)
        pairs = {tuple(k.split(":", 1)[1].split("/")): math.exp(v) for k, v in self._committed.items()
                 if k.startswith("link:")
                 and self.updates - self._seen.get(k, self.updates) < self._wait.get(k, self.stale)}
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
        return Estimate(cond, self.change_id, tuple(sorted(self._expired)), self._just)
