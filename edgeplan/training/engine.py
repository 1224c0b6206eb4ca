"""One training rank: a replica of one pipeline stage, driven by torch.distributed (gloo).

Per iteration the rank runs its schedule's actions (GPipe or 1F1B) over the
micro-batches. A forward receives its samples' activations from the upstream
replicas whose ranges intersect its own (stage 0 reads them from the data
set), runs the stage and sends each downstream replica its intersection; a
backward receives the output gradients the same way in reverse and sends input
gradients upstream. The last stage's loss is the sum of per-sample losses over
the *global* batch size, so after an all-reduce (sum) of the replicas'
gradients inside a stage group every replica holds exactly the gradient of
single-process training on the global batch, whatever the shares.

Synchronisation modes: ``sync`` (all-reduce every iteration, the default) and
``local-sgd`` (each replica steps on the mean gradient of its own samples; the
replicas' weights are averaged, weighted by share, every ``sync_every``
iterations and at every epoch end).

BatchNorm: by default a replica normalises with the statistics of its own
samples, so a model with BatchNorm in training mode does not match
single-process training exactly (running statistics are averaged at epoch
ends). With ``sync_bn`` (``--sync-bn``) every BatchNorm of a replicated stage
all-reduces its batch statistics over the stage's replica group
(``stages.sync_batchnorm``), which matches single-process training on the
micro-batch (tests/training/test_syncbn.py).

What the run is told comes from ``config`` (TrainConfig, Job); the epoch's numbers are
summed and printed by ``metrics``; ``faults`` injects the test faults.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from edgeplan import jsonio
from edgeplan.errors import EdgeplanError, RuntimeFault
from edgeplan.planner.plan import Plan
from edgeplan.training import checkpoint, data, faults, metrics, routing
from edgeplan.training.comm import Comm, Watchdog, short_error, startup_barrier
from edgeplan.training.config import Job
from edgeplan.training.routing import RankInfo


class Engine:
    def __init__(self, job: Job, rank: int):
        self.job, self.cfg = job, job.config
        self.plan = Plan.from_json(job.plan)
        self.ranks = routing.rank_table(self.plan)
        if not 0 <= rank < len(self.ranks):
            raise EdgeplanError(f"rank {rank} is not in the plan's {len(self.ranks)} ranks")
        self.me = self.ranks[rank]
        self.S = len(self.plan.stages)
        self.M = self.plan.microbatches
        self.B = self.plan.batch
        self.m = self.B // self.M
        self.last = self.me.stage == self.S - 1
        self.up = routing.stage_ranks(self.ranks, self.me.stage - 1) if self.me.stage > 0 else ()
        self.down = routing.stage_ranks(self.ranks, self.me.stage + 1) if not self.last else ()
        self.group_members = routing.stage_ranks(self.ranks, self.me.stage)
        self.schedule = routing.schedule(self.cfg.schedule or self.plan.schedule, self.S, self.me.stage, self.M)
        self.run_dir = Path(job.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = torch.device("cuda") if (self.me.target == "cuda" and torch.cuda.is_available()) \
            else torch.device("cpu")

    # --- setup --------------------------------------------------------------------------------

    def _expire(self, message: str) -> None:
        self._write_error(message)
        print(f"edgeplan: error: {message}", file=sys.stderr, flush=True)
        os._exit(3)

    def _write_error(self, message: str) -> None:
        path = self.run_dir / "errors" / f"rank-{self.me.rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message + "\n")

    def setup(self) -> None:
        """Join the store, do the local start-up work, wait for every rank's, then form the process group.

        Building the stage module and loading the data are local and can take
        minutes on a slow board, so they happen before any collective: the
        watchdog counts CPU time there, and ``startup_barrier`` makes the
        other ranks wait for as long as this one keeps progressing.
        """
        self.watchdog = Watchdog(self.me, self.cfg.timeout_s + 10.0, self._expire).start()
        timeout = datetime.timedelta(seconds=self.cfg.timeout_s)
        _pick_gloo_interface(dict(self.job.addresses).get(self.me.device), self.job.local)
        self.watchdog.beat(f"joining the run at {self.job.master_addr}:{self.job.master_port}")
        try:
            store = dist.TCPStore(self.job.master_addr, self.job.master_port, len(self.ranks),
                                  is_master=self.me.rank == 0, timeout=timeout, wait_for_workers=False)
        except (RuntimeError, ValueError) as e:
            raise self._join_fault(e) from e
        lock = threading.Lock()

        def publish(doing: str, cpu: float) -> None:
            with lock:
                try:
                    store.set(f"startup/beat/{self.me.rank}", f"{cpu:.2f}|{doing}")
                except RuntimeError:  # the master went away: the barrier or the join reports it
                    pass

        self.watchdog.on_progress = publish
        self.watchdog.local("building the stage module")
        from edgeplan.training import stages

        faults.slow_start(self.me.rank)
        built = stages.build(self.job.model, self.job.input_shape, self.plan, self.job.provider)
        module, self.n_inputs = self._stage_module(built)
        self.module = module.to(self.device).train()
        self.keys = stages.key_map(self.module, built.full)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay)
        if self.me.stage == 0 and self.n_inputs != 1:
            raise EdgeplanError(f"{self.me.label}: the model takes {self.n_inputs} inputs; training feeds one "
                                "(images) — wrap the model so forward(x) builds the others")
        self.watchdog.local("loading the data set")
        own = self._own_data(built)  # training across sources: a branch reads its own board's data
        if own is not None:
            self.dataset = own
        elif self.job.data_cache:
            self.dataset = data.load_cached(self.job.data_cache)
        else:
            self.dataset = data.load(self.cfg.dataset, built.input_shape, self.cfg.seed, self.cfg.samples)
            if self.me.rank == 0:
                print(f"data: {self.dataset.description}", flush=True)
        with lock:
            self.watchdog.on_progress = None
        self.watchdog.beat("waiting for the other boards to finish start-up")
        try:
            startup_barrier(store, self.me, self.ranks, self.cfg.timeout_s, self.watchdog)
            self.watchdog.beat(f"joining the process group at {self.job.master_addr}:{self.job.master_port}")
            dist.init_process_group("gloo", store=store, rank=self.me.rank, world_size=len(self.ranks),
                                    timeout=timeout)
            # every rank creates every stage group, in the same order (torch.distributed requires it)
            self.groups = [dist.new_group([r.rank for r in routing.stage_ranks(self.ranks, s)], timeout=timeout)
                           for s in range(self.S)]
        except (RuntimeError, ValueError) as e:
            raise self._join_fault(e) from e
        self.group = self.groups[self.me.stage]
        self.comm = Comm(self.me, self.ranks, self.cfg.timeout_s, self.watchdog)
        if self.cfg.sync_bn and len(self.group_members) > 1:
            synced = stages.sync_batchnorm(self.module, self.group, self.me.label)
            if synced and self.me.replica == 0:
                print(f"stage {self.me.stage}: {synced} BatchNorm layer(s) share batch statistics across "
                      f"{len(self.group_members)} replicas (--sync-bn)", flush=True)
        self._agree_on_initial_weights()
        self.probe = metrics.ResourceProbe(self.me.device, self.me.stage, self.me.unit)
        self._joined()
        self.start_epoch = self._resume() if self.cfg.resume else 0

    # Hooks a subclass (training.sources.SourceEngine: parallel input branches) overrides.

    def _stage_module(self, built) -> tuple[torch.nn.Module, int]:
        """This rank's module and how many tensors it takes."""
        return built.stages[self.me.stage], built.n_inputs[self.me.stage]

    def _own_data(self, built) -> data.Dataset | None:
        """A data set of this rank's own (None: the run's data set, the same on every rank)."""
        return None

    def _joined(self) -> None:
        """Called once every rank is in the process group, before a resume."""

    def _begin_epoch(self, epoch: int) -> None:
        """Called on every rank at the start of each epoch."""

    def _join_fault(self, e: BaseException) -> RuntimeFault:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RuntimeFault(f"{self.me.label}: could not join the training run at {self.job.master_addr}:"
                            f"{self.job.master_port} within {self.cfg.timeout_s:.0f} s: {first}")

    def _agree_on_initial_weights(self) -> None:
        """Replica 0's weights everywhere in the group (one broadcast), whatever each board's RNG did."""
        tensors = self._state_tensors()
        if len(self.group_members) == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1).float().cpu() for t in tensors])
        self.comm.broadcast(flat, self.group_members[0].rank, self.group, self.group_members,
                            "agreeing on initial weights")
        off = 0
        for t in tensors:
            t.copy_(flat[off:off + t.numel()].view_as(t).to(t.dtype))
            off += t.numel()

    def _state_tensors(self) -> list[torch.Tensor]:
        """Float weights and buffers, detached but sharing storage (safe to overwrite in place)."""
        return [t for t in self.module.state_dict().values() if t.dtype.is_floating_point]

    def _resume(self) -> int:
        held = checkpoint.epochs_held(self.ckpt_dir, self.me)
        agreed = torch.tensor([held[-1] if held else -1], dtype=torch.int64)
        self.comm.all_reduce(agreed, None, self.ranks, "agreeing on the checkpoint to resume from",
                             op=dist.ReduceOp.MIN)
        epoch = int(agreed.item())
        if epoch < 0:
            return 0
        if epoch not in held:
            raise RuntimeFault(f"{self.me.label}: no checkpoint for epoch {epoch} in {self.ckpt_dir}; "
                               "every rank must hold the epoch it resumes from")
        state = checkpoint.load(self.ckpt_dir, epoch, self.me)
        inverse = {v: k for k, v in self.keys.items()}
        self.module.load_state_dict({inverse[k]: v for k, v in state["state"].items()}, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.me.rank == 0:
            print(f"resumed from checkpoint of epoch {epoch + 1} in {self.ckpt_dir}", flush=True)
        return epoch + 1

    # --- routing ------------------------------------------------------------------------------

    def _range(self, r: RankInfo, size: int) -> tuple[int, int]:
        return min(r.lo, size), min(r.hi, size)

    def _overlaps(self, peers: tuple[RankInfo, ...], size: int) -> list[tuple[RankInfo, int, int]]:
        lo, hi = self._range(self.me, size)
        out = []
        for p in peers:
            plo, phi = self._range(p, size)
            a, b = max(lo, plo), min(hi, phi)
            if b > a:
                out.append((p, a, b))
        return out

    def _gather(self, peers, kind: str, k: int, size: int) -> list[torch.Tensor]:
        parts = [self.comm.recv(p, kind, k) for p, _, _ in self._overlaps(peers, size)]
        if not parts:
            return []
        return [torch.cat([part[i] for part in parts]).to(self.device) for i in range(len(parts[0]))]

    def _scatter(self, tensors: list[torch.Tensor], peers, kind: str, k: int, size: int) -> None:
        lo, _ = self._range(self.me, size)
        for p, a, b in self._overlaps(peers, size):
            self.comm.send([t[a - lo:b - lo] for t in tensors], p, kind, k)

    # --- one iteration ------------------------------------------------------------------------

    def _inputs(self, x: np.ndarray, kind: str, k: int, size: int) -> list[torch.Tensor]:
        if self.me.stage == 0:
            return [torch.from_numpy(x).to(self.device)]
        ins = self._gather(self.up, kind, k, size)
        if kind == "F":
            for t in ins:
                if t.dtype.is_floating_point:
                    t.requires_grad_(True)
        return ins

    @staticmethod
    def _run_inputs(ins: list[torch.Tensor]) -> list[torch.Tensor]:
        """Non-leaf copies of received leaves, so a stage that starts with an in-place op (ReLU) may run."""
        return [t.clone() if t.requires_grad else t for t in ins]

    def _call_overhead(self, c0: float, w0: float, f0: float, u0: float, g0: float,
                       ep: metrics.EpochCounters) -> None:
        """A stage call's seconds beyond its module: wall time since ``c0`` less the receives' waits since
        ``w0`` and the module time added since ``f0`` (the sum of forward and backward seconds); and its CPU
        seconds beyond the module's (this thread's since ``u0``, less the module CPU added since ``g0``)."""
        ep.call_s += (time.perf_counter() - c0 - (self.comm.recv_wait_s - w0)
                      - (ep.forward_s + ep.backward_s - f0))
        ep.call_cpu_s += time.thread_time() - u0 - (ep.forward_cpu_s + ep.backward_cpu_s - g0)

    def _marks(self, ep: metrics.EpochCounters) -> tuple[float, float, float, float, float]:
        return (time.perf_counter(), self.comm.recv_wait_s, ep.forward_s + ep.backward_s, time.thread_time(),
                ep.forward_cpu_s + ep.backward_cpu_s)

    def _forward(self, k: int, idx: np.ndarray, stash: dict, ep: metrics.EpochCounters) -> None:
        marks = self._marks(ep)
        lo, hi = self._range(self.me, self.m)
        ins = self._inputs(self.dataset.x_train[idx] if self.me.stage == 0 else None, "F", k, self.m)
        if hi == lo:
            return
        t0, u0 = time.perf_counter(), time.thread_time()
        out = _as_tuple(self.module(*self._run_inputs(ins)))
        if self.last:
            y = torch.from_numpy(self.dataset.y_train[idx]).to(self.device)
            loss_sum = F.cross_entropy(out[0], y, reduction="sum")
            ep.loss_sum += float(loss_sum.detach())
            ep.correct += int((out[0].detach().argmax(1) == y).sum())
            ep.count += len(y)
            stash[k] = (ins, loss_sum / self.B)
            ep.busy_s += time.perf_counter() - t0
            ep.forward_s += time.perf_counter() - t0
            ep.forward_cpu_s += time.thread_time() - u0
        else:
            ep.busy_s += time.perf_counter() - t0
            ep.forward_s += time.perf_counter() - t0
            ep.forward_cpu_s += time.thread_time() - u0
            stash[k] = (ins, out)
            self._scatter(list(out), self.down, "F", k, self.m)
        self._call_overhead(*marks, ep)

    def _backward(self, k: int, stash: dict, ep: metrics.EpochCounters) -> None:
        marks = self._marks(ep)
        lo, hi = self._range(self.me, self.m)
        if hi == lo:
            return
        ins, out = stash.pop(k)
        if self.last:
            t0, u0 = time.perf_counter(), time.thread_time()
            out.backward()
        else:
            grads = self._gather(self.down, "B", k, self.m)
            floats = [o for o in out if o.dtype.is_floating_point]
            if len(grads) != len(floats):
                raise RuntimeFault(f"{self.me.label}: got {len(grads)} gradients for {len(floats)} outputs "
                                   f"of micro-batch {k}; the stages disagree on the cut (recompile)")
            pairs = [(o, g) for o, g in zip(floats, grads, strict=True) if o.requires_grad]
            t0, u0 = time.perf_counter(), time.thread_time()
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        ep.busy_s += time.perf_counter() - t0
        ep.backward_s += time.perf_counter() - t0
        ep.backward_cpu_s += time.thread_time() - u0
        ep.microbatches += 1
        if self.me.stage > 0:
            gin = [t.grad if t.grad is not None else torch.zeros_like(t)
                   for t in ins if t.dtype.is_floating_point]
            self._scatter(gin, self.up, "B", k, self.m)
        self._call_overhead(*marks, ep)

    def _iteration(self, order: np.ndarray, it: int, ep: metrics.EpochCounters) -> None:
        stash: dict = {}
        lo, hi = self._range(self.me, self.m)
        for act in self.schedule:
            k = act.microbatch
            if act.kind == "F":
                idx = data.microbatch_indices(order, it, self.B, self.M, k, lo, hi)
                self._forward(k, idx, stash, ep)
            else:
                self._backward(k, stash, ep)
        self.comm.flush()
        t0 = time.perf_counter()
        if self.cfg.sync == "sync":
            if len(self.group_members) > 1:
                self._all_reduce_grads()
                ep.allreduce_s += time.perf_counter() - t0
            self.optimizer.step()
        else:
            own = (hi - lo) * self.M
            if own:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(self.B / own)  # mean over this replica's own samples
                self.optimizer.step()
            if (it + 1) % self.cfg.sync_every == 0:
                self._average(params_only=True)
        self.optimizer.zero_grad(set_to_none=False)
        ep.busy_s += time.perf_counter() - t0
        ep.step_s += time.perf_counter() - t0

    def _all_reduce_grads(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads]).cpu()
        self.comm.all_reduce(flat, self.group, self.group_members, "all-reducing gradients")
        off = 0
        for p, g in zip(self.params, grads, strict=True):
            n = g.numel()
            p.grad = flat[off:off + n].view_as(p).to(p.device)
            off += n

    def _average(self, params_only: bool) -> None:
        """Share-weighted average of weights (and float buffers) over the stage group."""
        if len(self.group_members) == 1:
            return
        tensors = [p.detach() for p in self.params] if params_only else self._state_tensors()
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors]).cpu() * self.me.share
        self.comm.all_reduce(flat, self.group, self.group_members, "averaging weights")
        off = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[off:off + n].view_as(t).to(t.dtype))
            off += n

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, int, int]:
        self.module.eval()
        x, y = self.dataset.x_test, self.dataset.y_test
        loss_sum, correct, count = 0.0, 0, 0
        chunks = math.ceil(len(x) / self.m)
        for c in range(chunks):
            size = min(self.m, len(x) - c * self.m)
            lo, hi = self._range(self.me, size)
            idx = np.arange(c * self.m + lo, c * self.m + hi)
            ins = self._inputs(x[idx] if self.me.stage == 0 else None, "E", c, size)
            if hi == lo:
                continue
            out = _as_tuple(self.module(*ins))
            if self.last:
                yt = torch.from_numpy(y[idx]).to(self.device)
                loss_sum += float(F.cross_entropy(out[0], yt, reduction="sum"))
                correct += int((out[0].argmax(1) == yt).sum())
                count += len(idx)
            else:
                self._scatter(list(out), self.down, "E", c, size)
        self.comm.flush()
        self.module.train()
        return loss_sum, correct, count

    # --- epochs -------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.setup()
            self._train()
        except EdgeplanError as e:
            self._write_error(str(e))
            raise
        except Exception as e:  # a bug or a torch error: still name the board and stage
            self._write_error(f"{self.me.label}: {type(e).__name__}: {e}")
            raise
        finally:
            if hasattr(self, "watchdog"):
                self.watchdog.stop()

    def _train(self) -> None:
        n = len(self.dataset.x_train)
        iters = data.iterations(n, self.B)
        if self.cfg.max_iters:
            iters = min(iters, self.cfg.max_iters)
        fault = faults.fault_point()
        history = []
        metrics_path = self.run_dir / "metrics.json"
        if self.me.rank == 0 and self.cfg.resume and metrics_path.exists():
            history = [e for e in jsonio.read(metrics_path).get("epochs", []) if e["epoch"] <= self.start_epoch]
        for epoch in range(self.start_epoch, self.cfg.epochs):
            self._begin_epoch(epoch)
            order = data.epoch_order(n, self.cfg.seed, epoch)
            ep = metrics.EpochCounters()
            self.probe.start()
            t_epoch = time.perf_counter()
            p2p0 = (self.comm.transfer_s, self.comm.transfer_bytes, self.comm.transfers)
            for it in range(iters):
                if fault and fault.at(self.me.rank, epoch, it):
                    fault.fire(self.watchdog)
                t0 = time.perf_counter()
                self.watchdog.beat(f"iteration {it} of epoch {epoch + 1}")
                self._iteration(order, it, ep)
                ep.iter_times.append(time.perf_counter() - t0)
            train_s = time.perf_counter() - t_epoch
            ep.p2p = [self.comm.transfer_s - p2p0[0], float(self.comm.transfer_bytes - p2p0[1]),
                      float(self.comm.transfers - p2p0[2])]  # before the evaluation's receives
            ep.resources = self.probe.stop()
            self._average(params_only=False)  # local-sgd weights; BatchNorm running statistics
            test = self._evaluate() if self.cfg.evaluate else (0.0, 0, 0)
            optimizer_state = self.optimizer.state_dict()
            checkpoint.save(self.ckpt_dir, epoch, self.me,
                            {self.keys[k]: v for k, v in self.module.state_dict().items()}, optimizer_state,
                            {"config": asdict(self.cfg)})
            row = self._report(epoch, iters, ep, train_s, test)
            if self.me.rank == 0:
                history.append(row)
                jsonio.write(metrics_path, {"epochs": history, "plan_iter_s": self.plan.predicted.iter_s,
                                            "ranks": len(self.ranks), "sync": self.cfg.sync,
                                            "schedule": self.cfg.schedule or self.plan.schedule})
                print(metrics.format_epoch(row), flush=True)
        self.watchdog.beat("finishing")
        dist.barrier(group=None, async_op=True).wait(timeout=datetime.timedelta(seconds=self.cfg.timeout_s))
        dist.destroy_process_group()

    def _report(self, epoch: int, iters: int, ep: metrics.EpochCounters, train_s: float, test) -> dict:
        """Gather every rank's counters on all ranks (one all-gather) and summarise on rank 0."""
        mine = torch.tensor(ep.row(test, train_s), dtype=torch.float64)
        rows = [torch.zeros_like(mine) for _ in self.ranks]
        self.watchdog.beat(f"gathering the metrics of epoch {epoch + 1}")
        try:
            dist.all_gather(rows, mine, async_op=True).wait(timeout=datetime.timedelta(seconds=self.cfg.timeout_s))
        except RuntimeError as e:
            raise RuntimeFault(f"{self.me.label}: lost contact with the other ranks while gathering the "
                               f"metrics of epoch {epoch + 1}: {short_error(e)}") from e
        return metrics.epoch_row(torch.stack(rows).numpy(), epoch, iters, self.B, self.cfg.evaluate, self.job,
                                 self.ranks, self.plan.predicted, stages=self.plan.stages)


def _pick_gloo_interface(address: str | None, local: bool) -> None:
    """Make gloo advertise the board's own address (its hostname may resolve to 127.0.0.1, e.g. in a netns)."""
    if local or not address or "GLOO_SOCKET_IFNAME" in os.environ:
        return
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            os.environ["GLOO_SOCKET_IFNAME"] = name
            return


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
