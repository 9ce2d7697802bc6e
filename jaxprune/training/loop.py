"""The run driver: epochs, checkpoints, resume, progress, and vmapped groups of runs.

`train_and_evaluate(cfg, workdir)` trains one run; `train_runs` trains several
at once. Every epoch is checkpointed, so rerunning the same call resumes from
the last committed epoch and retraces the uninterrupted run exactly (on a CPU
bit for bit; see README on GPUs).

The device never waits for the host between epochs: epoch e+1 is dispatched
before epoch e's metrics are read, its checkpoint written and its rows
logged (rows only once the checkpoint has committed). Since an epoch
consumes (donates) its input state, epoch e's state
is first copied on the device (a few MB, queued behind the epoch) for the
checkpoint. Rows and checkpoints are still written in epoch order, one epoch
behind the device.

One run (`RunSpec`, `RunResult`, its directory, checkpoints and resume) is in
`jaxprune.training.run`, whose names are served here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.training import checkpoint, devices, train
from jaxprune.training import config as config_lib
from jaxprune.training.run import RunResult, RunSpec, _Run, diverged, stopped_by_divergence  # noqa: F401  (served here)
from jaxprune.data import sources as data
from jaxprune.runtime import hosts, interrupt
from jaxprune.models import cost as model_cost, kernels


@dataclasses.dataclass
class _Flight:
    """An epoch dispatched to the device and not yet recorded."""

    members: tuple[int, ...]  # indices of the runs it trains
    epoch: int
    snapshots: list[train.TrainState]  # each member's final state, safe from donation
    metrics: dict[str, jax.Array]
    trace: dict[str, float]  # host times (time.perf_counter) of dispatch start and end, and of results ready
    watcher: threading.Thread  # sets trace['ready'] the moment the epoch's results are ready


@functools.partial(jax.jit, static_argnums=1)
def _stack(states, mesh):
    """The runs' states stacked on a leading run axis, split over the mesh's runs dimension."""
    return jax.lax.with_sharding_constraint(jax.tree.map(lambda *xs: jnp.stack(xs), *states), devices.run_split(mesh))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _snapshots(state, n: int | None, mesh):
    """Copies of a state (n=None) or of the first n runs of a stacked one, in one dispatch.

    Queued before the next epoch consumes the state; slicing later would
    queue behind that epoch, and saving the slices would wait for it. Each
    copy is replicated over the mesh, as a single run's state is, so it is
    saved and restored the same way whichever devices trained it.
    """
    copies = [jax.tree.map(jnp.copy, state)] if n is None else [jax.tree.map(lambda x: x[i], state) for i in range(n)]
    return jax.lax.with_sharding_constraint(copies, devices.replicated(mesh))


class _Group:
    """Runs trained together: their data on the device, their compiled functions, and
    the epoch in flight. `run` trains them to the end or to an agreed stop."""

    def __init__(self, runs: list[_Run], fns: train.StepFns, mesh, dataset: data.Dataset, *, run_axis: int,
                 n_steps: int, bar, on_epoch, trace, on_compiled=None):
        self.runs, self.fns, self.mesh, self.run_axis, self.n_steps = runs, fns, mesh, run_axis, n_steps
        self.batched = run_axis > 1
        self.cfg = runs[0].cfg
        self.bar, self.on_epoch, self.trace, self.on_compiled = bar, on_epoch, trace, on_compiled
        # The whole data set lives on every device; batches are gathered there.
        self.train_x, self.train_y, self.test_x, self.test_y = devices.put_replicated(
            (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels), mesh
        )
        self.val = None if dataset.val_labels is None else devices.put_replicated(
            (dataset.val_images, dataset.val_labels), mesh)
        # Of the whole model: a channel-pruned one's sparsity counts the channels it lost.
        self.prunable = kernels.counts(kernels.Arch.of(self.cfg).whole, tuple(self.cfg.exclude))[1]
        self.cost = model_cost.arch_cost(kernels.Arch.of(self.cfg), tuple(self.cfg.exclude),
                                         tuple(dataset.train_images.shape[1:]))
        self.images = train.images_per_epoch(self.cfg, len(dataset.train_labels))
        # When the previous epoch's results were ready (None: no epoch yet). An epoch's
        # seconds run from there to its own results, so they add up to the loop's wall
        # time, whichever epoch a blocking dispatch or a checkpoint write delayed.
        self.last_ready: float | None = None
        self.compiled = False

    def _compile(self, epoch: int, state) -> None:
        """Compiles the epoch's programs before the first epoch starts, and says how long it took."""
        t0 = time.perf_counter()
        self.fns.compile_epoch(state, self.train_x, self.train_y, epoch,
                               [(self.test_x, self.test_y), *([self.val] if self.val is not None else [])])
        self.compiled = True
        if self.on_compiled:
            self.on_compiled(time.perf_counter() - t0)

    def dispatch(self, members: tuple[int, ...], epoch: int, state) -> tuple[Any, _Flight]:
        """Queues one epoch and its evaluation for `members` (their state, stacked when
        batched); returns the state the next epoch consumes and the flight to finish."""
        if not self.compiled:
            self._compile(epoch, state)
        t0 = time.perf_counter()
        if self.last_ready is None:
            self.last_ready = t0
        fns = self.fns
        state, train_m = fns.train_epoch(state, self.train_x, self.train_y, epoch)
        test_m = fns.evaluate(state.params, state.batch_stats, state.masks, self.test_x, self.test_y)
        if self.val is not None:
            val_m = fns.evaluate(state.params, state.batch_stats, state.masks, *self.val)
            test_m = {**test_m, "val_loss": val_m["test_loss"], "val_acc": val_m["test_acc"]}
        snapshots = _snapshots(state, len(members) if self.batched else None, self.mesh)
        metrics = {**train_m, **test_m}
        trace = {"epoch": epoch, "dispatch_start": t0, "dispatch_end": time.perf_counter()}
        flight = _Flight(members, epoch, snapshots, metrics, trace, _watch_ready(metrics, trace))
        for i in members:
            self.runs[i].dispatched = epoch
        return state, flight

    def finish(self, flight: _Flight) -> None:
        """Reads a flight's metrics (the epoch's one host sync), then saves and logs each
        member's epoch, and stops the members that diverged."""
        metrics = hosts.to_host(flight.metrics)
        flight.watcher.join()
        ready = flight.trace["ready"]
        seconds = (ready - self.last_ready) / len(flight.members)
        self.last_ready = ready
        row = None
        for j, (i, state) in enumerate(zip(flight.members, flight.snapshots)):
            run = self.runs[i]
            if run.stopped:  # diverged in the epoch before: this one was already in flight
                continue
            row = self._row(flight.epoch, {k: (v[j] if self.batched else v) for k, v in metrics.items()}, seconds)
            run.record(state, row)
            if self.on_epoch:
                self.on_epoch(run.spec, row)
            if stopped_by_divergence(run.cfg, run.history):
                run.stopped = True
                checkpoint.warn(
                    f"{run.workdir}: diverged at epoch {row['epoch']} (training loss {row['train_loss']}); "
                    "stopped it there (--on-divergence continue trains on)"
                )
            self.bar.update(1)
        if row is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{100 * row['test_acc']:.2f}%",
                                 img_s=f"{row['images_per_s']:,.0f}")
        if self.trace is not None:
            self.trace.append(flight.trace)

    def _row(self, epoch: int, m: dict[str, Any], seconds: float) -> dict[str, Any]:
        kept = np.asarray(m.pop("kept"))  # per prunable kernel
        params_nz, flops_nz = self.cost.nonzero(kept)
        return {
            "epoch": epoch,
            "step": epoch * self.n_steps,
            "lr": train.epoch_lr(self.cfg, self.n_steps, epoch),
            # Exact, from the counts (they move in gradual pruning).
            "sparsity": 1 - int(kept.sum()) / self.prunable,
            "params_nz": params_nz, "flops_nz": flops_nz,
            "val_loss": None, "val_acc": None,
            **{k: float(v) for k, v in m.items()},
            "seconds": seconds,
            "images_per_s": self.images / max(seconds, 1e-9),
        }

    def next_epoch(self) -> tuple[int, tuple[int, ...]] | None:
        """The next epoch to dispatch and the runs at it (the laggards first), or None when done."""
        pending = [r for r in self.runs if r.dispatched < r.cfg.epochs and not r.stopped]
        if not pending:
            return None
        epoch = min(r.dispatched for r in pending) + 1
        return epoch, tuple(i for i, r in enumerate(self.runs) if r.dispatched + 1 == epoch)

    def run(self) -> int | None:
        """Trains every run to its end, one epoch in flight while the previous one is
        saved. Returns the signal all processes agreed to stop at, or None."""
        flight, group, stacked = None, None, None
        stopping = hosts.agreed_signal(interrupt.requested())
        while stopping is None and (nxt := self.next_epoch()) is not None:
            epoch, members = nxt
            if self.batched:
                if group != members:
                    if flight is not None:  # the new stack needs every member's latest state
                        self.finish(flight)
                        flight = None
                    padded = [*members, *[members[0]] * (self.run_axis - len(members))]
                    group, stacked = members, _stack([self.runs[i].state for i in padded], self.mesh)
                work = [(members, stacked)]
            else:
                work = [((i,), self.runs[i].live) for i in members]
            for unit, state in work:
                state, new = self.dispatch(unit, epoch, state)
                if self.batched:
                    stacked = state
                else:
                    self.runs[unit[0]].live = state
                if flight is not None:
                    self.finish(flight)
                flight = new
                # The same answer on every process of a job.
                if (stopping := hosts.agreed_signal(interrupt.requested())) is not None:
                    break
        if flight is not None:
            self.finish(flight)
        return stopping


