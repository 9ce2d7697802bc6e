"""Masks in anyone's training loop: an optax transformation that keeps pruned weights at 0.

Chain it after any optimiser::

    tx = optax.chain(optax.adamw(1e-3, weight_decay=1e-4), keep_pruned(masks))
    opt_state = tx.init(params)
    ...
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)   # pruned weights: exactly +0.0

For a pruned weight the update becomes ``-param``, so after
``optax.apply_updates`` (``param + update``) it is exactly +0.0 whatever the
optimiser did: momentum, Adam moments and decoupled weight decay can no longer
move it, and a weight pruned since the last step (not yet zeroed) is zeroed
now. Kept weights get the optimiser's update unchanged. The optimiser's own
state for pruned weights keeps evolving, but never reaches the weights.

The masks live in the transformation's state (`KeepPrunedState`), not in a
closure, so a jitted train step takes them as an input: changing them (gradual
pruning) needs no recompilation. Swap them with `update_masks`.

Unlike ``optax.masked`` (which picks the leaves an inner transformation applies
to), this acts inside leaves, weight by weight; the leaves a mask keeps whole
(0-d True, e.g. biases) pass through untouched.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.masks.core import PyTree, _entries, aligned


class KeepPrunedState(NamedTuple):
    """The masks `keep_pruned` applies: bool, mirroring params, True = kept."""

    masks: PyTree


def keep_pruned(masks: PyTree) -> optax.GradientTransformation:
    """An optax transformation that holds pruned weights at exactly +0.0.

    Args:
      masks: masks mirroring the params (`init_masks`, `prune`, ...). To prune
        gradually, start from ``init_masks(params)`` and swap in new masks with
        `update_masks`. NNX: masks of ``nnx.state(model, nnx.Param)`` work with
        ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

    Returns:
      A GradientTransformation whose ``update(updates, state, params)`` needs
      ``params`` (``optax.chain`` passes them on). Put it last in the chain, so
      that nothing after it changes the updates of pruned weights.
    """

    def init_fn(params):
        del params  # the masks are given; also keeps optax.tree_map_params working
        return KeepPrunedState(masks)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "keep_pruned needs the params: call tx.update(grads, opt_state, params)"
            )
        current = aligned(state.masks, updates)
        _entries(updates, current)  # shapes and dtypes, checked while tracing

        def one(u, p, m):
            if np.ndim(m) == 0:
                return u
            return jnp.where(m, u, -jnp.asarray(p).astype(u.dtype))

        return jax.tree.map(one, updates, aligned(params, updates), current), state

    return optax.GradientTransformation(init_fn, update_fn)


def update_masks(opt_state: Any, masks: PyTree) -> Any:
    """`opt_state` with new masks in every `keep_pruned` state it holds; jittable.

    Raises ValueError if it holds none (the optimiser was built without
    `keep_pruned`).
    """
    found = []

    def swap(node):
        if isinstance(node, KeepPrunedState):
            found.append(node)
            return KeepPrunedState(aligned(masks, node.masks))
        return node

    new = jax.tree.map(swap, opt_state, is_leaf=lambda x: isinstance(x, KeepPrunedState))
    if not found:
        raise ValueError("opt_state holds no keep_pruned state; chain keep_pruned(masks) into the optimiser")
    return new
