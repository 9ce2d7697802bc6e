"""Evaluating a saved checkpoint on whatever device this process has."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from jaxprune.training import checkpoint, devices, train
from jaxprune import masks as masks_lib
from jaxprune.training import config as config_lib
from jaxprune.data import sources as data
from jaxprune.runtime.faults import fault_point


@dataclasses.dataclass
class EvalResult:
    path: str
    epoch: int
    source: str
    n_images: int
    test_acc: float  # fraction in [0, 1]
    test_loss: float
    sparsity: masks_lib.SparsityReport
    meta: dict[str, Any]

    def summary(self) -> str:
        return (
            f"{self.path} (epoch {self.epoch}) on {jax.devices()[0].platform}\n"
            f"test accuracy {100 * self.test_acc:.2f}% (loss {self.test_loss:.4f}) "
            f"on {self.n_images:,} images of {self.source}\n"
            f"global sparsity {100 * self.sparsity.total.sparsity:.2f}%\n\n{self.sparsity}"
        )


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    data_spec: str | None = None,
    which: str = "latest",
    batch_size: int | None = None,
) -> EvalResult:
    """Restores a checkpoint onto this process's first device and evaluates it on the test split."""
    for attempt in range(3):
        folder, epoch = checkpoint.locate(path, which)
        try:
            meta = checkpoint.read_meta(folder, epoch)
            cfg = config_lib.from_dict(config_lib.TrainConfig, meta["config"])
            overrides = {"devices": 1}  # evaluation is cheap; any machine can do it on one device
            if data_spec:
                overrides["data"] = data_spec
            if batch_size:
                overrides["eval_batch_size"] = batch_size
            cfg = dataclasses.replace(cfg, **overrides).validate()
            model, _ = checkpoint.restore_model(folder, epoch, checkpoint.abstract_model(train.abstract_state(cfg)))
            break
        except (checkpoint.CheckpointError, KeyError, OSError):
            # A run still training replaces its latest epoch (and prunes older ones)
            # while we read: look again for what is there now.
            if (folder / str(epoch)).is_dir() or attempt == 2:
                raise
    fault_point("evaluate-restored")
    dataset = data.load(cfg.data)
    fns = train.step_fns_for(train.compile_key(cfg), 1)
    mesh = devices.mesh_for(cfg.devices, cfg.batch_size)
    test_x, test_y = devices.put_replicated((dataset.test_images, dataset.test_labels), mesh)
    m = fns.evaluate(model["params"], model["batch_stats"], model["masks"], test_x, test_y)
    m = jax.device_get(m)
    return EvalResult(
        path=str(folder / str(epoch)),
        epoch=epoch,
        source=dataset.source,
        n_images=len(dataset.test_labels),
        test_acc=float(m["test_acc"]),
        test_loss=float(m["test_loss"]),
        sparsity=masks_lib.sparsity_report(model["masks"]),
        meta=meta,
    )