def _checked(specs: list[RunSpec], dataset: data.Dataset | None, run_axis: int):
    """(data set prepared, SGD steps per epoch) for runs trained together, or the
    one-line error (ConfigError) why they cannot be."""
    if run_axis < len(specs):
        raise ValueError(f"run_axis {run_axis} is smaller than the {len(specs)} runs")
    for spec in specs:
        spec.cfg.validate()
    cfg = specs[0].cfg
    if any(train.compile_key(s.cfg) != train.compile_key(cfg) for s in specs):
        raise config_lib.ConfigError("runs trained together must share their recipe (all but the seed)")
    dataset = (data.load(cfg.data) if dataset is None else dataset).prepared(cfg)
    n_train = len(dataset.train_labels)
    n_steps = train.steps_per_epoch(cfg, n_train)
    if n_steps == 0:
        raise config_lib.ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {n_train} training images (and --drop-last is on)"
        )
    return dataset, n_steps


def train_runs(
    specs: list[RunSpec],
    *,
    dataset: data.Dataset | None = None,
    on_epoch: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    run_axis: int | None = None,
    trace: list[dict[str, float]] | None = None,
    on_compiled: Callable[[float], None] | None = None,
) -> list[RunResult]:
    """Trains several independent runs at once, `jax.vmap`ped over a run axis of `run_axis`
    (default: the number of runs; fewer runs are padded with throwaway copies).

    The runs share the recipe (configs equal but for the seed) and the data set on the
    device; each has its own key, weights, masks, directory and checkpoints, and resumes
    on its own (runs a crash left behind catch up first). XLA rounds a convolution
    batched over N runs differently for each N but not by a run's partners or position,
    so with a fixed run_axis results depend neither on grouping nor on crashes;
    run_axis=1 is the plain program `train_and_evaluate` runs. trace, when given,
    receives each epoch's host times of dispatch and of results ready (the device-idle
    benchmark). on_compiled, when given, is called with the seconds spent compiling
    before the first epoch (excluded from every epoch's seconds). Raises interrupt.Interrupted, after saving the epoch in flight, when a
    stop was requested (see `interrupt.stop_at_safe_points`).
    """
    if not specs:
        return []
    run_axis = run_axis or len(specs)
    dataset, n_steps = _checked(specs, dataset, run_axis)
    cfg = specs[0].cfg
    tx = train.make_optimizer(cfg, n_steps)
    mesh = devices.mesh_for(cfg.devices, cfg.batch_size, run_axis)
    fns = train.step_fns_for(train.compile_key(cfg), n_steps, runs=run_axis > 1, mesh=mesh)
    with contextlib.ExitStack() as stack:
        fingerprint = data.fingerprint(dataset)
        # Each claims its directory only now, so bad input writes nothing.
        runs = [_Run(spec, tx, mesh, stack, fingerprint) for spec in specs]
        group = _Group(runs, fns, mesh, dataset, run_axis=run_axis, n_steps=n_steps,
                       bar=stack.enter_context(_progress(cfg, runs)), on_epoch=on_epoch, trace=trace,
                       on_compiled=on_compiled)
        if (stopping := group.run()) is not None:
            raise interrupt.Interrupted(stopping)
    return [RunResult(r.state, r.history) for r in runs]


