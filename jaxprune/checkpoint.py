"""Orbax checkpoints of a run: one step per epoch, the latest and the best kept.

Layout: ``DIR/<epoch>/state`` (a pytree: params, batch_stats, masks,
opt_state, step, key) and ``DIR/<epoch>/meta`` (JSON: epoch, metrics, the
run's history and config, the jaxprune version, and ``kind``). Nothing else in
jaxprune touches Orbax.

Saving is asynchronous (the next epoch computes while the last one is
written); a step appears on disk only once complete, and `close` waits for the
last save, so a crash leaves the previous complete epoch to resume from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

KIND = "jaxprune-checkpoint"
STATE, META = "state", "meta"


class CheckpointError(ValueError):
    """A path that is not a usable jaxprune checkpoint."""


class RunCheckpoints:
    """The per-epoch checkpoints of one run.

    Keeps the newest complete epoch (to resume from) and the best by
    ``metrics[best_metric]`` (higher is better); others are deleted once a
    newer save has completed, so a crash never leaves fewer than one.
    """

    def __init__(self, directory: str | os.PathLike, *, best_metric: str = "test_acc", async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, create=True, enable_async_checkpointing=async_save
            ),
            item_names=(STATE, META),
        )
        self._best: tuple[float, int] | None = None
        for epoch in self.epochs():
            self._note(epoch, self.read_meta(epoch)["metrics"])

    def epochs(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def best(self) -> int | None:
        return self._best[1] if self._best else None

    def _note(self, epoch: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.best_metric)
        if value is not None and (self._best is None or value > self._best[0]):
            self._best = (value, epoch)

    def _finish_and_prune(self) -> None:
        """Waits for pending saves, then deletes every epoch but the latest and the best."""
        self._manager.wait_until_finished()  # only complete epochs count as latest
        keep = {self.latest(), self.best()}
        for old in self.epochs():
            if old not in keep:
                self._manager.delete(old)

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving `state` and `meta` as `epoch`; returns before the write ends."""
        self._finish_and_prune()
        meta = {**meta, "epoch": epoch, "kind": KIND}
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
            ),
        )
        self._note(epoch, meta.get("metrics", {}))

    def read_meta(self, epoch: int) -> dict[str, Any]:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(restored[META])

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores epoch `epoch` into the shapes, dtypes and shardings of `abstract_state`
        (whatever device wrote it: a GPU checkpoint restores on a CPU and vice versa)."""
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], dict(restored[META])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the last save, keeps only the latest and best, releases Orbax's threads."""
        self._finish_and_prune()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def locate(path: str | os.PathLike, which: str = "latest") -> tuple[Path, int]:
    """Finds a checkpoint from a run directory, its checkpoints/ folder, or one epoch's folder.

    Returns (checkpoints folder, epoch). Raises CheckpointError with a one-line reason.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory")
    if (path / META).is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    epochs = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META).is_dir())
    if not epochs:
        raise CheckpointError(
            f"{path} is not a jaxprune checkpoint: no <epoch>/meta folders in it or in its checkpoints/"
        )
    if which == "latest":
        return folder, epochs[-1]
    if which == "best":
        with RunCheckpoints(folder) as ckpts:
            return folder, ckpts.best() or epochs[-1]
    raise CheckpointError(f"unknown checkpoint choice {which!r}; use latest or best")


def read_meta(folder: Path, epoch: int) -> dict[str, Any]:
    with RunCheckpoints(folder) as ckpts:
        meta = ckpts.read_meta(epoch)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{folder / str(epoch)} is not a jaxprune checkpoint (no jaxprune metadata)")
    return meta


def restore(folder: Path, epoch: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    with RunCheckpoints(folder) as ckpts:
        return ckpts.restore(epoch, abstract_state)
