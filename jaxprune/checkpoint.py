"""Orbax checkpoints of a run: one step per epoch, the latest and the best kept.

Layout of ``DIR/<epoch>/`` (Orbax items; nothing else in jaxprune touches Orbax):

- ``model``: ``{'params', 'batch_stats', 'masks'}``, what evaluation, export
  and pruning read. Masks are bool; Orbax's zstd compression stores them at
  about one bit per weight, and pruned zeros in params cost next to nothing.
- ``train``: ``{'opt_state', 'step', 'key'}``, what resuming needs besides the
  model. Only the latest epoch of an unfinished run keeps it: it is dropped
  from the best epoch once a later one is saved, and from both kept epochs
  when the run finishes.
- ``meta``: JSON: epoch, metrics, the run's history and config, the jaxprune
  version, and ``kind``.

Saving is asynchronous (the next epoch computes while the last one is
written); a step appears on disk only once complete, and `close` waits for the
last save, so a crash leaves the previous complete epoch to resume from. A
step that cannot be read (a kill or a full disk mid-write) is reported in one
line and moved aside to ``<epoch>.damaged``; the run goes on from another.

In a multi-process job every process calls every method (Orbax writes each
process's part of a save); the file operations of our own (clean-up, setting
aside, dropping optimizer state) are process 0's, each followed by a barrier.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from jaxprune import hosts

KIND = "jaxprune-checkpoint"
MODEL, TRAIN, META = "model", "train", "meta"
MODEL_FIELDS = ("params", "batch_stats", "masks")
TRAIN_FIELDS = ("opt_state", "step", "key")
_skipped: set[str] = set()  # steps a read-only reader has reported unreadable in this process


def selection_metric(val_split: int) -> str:
    """The metric a run's best epoch is chosen by: validation accuracy when it held
    out a validation split, else test accuracy (the write-up's)."""
    return "val_acc" if val_split else "test_acc"


class CheckpointError(ValueError):
    """A path that is not a usable jaxprune checkpoint."""


def warn(message: str) -> None:
    print(f"jaxprune: {message}", file=sys.stderr)


def _quiet_closed_loop(report, _default=sys.unraisablehook) -> None:
    """Drops the 'Event loop is closed' errors that TensorStore's callbacks raise
    after Orbax gives up reading a damaged step (~160 tracebacks, which would bury
    the one line saying it was set aside); anything else is reported as before."""
    if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
        return
    _default(report)


sys.unraisablehook = _quiet_closed_loop


class _QuietFailedReads(logging.Filter):
    """Drops asyncio's 'Task/Future exception was never retrieved' for Orbax's reads
    of a damaged step: the error is already reported once, as the step is set aside."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        unretrieved = text.startswith(("Task exception was never retrieved", "Future exception was never retrieved"))
        return not (unretrieved and any(w in text for w in ("async_deserialize", "DATA_LOSS", "OCDBT")))


logging.getLogger("asyncio").addFilter(_QuietFailedReads())
# Orbax's abandoned reads of such a step; jaxprune itself has no coroutines.
warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


def _split(state: Any) -> tuple[dict, dict]:
    """A TrainState as its two items: model and train."""
    return ({k: getattr(state, k) for k in MODEL_FIELDS}, {k: getattr(state, k) for k in TRAIN_FIELDS})


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class RunCheckpoints:
    """The per-epoch checkpoints of one run.

    Keeps the newest complete epoch (to resume from), the best by
    ``metrics[best_metric]`` (higher is better) and the epochs in `keep` (a
    baseline's rewind point); others are deleted once a newer save has
    completed, so a crash never leaves fewer than one.

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
                # Orbax names its cross-process barriers by step alone: runs saving
                # the same epoch at once (a vmapped group) need names of their own.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]
                ),
            ),
            item_names=(MODEL, TRAIN, META),
        )
        self._metas: dict[int, dict[str, Any]] = {}
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

    def set_aside(self, epoch: int, error: BaseException | None = None, label: str = "damaged") -> None:
        """Moves a step to ``<epoch>.<label>`` so later saves and listings skip it, and
        says so in one line: an unreadable step (`error`), or an intact one a restart
        from scratch would overwrite (label 'superseded'). Read-only: only reports."""
        self._metas.pop(epoch, None)
        step = self.directory / str(epoch)
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

    def _finish_and_prune(self) -> None:
        """Waits for pending saves, then deletes every epoch but the latest and
        the best, and the optimizer state of a best that is not the latest."""
        self._manager.wait_until_finished()  # only complete epochs count as latest
        latest, best = self.latest(), self.best()
        for old in self.epochs():
            if old not in (latest, best) and old not in self.keep:
                self._manager.delete(old)
                self._metas.pop(old)
        for old in self.epochs():
            if old != latest:
                self._drop_train_state(old)
        hosts.sync("jaxprune-checkpoint-pruned")

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving `state` (a TrainState) and `meta` as `epoch`; returns before the write ends."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        self._finish_and_prune()
        meta = {**meta, "epoch": epoch, "kind": KIND}
        model, train = _split(state)
        self._manager.save(
            epoch,
            args=ocp.args.Composite(**{
                MODEL: ocp.args.StandardSave(model),
                TRAIN: ocp.args.StandardSave(train),
                META: ocp.args.JsonSave(meta),
            }),
        )
        self._metas[epoch] = meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self, *, finished: bool = False) -> None:
        """Waits for the last save and keeps only the latest and best; a finished
        run keeps no optimizer state at all. Releases Orbax's threads."""
        if not self.read_only:
            self._finish_and_prune()
            if finished:
                for epoch in self.epochs():
                    self._drop_train_state(epoch)
                hosts.sync("jaxprune-checkpoint-finished")
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- one checkpoint, read-only


