"""Orbax checkpoints (nothing else in jaxprune touches Orbax): finding and reading one
saved checkpoint read-only (`locate`, `read_meta`, `restore_model`, `restore_masks`,
`abstract_model`), as evaluation, export and the report do. A run's own checkpoints,
their layout and `RunCheckpoints` are in `run_checkpoints`; write errors and the
quiet hooks in `storage`. Every name of both is served here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxprune.training.run_checkpoints import (  # noqa: F401  (served here)
    KIND, META, MODEL, MODEL_FIELDS, TRAIN, TRAIN_FIELDS, CheckpointError, RunCheckpoints, _first_line, _split,
    selection_metric,
)
from jaxprune.training.storage import (  # noqa: F401  (served here)
    STORAGE_ERRNOS, WriteError, install_quiet_hooks, storage_cause, warn,
)


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
    phases = _runs_below(path) if folder == path else []
    if phases and not any(p.name.isdigit() for p in path.iterdir()):
        shown = ", ".join(phases[:4]) + (f" and {len(phases) - 4} more" if len(phases) > 4 else "")
        raise CheckpointError(f"{path} is a folder of runs, not one run: give one of {shown} (under it)")
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


def _runs_below(path: Path) -> list[str]:
    """The runs (folders with checkpoints/) one or two levels below `path`: a study's
    phases (baseline, <chain>/round-NN) or a chain's rounds, as paths relative to it."""
    found = [p.parent for p in path.glob("*/checkpoints")] + [p.parent for p in path.glob("*/*/checkpoints")]
    return sorted(str(p.relative_to(path)) for p in found if p.is_dir())


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


def restore_masks(folder: Path, epoch: int, abstract_masks: Any) -> Any:
    """The masks of one kept epoch as numpy bool arrays in `abstract_masks`' structure, read
    without the params and batch stats (Orbax's partial restore of the model item)."""
    import inspect

    import jax
    import numpy as np

    item = {"masks": jax.tree.map(lambda s: np.zeros(s.shape, bool), abstract_masks)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    # Orbax >= 0.11.x names it partial_restore; older releases drop what `item` lacks given transforms={}.
    partial = ({"partial_restore": True} if "partial_restore" in inspect.signature(ocp.args.PyTreeRestore).parameters
               else {"transforms": {}})
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        restored = checkpointer.restore((Path(folder) / str(epoch) / MODEL).absolute(),  # Orbax wants it absolute
                                        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, **partial))
    except Exception as e:
        raise CheckpointError(f"the masks of checkpoint {folder / str(epoch)} cannot be read ({_first_line(e)})") from e
    finally:
        checkpointer.close()
    return restored["masks"]


def abstract_model(abstract_state: Any) -> dict:
    """The model item's restore target from an abstract TrainState."""
    return _split(abstract_state)[0]
