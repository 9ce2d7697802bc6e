"""The pure functions of a `Recipe` (model, optimiser, config, mesh): one masked SGD
step, an epoch's batches and its scan of steps, evaluation, the vmap over a run axis,
and `make_step_fns`, which jits them into a recipe's `StepFns`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import masks as masks_lib
from jaxprune.training import config as config_lib
from jaxprune.data import sources as data
from jaxprune.training import devices
from jaxprune.models import kernels
from jaxprune.training.state import TrainState


# ---------------------------------------------------------------- pure steps


class Recipe(NamedTuple):
    """What the pure training functions read besides their arguments (hashable,
    so functions bound to it with `functools.partial` can be jitted and cached)."""

    model: Any  # the Flax module
    tx: optax.GradientTransformation
    cfg: config_lib.TrainConfig
    mesh: Any  # devices.mesh: runs x data
    steps_per_epoch: int = 0  # gradual pruning's default update interval
    masked: bool = True  # False only to measure what masking costs


class StepFns(NamedTuple):
    """The jitted functions of one recipe: each takes one run's state, or states
    stacked along a leading run axis when built with runs=True."""

    train_epoch: Callable  # (state, images, labels, epoch) -> (state, metrics); host loop over chunks
    train_chunk: Callable  # (state, images, labels, batches) -> (state, loss_sum, correct); donates state
    epoch_batches: Callable  # (state, epoch, n) -> (full, rest) indices
    evaluate: Callable  # (params, batch_stats, masks, images, labels) -> metrics
    train_step: Callable  # (state, images, labels) -> (state, (loss_sum, correct))
    compile_epoch: Callable  # (state, images, labels, epoch, eval_sets) -> None; see `compile_epoch`


def dispatch_steps(cfg: config_lib.TrainConfig, steps: int) -> int:
    """SGD steps per dispatch (>= 1): cfg.steps_per_dispatch, or by platform when 0."""
    if cfg.steps_per_dispatch > 0:
        return max(1, min(cfg.steps_per_dispatch, steps))
    # XLA:CPU runs convolutions ~7x slower inside a loop than outside one;
    # accelerators gain from dispatching the whole epoch at once.
    return 1 if jax.default_backend() == "cpu" else max(1, steps)


def _keys(state: TrainState):
    key = jax.random.wrap_key_data(state.key)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)  # (data order, augmentation)


# ---------------------------------------------------------------- pure functions of a recipe


def split_batch(mesh, x, axis: int = 0):
    """Data parallelism: the batch divided among the mesh's data devices (XLA adds the
    all-reduces). A no-op on one device, and for a partial batch that does not divide
    evenly (computed replicated instead). Under the runs vmap the run axis is split too."""
    n_data = devices.data_shards(mesh)
    if n_data == 1 or x.shape[axis] % n_data:
        return x
    return jax.lax.with_sharding_constraint(x, devices.batch_split(mesh, axis))


def gradual_masks(r: Recipe, state: TrainState, params):
    """Zhu & Gupta: after step t (1-based) at t = dt, 2 dt, ..., n dt, the masks are
    recomputed on the device to exactly round(s_t * total) pruned; between updates
    they stay. n dt is the first multiple of dt at or past prune_end of the run's steps."""
    cfg = r.cfg
    dt = cfg.prune_every or r.steps_per_epoch
    n = max(1, math.ceil(cfg.prune_end * r.steps_per_epoch * cfg.epochs / dt))
    t = state.step + 1
    s = masks_lib.polynomial_sparsity(t, initial=cfg.prune_from, final=cfg.prune_to, begin_step=0, n=n, delta_t=dt)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), t)  # used by "random" only

    def update():
        return masks_lib.update_masks_on_device(
            params, state.masks, s, score=cfg.prune_score, key=key, filter=kernels.mask_filter(cfg.exclude)
        )

    due = masks_lib.is_update_step(t, begin_step=0, delta_t=dt, n=n)
    return jax.lax.cond(due, update, lambda: state.masks)