def locate(path: str | os.PathLike, which: str = "latest") -> tuple[Path, int]:
    """Finds a checkpoint from a run directory, its checkpoints/ folder, or one epoch's folder.

    Returns (checkpoints folder, epoch). Unreadable epochs are skipped with a
    warning. Raises CheckpointError with a one-line reason.
    """
    if which not in ("latest", "best"):
        raise CheckpointError(f"unknown checkpoint choice {which!r}; use latest or best")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory")
    if (path / META).is_dir() and path.name.isdigit():
        with RunCheckpoints(path.parent, read_only=True) as ckpts:
            if int(path.name) not in ckpts.epochs():
                raise CheckpointError(f"checkpoint {path} cannot be read")
        return path.parent, int(path.name)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    not_ours = CheckpointError(
        f"{path} is not a jaxprune checkpoint: no readable <epoch>/ steps in it or in its checkpoints/"
    )
    if not any(p.name.isdigit() for p in folder.iterdir()):
        raise not_ours
    with RunCheckpoints(folder, read_only=True) as ckpts:
        if which == "best":
            # The run's own choice: on its validation split when it held one out.
            configs = [ckpts.meta(e).get("config") or {} for e in ckpts.epochs()]
            ckpts.best_metric = selection_metric(max((c.get("val_split") or 0 for c in configs), default=0))
        epoch = ckpts.best() if which == "best" else ckpts.latest()
    if epoch is None:
        raise not_ours
    return folder, epoch


def read_meta(folder: Path, epoch: int) -> dict[str, Any]:
    with RunCheckpoints(folder, read_only=True) as ckpts:
        meta = ckpts.meta(epoch)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{folder / str(epoch)} is not a jaxprune checkpoint (no jaxprune metadata)")
    return meta


def restore_model(folder: Path, epoch: int, abstract_model: dict) -> tuple[dict, dict[str, Any]]:
    """``{'params', 'batch_stats', 'masks'}`` and the meta of one epoch (any kept epoch)."""
    with RunCheckpoints(folder, read_only=True) as ckpts:
        try:
            return ckpts.restore_model(epoch, abstract_model)
        except Exception as e:
            raise CheckpointError(f"checkpoint {folder / str(epoch)} cannot be restored ({_first_line(e)})") from e


def abstract_model(abstract_state: Any) -> dict:
    """The model item's restore target from an abstract TrainState."""
    return _split(abstract_state)[0]
