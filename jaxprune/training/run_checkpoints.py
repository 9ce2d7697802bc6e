"""`RunCheckpoints`: the Orbax checkpoints of a run, one step per epoch, the latest and the best kept.

Layout of ``DIR/<epoch>/`` (Orbax items; nothing in jaxprune but this and `checkpoint` touches Orbax):

- ``model``: ``{'params', 'batch_stats', 'masks'}``, what evaluation, export
  and pruning read. Masks are bool; Orbax's zstd compression stores them at
  about one bit per weight, and pruned zeros in params cost next to nothing.
- ``train``: ``{'opt_state', 'step', 'key'}``, what resuming needs besides the
  model. Only the latest epoch of an unfinished run keeps it: it is dropped
  from the best epoch once a later one is saved, and from both kept epochs
  when the run finishes.
- ``meta``: JSON: epoch, metrics, the run's history and config, the jaxprune
  version, and ``kind``.

Saved means saved: `save` starts Orbax's write and `commit` waits for it; an
epoch counts as kept (latest, best, resumable) only once its write has
committed and its folder is on disk, and older epochs are deleted only then.
A write that fails (a full disk or quota, a read-only mount, an I/O error)
raises `WriteError` with one line naming the folder and the cause, and
deletes nothing: the rerun resumes from the newest intact epoch. The device
still computes the next epoch while the host writes (see jaxprune.loop). A
step that cannot be read (a kill mid-write) is reported in one line and moved
aside to ``<epoch>.damaged``; the run goes on from another.

In a multi-process job every process calls every method (Orbax writes each
process's part of a save); the file operations of our own (clean-up, setting
aside, dropping optimizer state) are process 0's, each followed by a barrier.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from jaxprune.runtime import hosts
from jaxprune.runtime.faults import fault_point
from jaxprune.runtime.errors import UserError
from jaxprune.training.storage import WriteError, storage_cause, warn

KIND = "jaxprune-checkpoint"
MODEL, TRAIN, META = "model", "train", "meta"
MODEL_FIELDS = ("params", "batch_stats", "masks")
TRAIN_FIELDS = ("opt_state", "step", "key")
_skipped: set[str] = set()  # steps a read-only reader has reported unreadable in this process


def selection_metric(val_split: int) -> str:
    """The metric a run's best epoch is chosen by: validation accuracy when it held
    out a validation split, else test accuracy (the write-up's)."""
    return "val_acc" if val_split else "test_acc"


class CheckpointError(UserError):
    """A path that is not a usable jaxprune checkpoint."""


def _split(state: Any) -> tuple[dict, dict]:
    """A TrainState as its two items: model and train."""
    return ({k: getattr(state, k) for k in MODEL_FIELDS}, {k: getattr(state, k) for k in TRAIN_FIELDS})


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class RunCheckpoints:
    """The per-epoch checkpoints of one run.

    Keeps the newest committed epoch (to resume from), the best by
    ``metrics[best_metric]`` (higher is better) and the epochs in `keep` (a
    baseline's rewind point); others are deleted once a newer save has
    committed, so neither a crash nor a failed write leaves fewer than one.

    read_only=True (evaluation, export, a given baseline) changes nothing on
    disk: damaged steps are skipped with a warning instead of moved aside.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        best_metric: str = "test_acc",
        async_save: bool = True,
        read_only: bool = False,
        keep: tuple[int, ...] = (),
        log: Callable[[str], None] = warn,
    ):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.keep = set(keep)  # epochs kept besides the latest and best (their model only)
        self.read_only = read_only
        self.log = log
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints at {self.directory}")
        if not read_only:
            self._clean_temporaries()
            hosts.sync("jaxprune-checkpoint-clean")
        self._manager = ocp.CheckpointManager(
            self.directory,
            # read_only is ours to keep (no saves, deletes or clean-up here):
            # Orbax's own flag logs warnings that would break one-line output.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, create=not read_only,
                enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
                # Its background barriers wait for slow hosts as long as ours do.
                async_options=ocp.AsyncOptions(timeout_secs=hosts.timeout_s()),
                # Orbax names its cross-process barriers by step alone: runs saving
                # the same epoch at once (a vmapped group) need names of their own.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
                ),
            ),
            item_names=(MODEL, TRAIN, META),
        )
        self._metas: dict[int, dict[str, Any]] = {}  # committed epochs only
        self._pending: dict[int, dict[str, Any]] = {}  # writes started, not yet committed
        self._failed = False  # a write failed: nothing more is written or deleted
        if not read_only:
            self._probe(None)  # a read-only mount: one line now, not after an epoch's work
        for epoch in sorted(self._manager.all_steps()):
            try:
                self._metas[epoch] = self._read_meta(epoch)
            except Exception as e:  # orbax and json raise many types for a torn step
                self.set_aside(epoch, e)

    # ------------------------------------------------------------ reading

    def epochs(self) -> list[int]:
        """Readable epochs, oldest first."""
        return sorted(self._metas)

    def latest(self) -> int | None:
        return max(self._metas, default=None)

    def best(self) -> int | None:
        scored = [(m.get("metrics", {}).get(self.best_metric), e) for e, m in self._metas.items()]
        # A kept rewind epoch only competes if it was the best when saved; None never does.
        scored = [(v, -e) for v, e in scored if v is not None]
        return -max(scored)[1] if scored else None  # ties: the earliest epoch

    def meta(self, epoch: int) -> dict[str, Any]:
        return self._metas[epoch]

    def has_train_state(self, epoch: int) -> bool:
        return (self.directory / str(epoch) / TRAIN).is_dir()

    def _read_meta(self, epoch: int) -> dict[str, Any]:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(restored[META])

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores a whole TrainState into the shapes, dtypes and shardings of
        `abstract_state` (whatever device wrote it: a GPU checkpoint restores on
        a CPU and vice versa). Needs the epoch's train item (an unfinished run's latest)."""
        model, train = _split(abstract_state)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(**{
                MODEL: ocp.args.StandardRestore(model),
                TRAIN: ocp.args.StandardRestore(train),
                META: ocp.args.JsonRestore(),
            }),
        )
        return abstract_state.replace(**restored[MODEL], **restored[TRAIN]), dict(restored[META])

    def restore_model(self, epoch: int, abstract_model: dict) -> tuple[dict, dict[str, Any]]:
        """Restores ``{'params', 'batch_stats', 'masks'}`` of any kept epoch."""
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(**{MODEL: ocp.args.StandardRestore(abstract_model), META: ocp.args.JsonRestore()}),
        )
        return dict(restored[MODEL]), dict(restored[META])

    # ------------------------------------------------------------ damage

    def set_aside(self, epoch: int, error: BaseException | None = None, label: str = "damaged",
                  why: str | None = None) -> None:
        """Moves a step to ``<epoch>.<label>`` so later saves and listings skip it, and
        says so in one line: an unreadable step (`error`), or an intact one a restart
        from scratch would overwrite (label 'superseded'). Read-only: only reports."""
        self._metas.pop(epoch, None)
        step = self.directory / str(epoch)
        if why is None:
            why = f"cannot be read ({_first_line(error)})" if error is not None else "is from before a restart"
        if self.read_only:
            # Each reader (locate, read_meta, restore) opens the folder: say it once.
            if str(step) not in _skipped:
                _skipped.add(str(step))
                self.log(f"checkpoint {step} {why}; skipped")
            return
        aside = step.with_name(f"{epoch}.{label}")
        n = 1
        while aside.exists():
            n += 1
            aside = step.with_name(f"{epoch}.{label}-{n}")
        if hosts.primary():
            step.rename(aside)
        hosts.sync("jaxprune-checkpoint-set-aside")
        self._manager.reload()
        self.log(f"checkpoint {step} {why}; moved aside to {aside.name}")

    def _clean_temporaries(self) -> None:
        """Removes the partial steps and items that a killed save leaves behind."""
        if not self.directory.is_dir() or not hosts.primary():
            return
        for path in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.directory.glob("*/*.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------ writing

    def _drop_train_state(self, epoch: int) -> None:
        if hosts.primary():
            shutil.rmtree(self.directory / str(epoch) / TRAIN, ignore_errors=True)

    def _prune(self) -> None:
        """Deletes every committed epoch but the latest, the best and `keep`, and the
        optimizer state of all but the latest. Only ever after a commit."""
        latest, best = self.latest(), self.best()
        for old in self.epochs():
            if old not in (latest, best) and old not in self.keep:
                self._manager.delete(old)
                self._metas.pop(old)
        for old in self.epochs():
            if old != latest:
                self._drop_train_state(old)
        hosts.sync("jaxprune-checkpoint-pruned")

    def _write_error(self, epoch: int | None, e: BaseException) -> WriteError:
        cause = storage_cause(e) or _first_line(e)
        if epoch is None:  # before anything was read or written
            return WriteError(f"cannot write checkpoints in {self.directory} ({cause}); nothing was changed: "
                              "make the folder writable (or free space) and rerun the same command")
        newest = self.latest()
        kept = f"epoch {newest} is the newest saved" if newest is not None else "no epoch was saved yet"
        return WriteError(
            f"cannot write checkpoint {self.directory / str(epoch)} ({cause}); nothing was deleted and {kept}: "
            "free space (or make the folder writable) and rerun the same command to resume"
        )

    def _probe(self, epoch: int | None) -> None:
        """Fails at once, before any write starts, where the folder takes no new file
        (read-only, no permission, no inodes): Orbax's threads would wait for a
        folder that never appears."""
        probe = self.directory / f".write-probe-{socket.gethostname()}-{os.getpid()}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.unlink(probe)
        except OSError as e:
            self._failed = True
            raise self._write_error(epoch, e) from None

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts writing `state` (a TrainState) and `meta` as `epoch`; returns before the
        write ends. It counts as saved only after `commit`."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        if self._failed:
            raise WriteError(f"{self.directory}: an earlier write failed; rerun the same command to resume")
        self.commit()  # one write in flight at a time
        self._probe(epoch)
        meta = {**meta, "epoch": epoch, "kind": KIND}
        model, train = _split(state)
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(**{
                    MODEL: ocp.args.StandardSave(model),
                    TRAIN: ocp.args.StandardSave(train),
                    META: ocp.args.JsonSave(meta),
                }),
            )
        except Exception as e:
            if storage_cause(e) is None:
                raise
            self._failed = True
            raise self._write_error(epoch, e) from None
        self._pending[epoch] = meta
        fault_point("checkpoint-save-started")

    def commit(self) -> None:
        """Waits for the writes under way; each counts as saved (latest, best, resumable)
        only once it has committed and its folder is on disk. Then deletes what is no
        longer kept. On a failed write raises WriteError and deletes nothing."""
        if not self._pending:
            return
        try:
            self._manager.wait_until_finished()
            missing = [e for e in self._pending if not (self.directory / str(e)).is_dir()]
            if missing:
                raise OSError(errno.EIO, f"step {missing[0]} did not appear after its write")
        except Exception as e:
            epoch = max(self._pending)
            self._pending.clear()
            self._failed = True
            if storage_cause(e) is None and not isinstance(e, OSError):
                raise
            raise self._write_error(epoch, e) from None
        for epoch, meta in sorted(self._pending.items()):
            self._metas[epoch] = meta
            fault_point("checkpoint-committed")
        self._pending.clear()
        self._prune()

    def close(self, *, finished: bool = False) -> None:
        """Commits the last write and keeps only the latest and best; a finished run
        keeps no optimizer state at all. Releases Orbax's threads. After a failed
        write it deletes nothing."""
        try:
            if not self.read_only and not self._failed:
                self.commit()
                if finished:
                    for epoch in self.epochs():
                        self._drop_train_state(epoch)
                    hosts.sync("jaxprune-checkpoint-finished")
        finally:
            try:
                self._manager.close()
            except Exception:
                if not self._failed:  # a failed write raises again here; it was reported
                    raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