def _watch_ready(metrics, trace: dict[str, float]) -> threading.Thread:
    """A thread that sets trace['ready'] when `metrics` are computed: the device's own
    finish time, not when the host gets round to reading them."""

    def wait():
        try:
            jax.block_until_ready(metrics)
        finally:  # a failed epoch is read (and raised) by the host; its time is moot
            trace["ready"] = time.perf_counter()

    watcher = threading.Thread(target=wait, daemon=True)
    watcher.start()
    return watcher


def train_and_evaluate(
    cfg: config_lib.TrainConfig,
    workdir: str | Path,
    *,
    dataset: data.Dataset | None = None,
    start: dict | None = None,
    masks: Any = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_compiled: Callable[[float], None] | None = None,
) -> RunResult:
    """Trains for cfg.epochs in `workdir`, checkpointing every epoch; a rerun resumes.

    Args:
      cfg: the run's config (validated here).
      workdir: the run's directory: config.json, metrics.csv/.jsonl, checkpoints/.
      dataset: data already loaded (else loaded from cfg.data).
      start: {'params', 'batch_stats'} to start from (else a fresh init from cfg.seed).
      masks: pruning masks to train under (else all kept).
      meta: extra JSON saved in every checkpoint's metadata (e.g. the pruning round).
      on_epoch: called with each new epoch's metrics row.
      on_compiled: called with the seconds spent compiling before the first epoch.
    """
    spec = RunSpec(cfg, Path(workdir), start, masks, meta)
    callback = (lambda _, row: on_epoch(row)) if on_epoch else None
    return train_runs([spec], dataset=dataset, on_epoch=callback, on_compiled=on_compiled)[0]


@contextlib.contextmanager
def _progress(cfg, runs: list[_Run]):
    from tqdm.auto import tqdm

    desc = runs[0].workdir.name if len(runs) == 1 else f"{runs[0].workdir.parent.name}/... ({len(runs)} runs)"
    bar = tqdm(
        total=sum(r.cfg.epochs for r in runs), initial=sum(len(r.history) for r in runs),
        desc=desc, unit="epoch", disable=not cfg.progress or not hosts.primary(), leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()
