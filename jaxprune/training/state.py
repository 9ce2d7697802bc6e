"""The train state and how a run's is made: the model a config trains, the optimiser
(torch's SGD) and its learning-rate schedule, a fresh state at step 0 and the abstract
state checkpoints restore into. The jitted functions that update it are in `step`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import masks as masks_lib, models
from jaxprune.training import config as config_lib
from jaxprune.training import devices
from jaxprune.models import kernels


@flax.struct.dataclass
class TrainState:
    """Everything an epoch reads and writes. A pytree; saved whole by Orbax."""

    params: Any
    batch_stats: Any
    opt_state: Any
    masks: Any  # bool pytree mirroring params: True = kept (see jaxprune.masks)
    step: jax.Array  # int32: SGD steps taken so far in this run
    key: jax.Array  # uint32 key data of the run's PRNG key


def build_model(cfg: config_lib.TrainConfig):
    """The Flax module `cfg` trains: its --model at its --width, with --data's class count."""
    return models.get(cfg.model).build(cfg.num_classes, cfg.width, cfg.dtype, tuple(cfg.channels))


def images_per_epoch(cfg: config_lib.TrainConfig, n_train: int) -> int:
    """Training images one epoch sees: all of them, or only full batches with drop_last."""
    return n_train - n_train % cfg.batch_size if cfg.drop_last else n_train


def steps_per_epoch(cfg: config_lib.TrainConfig, n_train: int) -> int:
    """SGD steps per epoch: every image (the last batch partial), or only full batches."""
    return n_train // cfg.batch_size if cfg.drop_last else -(-n_train // cfg.batch_size)


def _lr_at(cfg: config_lib.TrainConfig, steps_per_epoch: int, count, xp):
    """The lr after `count` SGD steps of this run, computed with array module `xp` (jax.numpy or numpy).

    epoch-cosine is torch's CosineAnnealingLR(T_max) with eta_min 0, stepped
    once per epoch: constant within an epoch, lr/2 (1 + cos(pi e / T_max))
    for 0-based schedule epoch e. cosine anneals per step to 0 over the
    schedule's epochs, as optax.cosine_decay_schedule does. multistep is
    lr * gamma^(milestones <= e), torch's MultiStepLR stepped once per epoch
    (open_lth's milestone drops land on the same steps). The schedule's
    epochs start at cfg.schedule_start (an lr-rewind phase replays its
    parent's last epochs), and span schedule_start + epochs. A warm-up then
    scales the lr of schedule step t (from 0) by min(1, t / warmup_steps), as
    open_lth does: the first step trains at lr 0.
    """
    lr = _schedule_lr(cfg, steps_per_epoch, count, xp)
    if cfg.warmup_steps:
        t = count + steps_per_epoch * cfg.schedule_start
        lr = lr * xp.minimum(xp.asarray(t, lr.dtype) / cfg.warmup_steps, 1)
    return lr


def _schedule_lr(cfg: config_lib.TrainConfig, steps_per_epoch: int, count, xp):
    """`_lr_at` before the warm-up."""
    lr = xp.asarray(cfg.lr)  # float64 with numpy, and with jax when x64 is on: exact there
    if cfg.schedule == "constant":
        return lr
    span = cfg.schedule_start + cfg.epochs
    if cfg.schedule == "multistep":
        epoch = count // steps_per_epoch + cfg.schedule_start
        drops = xp.sum(xp.asarray(cfg.milestones) <= epoch)
        return lr * xp.asarray(cfg.gamma, lr.dtype) ** drops
    if cfg.schedule == "epoch-cosine":
        epoch = xp.asarray(count // steps_per_epoch + cfg.schedule_start, lr.dtype)
        progress = epoch / (cfg.t_max or span)
    else:
        total = max(steps_per_epoch * span, 1)
        progress = xp.asarray(xp.minimum(count + steps_per_epoch * cfg.schedule_start, total), lr.dtype) / total
    return lr * 0.5 * (1 + xp.cos(xp.pi * progress))


def learning_rate(cfg: config_lib.TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the run's 0-based SGD step count (see `_lr_at`)."""
    return functools.partial(_lr_at, cfg, steps_per_epoch, xp=jnp)


def epoch_lr(cfg: config_lib.TrainConfig, steps_per_epoch: int, epoch: int) -> float:
    """The lr of epoch `epoch` (1-based): its first step's, the whole epoch's for epoch-cosine.

    Computed with numpy on the host: an eager JAX op would queue behind the
    epoch in flight and stall the pipeline until it ends.
    """
    return float(_lr_at(cfg, steps_per_epoch, (epoch - 1) * steps_per_epoch, np))


def make_optimizer(cfg: config_lib.TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): decay is added to the gradient before momentum."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(learning_rate(cfg, steps_per_epoch), momentum=cfg.momentum),
    )


def _new_state(
    variables: dict, tx: optax.GradientTransformation, seed: int, masks: Any = None, exclude: tuple = ()
) -> TrainState:
    """The state at step 0 (traceable, so `abstract_state` can take its shapes)."""
    params = variables["params"]
    if masks is None:
        masks = masks_lib.init_masks(params, kernels.mask_filter(tuple(exclude)))
    params = masks_lib.apply_masks(params, masks)
    return TrainState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),  # {} for a model without BatchNorm
        opt_state=tx.init(params),
        masks=masks,
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(jax.random.key(seed)),
    )


def create_train_state(
    variables: dict, tx: optax.GradientTransformation, seed: int, masks: Any = None, mesh=None, exclude: tuple = ()
) -> TrainState:
    """A fresh optimiser over a copy of `variables`, params masked so pruned weights start at 0.

    Without `masks`, all are kept, and the leaves `exclude` names are not prunable."""
    state = _new_state(variables, tx, seed, masks, exclude)
    # Fresh buffers, since the train step donates (consumes) its state while
    # `variables` may be needed again (a parent pruned to several targets);
    # committed, so the step's outputs match its inputs and it never recompiles.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    return devices.put_replicated(state, mesh if mesh is not None else devices.mesh_for(0, 0))


def abstract_state(cfg: config_lib.TrainConfig, tx=None, mesh=None) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of a TrainState for `cfg`, computing nothing.

    The restore target for checkpoints: a checkpoint written on any device
    restores onto the devices this process uses (`mesh`, default: cfg.devices
    for one run).
    """
    model = build_model(cfg)
    tx = tx or make_optimizer(cfg, 1)

    def make():
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
        return _new_state(variables, tx, 0, None, cfg.exclude)

    mesh = mesh if mesh is not None else devices.mesh_for(cfg.devices, cfg.batch_size)
    return devices.abstract_replicated(jax.eval_shape(make), mesh)