def train_step(r: Recipe, state: TrainState, images, labels):
    """One masked SGD step on a uint8 batch. Returns (state, (loss_sum, correct))."""
    images, labels = split_batch(r.mesh, images), split_batch(r.mesh, labels)
    _, aug_key = _keys(state)
    if r.cfg.augment:
        images = data.augment(jax.random.fold_in(aug_key, state.step), images)
    x = data.normalize(images, r.cfg.normalization)

    def loss_fn(params):
        logits, updates = r.model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        # Metric sums in float32 whatever the compute dtype (and with x64 on).
        return losses.mean(), (losses.sum().astype(jnp.float32), logits, updates.get("batch_stats", {}))

    grads, (loss_sum, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    # The optimiser is elementwise, so masking the new params and momentum
    # gives exactly the step of a masked gradient, in one fused pass.
    updates, opt_state = r.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    masks = gradual_masks(r, state, params) if r.cfg.prune_to else state.masks
    if r.masked:
        params = masks_lib.apply_masks(params, masks)
        # Momentum of pruned weights: 0, even if the optimiser state predates the mask.
        opt_state = optax.tree_utils.tree_map_params(
            r.tx,
            masks_lib.zero_pruned,
            opt_state,
            masks,
            transform_non_params=lambda v: v,
        )
    correct = jnp.sum(jnp.argmax(logits, -1) == labels, dtype=jnp.int32)
    new = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, masks=masks, step=state.step + 1
    )
    return new, (loss_sum, correct)


def epoch_batches(r: Recipe, state: TrainState, epoch, n: int):
    """Indices into the training split from a fresh permutation per epoch:
    (full, rest): full batches (steps, batch), and the partial last batch
    (n % batch,), or None when there is none or the config drops it."""
    order_key, _ = _keys(state)
    perm = jax.random.permutation(jax.random.fold_in(order_key, epoch), n)
    steps, rest = divmod(n, r.cfg.batch_size)
    full = perm[: steps * r.cfg.batch_size].reshape(steps, r.cfg.batch_size)
    return full, (perm[steps * r.cfg.batch_size :] if rest and not r.cfg.drop_last else None)


