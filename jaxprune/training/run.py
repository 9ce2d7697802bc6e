"""One run of the driver (`jaxprune.loop`): what to train (`RunSpec`), what it gave
(`RunResult`), the run while it trains (`_Run`: its locked directory, checkpoints,
resume and history) and the divergence rule (`diverged`, `stopped_by_divergence`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

import jaxprune
from jaxprune.training import checkpoint, rundir, train
from jaxprune.training import config as config_lib
from jaxprune.runtime.faults import fault_point
from jaxprune.models import init_variables


@dataclasses.dataclass
class RunResult:
    """A run's final state and its metrics.

    When the run had finished before this call, state holds only its model
    (params, batch_stats, masks; the rest None): a finished run keeps no
    optimizer state on disk.
    """

    state: train.TrainState
    history: list[dict[str, Any]]  # one row per epoch, rundir.METRIC_FIELDS

    @property
    def best_test_acc(self) -> float:
        return max(r["test_acc"] for r in self.history)


def diverged(row: dict[str, Any]) -> bool:
    """Whether a metrics row's training loss is NaN or infinite."""
    return not math.isfinite(row["train_loss"])


def stopped_by_divergence(cfg: config_lib.TrainConfig, history: list[dict[str, Any]]) -> bool:
    """Whether a run with this history is over for divergence: its last epoch diverged
    and its config says to stop there (the one rule for the loop, the study and the CLI)."""
    return cfg.on_divergence == "stop" and bool(history) and diverged(history[-1])


@dataclasses.dataclass
class RunSpec:
    """One run for `train_runs`: its config, directory and starting point."""

    cfg: config_lib.TrainConfig
    workdir: Path
    start: dict | None = None  # {'params', 'batch_stats'}; else a fresh init from cfg.seed
    masks: Any = None  # pruning masks to train under; else all kept
    meta: dict[str, Any] | None = None  # extra JSON in every checkpoint's metadata
    identity: dict[str, Any] | None = None  # extra identity the directory must match (a phase's)
    keep_epochs: tuple[int, ...] = ()  # epochs kept besides the latest and best (a rewind point)


class _Run:
    """One run's directory (locked while training), checkpoints, metric logs and history."""

    def __init__(self, spec: RunSpec, tx, mesh, stack: contextlib.ExitStack, data_fingerprint: str):
        self.spec, self.cfg, self.workdir = spec, spec.cfg, Path(spec.workdir)
        stack.enter_context(rundir.locked(self.workdir))
        rundir.claim(self.workdir, self.cfg, spec.identity)
        rundir.check_data(self.workdir, data_fingerprint)
        self.ckpts = checkpoint.RunCheckpoints(self.workdir / "checkpoints", keep=spec.keep_epochs,
                                               best_metric=checkpoint.selection_metric(self.cfg.val_split))
        self.history: list[dict[str, Any]] = []  # read by the close below, even if resuming fails
        self.stopped = False  # diverged, and told to stop
        stack.callback(lambda: self.ckpts.close(finished=self.done))
        found = self._resume(train.abstract_state(self.cfg, tx, mesh))
        if found is not None:
            self.state, self.history = found
        else:
            start = spec.start if spec.start is not None else init_variables(train.build_model(self.cfg), self.cfg.seed)
            self.state = train.create_train_state(start, tx, self.cfg.seed, spec.masks, mesh, self.cfg.exclude)
            self.history = []
        self.live = self.state  # what the next epoch consumes
        # A run stopped for divergence stays stopped on a rerun (unless told to continue).
        self.stopped = stopped_by_divergence(self.cfg, self.history)
        self.dispatched = len(self.history)
        rundir.write_metric_logs(self.workdir, self.history)

    def _resume(self, abstract: train.TrainState):
        """(state, history) from the newest usable epoch, or None to start over.

        A finished run's final epoch gives its model (no optimizer state is
        kept); an unfinished run resumes from its latest epoch, the only one
        with optimizer state. A step that fails to restore is set aside.
        """
        for epoch in reversed(self.ckpts.epochs()):
            finished = epoch >= self.cfg.epochs
            if not finished and not self.ckpts.has_train_state(epoch):
                continue  # a best epoch, kept for its weights: nothing to resume from
            try:
                if finished:
                    model, meta = self.ckpts.restore_model(epoch, checkpoint.abstract_model(abstract))
                    return abstract.replace(**model, opt_state=None, step=None, key=None), meta["history"]
                state, meta = self.ckpts.restore(epoch, abstract)
                return state, meta["history"]
            except Exception as e:  # a torn write surfaces as many error types
                self.ckpts.set_aside(epoch, e)
        if self.ckpts.epochs():
            self.ckpts.log(f"{self.workdir}: no epoch to resume from; training again from the start")
            # The intact epochs left (a best one, a rewind point) would be
            # overwritten by the new run's: keep them, out of its way.
            for epoch in self.ckpts.epochs():
                self.ckpts.set_aside(epoch, label="superseded")
        return None

    @property
    def done(self) -> bool:
        return len(self.history) >= self.cfg.epochs or self.stopped

    def record(self, state: train.TrainState, row: dict[str, Any]) -> None:
        """Saves the epoch, then logs it: metrics.csv never lists an epoch that is not on
        disk. The host waits for the write while the device runs the next epoch."""
        self.ckpts.save(row["epoch"], state, {
            **(self.spec.meta or {}),
            "metrics": row,
            "history": [*self.history, row],
            "config": config_lib.to_dict(self.cfg),
            "jaxprune_version": jaxprune.__version__,
        })
        self.ckpts.commit()  # raises checkpoint.WriteError, deleting nothing, if the write failed
        self.state = state
        self.history.append(row)
        rundir.append_metric_logs(self.workdir, row)
        fault_point("metrics-row")
