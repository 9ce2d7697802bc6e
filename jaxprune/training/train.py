"""Masked SGD training: the train state, the optimiser and its schedule (`state`), the
pure jitted functions of a recipe: step, epoch, evaluation (`step`), and here the
compiled functions a config shares with every run of its recipe (`step_fns_for`).
Every name of `state` and `step` is served here too. The driver that runs epochs,
checkpoints and resumes is `jaxprune.loop`.

The whole training split lives on the device. An epoch is one dispatch on an
accelerator: a ``lax.scan`` over its full batches, each gathered by a
permutation drawn from ``fold_in(key, epoch)``, augmented with
``fold_in(key, step)``, then one SGD step; the last partial batch, when the
epoch keeps it, is one more step of its own shape. So any epoch is
reproducible from the state alone, and a resumed run retraces an
uninterrupted one exactly.

Pruned weights and their momentum are exactly 0 after every update: the
updated params and the momentum are masked in the same fused elementwise pass
as the update, which (the optimiser being elementwise) is exactly the update
of a masked gradient.
"""

from __future__ import annotations

import dataclasses
import functools

from jaxprune.training import config as config_lib
from jaxprune.training.state import (  # noqa: F401  (served here)
    TrainState, abstract_state, build_model, create_train_state, epoch_lr, images_per_epoch, learning_rate,
    make_optimizer, steps_per_epoch,
)
from jaxprune.training.step import (  # noqa: F401  (served here)
    Recipe, StepFns, compile_epoch, dispatch_steps, epoch_batches, evaluate, gradual_masks, make_step_fns,
    over_runs, split_batch, train_chunk, train_epoch, train_step,
)


@functools.lru_cache(maxsize=8)
def step_fns_for(cfg: config_lib.TrainConfig, steps_per_epoch: int, runs: bool = False, mesh=None) -> StepFns:
    """The compiled functions for a config, shared by every run (and pruning
    round) with the same shapes and recipe, so none compiles twice."""
    return make_step_fns(
        build_model(cfg), make_optimizer(cfg, steps_per_epoch), cfg, runs=runs, steps_per_epoch=steps_per_epoch,
        mesh=mesh,
    )


def compile_key(cfg: config_lib.TrainConfig) -> config_lib.TrainConfig:
    # Fields that do not reach the compiled code (epochs does: the schedule). Of the data
    # only its class count does (the model's output layer): a stand-in spec keeps it.
    return dataclasses.replace(cfg, data=f"synthetic:1,1,{cfg.num_classes}", train_subset=0, seed=0,
                               progress=False, on_divergence="stop")