def train_chunk(r: Recipe, state: TrainState, images, labels, batches):
    """A scan of train steps over the rows of `batches`: one dispatch."""

    def body(carry, idx):
        state, loss_sum, correct = carry
        state, (l, c) = train_step(r, state, images[idx], labels[idx])
        return (state, loss_sum + l, correct + c), None

    init = (state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    if batches.shape[0] == 1:  # no loop at all: XLA:CPU is slow inside one
        return body(init, batches[0])[0]
    (state, loss_sum, correct), _ = jax.lax.scan(body, init, batches)
    return state, loss_sum, correct


def evaluate(r: Recipe, params, batch_stats, masks, images, labels):
    """Loss and accuracy over every image (the last batch is padded, the padding ignored)."""
    n_data = devices.data_shards(r.mesh)
    n = images.shape[0]
    b = -(-min(r.cfg.eval_batch_size, n) // n_data) * n_data  # splits evenly over devices
    nb = -(-n // b)
    pad = nb * b - n
    images = split_batch(r.mesh, jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(nb, b, *images.shape[1:]), 1)
    labels = split_batch(r.mesh, jnp.pad(labels, (0, pad)).reshape(nb, b), 1)
    valid = split_batch(r.mesh, (jnp.arange(nb * b) < n).reshape(nb, b), 1)
    variables = {"params": masks_lib.apply_masks(params, masks), "batch_stats": batch_stats}

    def body(carry, batch):
        x, y, v = batch
        logits = r.model.apply(variables, data.normalize(x, r.cfg.normalization), train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = jnp.argmax(logits, -1) == y
        loss_sum = jnp.sum(loss * v).astype(jnp.float32)
        return (carry[0] + loss_sum, carry[1] + jnp.sum(hit & v, dtype=jnp.int32)), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (loss, correct), _ = jax.lax.scan(body, init, (images, labels, valid))
    # Kept weights per prunable kernel (leaf order), for the sparsity, size and FLOPs columns.
    kept = [jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(masks) if m.ndim]
    kept = jnp.stack(kept) if kept else jnp.zeros((0,), jnp.int32)
    return {"test_loss": loss / n, "test_acc": correct / n, "kept": kept}


def over_runs(mesh, f: Callable, in_axes: tuple) -> Callable:
    """f vmapped over a leading run axis (in_axes: 0 for stacked arguments, None for
    shared ones), split over the mesh's runs dimension on the way in and out."""
    by_run = devices.run_split(mesh)
    vf = jax.vmap(f, in_axes=in_axes, spmd_axis_name=devices.RUNS)

    def g(*args):
        args = [jax.lax.with_sharding_constraint(a, by_run) if ax == 0 else a for a, ax in zip(args, in_axes)]
        return jax.lax.with_sharding_constraint(vf(*args), by_run)

    return g


def _epoch_chunks(batches_fn: Callable, cfg: config_lib.TrainConfig, state: TrainState, n: int, epoch):
    """An epoch's batches of indices, one array per dispatch of the chunk function,
    and the number of images they hold."""
    full, rest = batches_fn(state, epoch, n)  # (steps, batch) and (rest,), each with a leading run axis when vmapped
    steps = full.shape[-2]
    chunk = dispatch_steps(cfg, steps)
    seen = steps * cfg.batch_size
    chunks = [full[..., start : start + chunk, :] for start in range(0, steps, chunk)]
    if rest is not None:
        chunks.append(rest[..., None, :])
        seen += rest.shape[-1]
    return chunks, seen


def train_epoch(batches_fn: Callable, chunk_fn: Callable, cfg: config_lib.TrainConfig, state: TrainState,
                images, labels, epoch: int):
    """One pass over a fresh permutation: every image, unless cfg.drop_last (host side).

    Runs `dispatch_steps(cfg)` full batches per dispatch of `chunk_fn`, then the
    partial last batch as one step of its own shape (a second compilation);
    metrics stay on the device until the caller reads them.
    """
    chunks, seen = _epoch_chunks(batches_fn, cfg, state, images.shape[0], epoch)
    loss_sum, correct = 0.0, 0
    for batches in chunks:
        state, l, c = chunk_fn(state, images, labels, batches)
        loss_sum, correct = loss_sum + l, correct + c
    return state, {"train_loss": loss_sum / seen, "train_acc": correct / seen}


def compile_epoch(batches_fn: Callable, chunk_fn: Callable, evaluate_fn: Callable, cfg: config_lib.TrainConfig,
                  state: TrainState, images, labels, epoch: int, eval_sets=()) -> None:
    """Compiles (without running) every program an epoch of `train_epoch` and its
    evaluations on `eval_sets` ((images, labels) pairs) will run, so that the first
    epoch's time is training, not compilation. The jitted functions keep what is
    compiled here; their calls then find it."""
    chunks, _ = _epoch_chunks(batches_fn, cfg, state, images.shape[0], epoch)
    for batches in {b.shape: b for b in chunks}.values():
        chunk_fn.lower(state, images, labels, batches).compile()
    for x, y in eval_sets:
        evaluate_fn.lower(state.params, state.batch_stats, state.masks, x, y).compile()


def make_step_fns(
    model, tx, cfg: config_lib.TrainConfig, runs: bool = False, masked: bool = True, steps_per_epoch: int = 0,
    mesh=None,
) -> StepFns:
    """The recipe's functions, jitted (train_chunk donating its state). With runs=True
    each is `jax.vmap`ped over a leading run axis of states (independent runs, each with
    its own key, masks and weights; the data set shared). masked=False drops the masking
    from the update (only to measure what masking costs). mesh (default: cfg.devices for
    one run) splits the run axis over its ``runs`` dimension and each batch over ``data``."""
    if cfg.prune_to and not (cfg.prune_every or steps_per_epoch):
        raise ValueError("gradual pruning (prune_to) needs steps_per_epoch or prune_every")
    mesh = mesh if mesh is not None else devices.mesh_for(cfg.devices, cfg.batch_size)
    r = Recipe(model, tx, cfg, mesh, steps_per_epoch, masked)
    bind = functools.partial
    per_run = {  # name: (function, in_axes over runs)
        "train_step": (bind(train_step, r), (0, None, None)),
        "train_chunk": (bind(train_chunk, r), (0, None, None, 0)),
        "evaluate": (bind(evaluate, r), (0, 0, 0, None, None)),
    }
    fns = {k: over_runs(mesh, f, axes) if runs else f for k, (f, axes) in per_run.items()}
    batches = bind(epoch_batches, r)
    batches_fn = jax.jit(
        (lambda state, epoch, n: over_runs(mesh, bind(batches, n=n), (0, None))(state, epoch)) if runs else batches,
        static_argnums=2,
    )
    chunk_fn = jax.jit(fns["train_chunk"], donate_argnums=0)
    evaluate_fn = jax.jit(fns["evaluate"])
    return StepFns(
        train_epoch=bind(train_epoch, batches_fn, chunk_fn, cfg), train_chunk=chunk_fn, epoch_batches=batches_fn,
        evaluate=evaluate_fn, train_step=jax.jit(fns["train_step"]),
        compile_epoch=bind(compile_epoch, batches_fn, chunk_fn, evaluate_fn, cfg),
    )
