"""Gradual magnitude pruning (Zhu & Gupta 2017), the parts that run on the device.

Everything here is jittable and needs no host sync, so a training loop can
prune inside ``jax.jit`` or ``lax.scan`` every ``delta_t`` steps::

    def train_step(state, batch):
        ...  # the usual update
        due = is_update_step(state.step, begin_step=t0, delta_t=dt, n=n)
        s = polynomial_sparsity(state.step, initial=0.0, final=0.9, begin_step=t0, n=n, delta_t=dt)
        masks = jax.lax.cond(
            due, lambda: update_masks_on_device(state.params, state.masks, s), lambda: state.masks
        )
        params = apply_masks(state.params, masks)  # pruned weights to 0 at once
        opt_state = update_masks(state.opt_state, masks)  # if the optimiser holds keep_pruned
        ...

Counts are exact integers: ``round(sparsity * total)`` of the float32
sparsity, computed in integer arithmetic on the device (`count_for_sparsity`),
so the same schedule gives the same masks on every backend and the host
`prune(..., sparsity=float(s))` agrees with it for the same float32 ``s``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.masks import scores, selection
from jaxprune.masks.core import Filter, PyTree, _entries, _ranked
from jaxprune.masks.pruning import _score_leaves


def _window(begin_step: int, end_step: int | None, n: int | None, delta_t: int | None) -> tuple[int, int]:
    if begin_step < 0:
        raise ValueError(f"begin_step must be >= 0, got {begin_step}")
    if end_step is None:
        if n is None or delta_t is None:
            raise TypeError("give end_step, or n and delta_t (pruning ends at begin_step + n * delta_t)")
        if n < 0 or delta_t <= 0:
            raise ValueError(f"need n >= 0 and delta_t > 0, got n={n}, delta_t={delta_t}")
        end_step = begin_step + n * delta_t
    elif n is not None and end_step != begin_step + n * (delta_t or 0):
        raise ValueError(f"end_step {end_step} != begin_step + n * delta_t; give one or the other")
    if end_step < begin_step:
        raise ValueError(f"end_step {end_step} is before begin_step {begin_step}")
    return begin_step, end_step


def _elapsed(step, t0: int, span: int) -> jax.Array:
    """``clip(step - t0, 0, span)`` computed exactly, in integers, for any integer step.

    A Python or numpy integer is taken exactly (any size); a JAX integer array
    (traced int32, or int64 under x64) in its own dtype, with `t0` and `span`
    clamped to its range so nothing overflows (the result fits the dtype); a
    Python integer as the float32 nearest the exact offset.
    """
    if isinstance(step, (int, np.integer)):  # exact in Python; as float32 it is rounded once
        return jnp.asarray(np.float32(min(max(int(step) - t0, 0), span)))
    t = jnp.asarray(step)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"step must be an integer, got {t.dtype}")
    top = int(jnp.iinfo(t.dtype).max)
    if t0 > top:  # a step of this dtype never gets there
        return jnp.zeros((), t.dtype)
    # t >= 0 and 0 <= t0 <= top, so t - t0 cannot overflow.
    return jnp.clip(jnp.maximum(t, 0) - t.dtype.type(t0), 0, min(span, top))


def polynomial_sparsity(
    step,
    *,
    initial: float,
    final: float,
    begin_step: int,
    end_step: int | None = None,
    n: int | None = None,
    delta_t: int | None = None,
    power: float = 3,
) -> jax.Array:
    """Zhu & Gupta's schedule: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** power``.

    Args:
      step: the training step ``t``: a Python int (any size) or an integer
        array (a traced int32, or int64). ``t - t0`` is taken in integers, so
        the schedule is exact however long the run.
      initial, final: sparsities ``s_i`` and ``s_f`` in [0, 1] (fractions pruned).
      begin_step: ``t0``, when pruning starts.
      end_step: ``t0 + n Δt``, when it ends; or give `n` and `delta_t` instead.
      power: 3 in the paper.

    Returns:
      float32 sparsity: `initial` before ``t0``, `final` from the end step on
      (clamped outside the window). Jittable.
    """
    t0, t1 = _window(begin_step, end_step, n, delta_t)
    for name, value in (("initial", initial), ("final", final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} sparsity {value} is outside [0, 1]")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if t1 == t0:
        progress = (_elapsed(step, t0 - 1, 1) if t0 > 0 else jnp.ones((), jnp.int32)).astype(jnp.float32)
    else:
        # The offset from t0 in integers first (as TF-MOT does): a float32 step
        # is exact only below 2**24, so ``float(t) - t0`` froze or jumped on
        # long runs. The offset, at most the window's length, is converted last.
        progress = _elapsed(step, t0, t1 - t0).astype(jnp.float32) / jnp.float32(t1 - t0)
    return jnp.float32(final) + jnp.float32(initial - final) * (1.0 - progress) ** power


def is_update_step(
    step, *, begin_step: int, delta_t: int, end_step: int | None = None, n: int | None = None
) -> jax.Array:
    """True at ``t0, t0 + Δt, ..., t0 + n Δt`` (the steps Zhu & Gupta prune at); jittable."""
    t0, t1 = _window(begin_step, end_step, n, delta_t)
    t = jnp.asarray(step)
    return (t >= t0) & (t <= t1) & ((t - t0) % delta_t == 0)


def count_for_sparsity(sparsity, total: int) -> jax.Array:
    """``round(sparsity * total)``, half to even, exactly, as an int32; jittable.

    `sparsity` is taken as float32 (clipped to [0, 1]; NaN counts as 0) and the
    product is formed exactly: the 24-bit significand times `total` as a 64-bit
    integer in two uint32 halves, then shifted with round-half-to-even. So it
    equals Python's ``round(Fraction(float(s32)) * total)`` for every input,
    with no float32 rounding of the product (which would be off by up to 64
    for a total of 2**31). `total` must be a static int below 2**31.
    """
    if not 0 <= total < 2**31:
        raise ValueError(f"total {total} must be in [0, 2**31)")
    s = jnp.asarray(sparsity, jnp.float32)
    s = jnp.clip(jnp.where(jnp.isnan(s), 0.0, s), 0.0, 1.0)
    u32 = jnp.uint32
    bits = jax.lax.bitcast_convert_type(s, u32)
    exponent = (bits >> 23).astype(jnp.int32)
    significand = jnp.where(exponent > 0, (bits & 0x7FFFFF) | 0x800000, bits & 0x7FFFFF)
    # s == significand / 2**shift, and shift >= 23 because s <= 1.
    shift = jnp.where(exponent > 0, 150 - exponent, 149)
    m1, m0 = significand >> 16, significand & 0xFFFF
    n1, n0 = u32(total >> 16), u32(total & 0xFFFF)
    # P = m * total = hi * 2**32 + lo; every partial product fits in 32 bits.
    p00, mid, p11 = m0 * n0, m1 * n0 + m0 * n1, m1 * n1
    lo = p00 + (mid << 16)
    hi = p11 + (mid >> 16) + (lo < p00).astype(u32)
    # shift < 32: the quotient takes bits of both halves; otherwise of hi only.
    # Shift amounts are clamped to [0, 31] on both branches (the unused one too).
    a = jnp.clip(shift, 1, 31).astype(u32)
    q_a = (hi << (32 - a)) | (lo >> a)
    half_a = (lo >> (a - 1)) & 1
    rest_a = (lo & ((u32(1) << (a - 1)) - 1)) != 0
    b = jnp.clip(shift - 32, 0, 31).astype(u32)
    c = jnp.maximum(b, 1) - 1
    q_b = hi >> b
    half_b = jnp.where(b == 0, lo >> 31, (hi >> c) & 1)
    rest_b = jnp.where(b == 0, (lo & 0x7FFFFFFF) != 0, ((hi & ((u32(1) << c) - 1)) != 0) | (lo != 0))
    low = shift < 32
    q = jnp.where(low, q_a, q_b)
    half = jnp.where(low, half_a, half_b) == 1
    rest = jnp.where(low, rest_a, rest_b)
    round_up = half & (rest | ((q & 1) == 1))
    return (q + round_up.astype(u32)).astype(jnp.int32)


def update_masks_on_device(
    params: PyTree,
    masks: PyTree,
    sparsity=None,
    *,
    pruned=None,
    score: str | Callable | scores.Score = "magnitude",
    key: jax.Array | None = None,
    filter: Filter | None = None,
    score_args: Mapping[str, PyTree] | None = None,
) -> PyTree:
    """Masks pruned globally to an exact total, inside jit, with no host sync.

    Give one of:
      sparsity: float (or traced float32) in [0, 1]: the fraction of ranked
        weights pruned afterwards, ``count_for_sparsity(sparsity, total)`` of them.
      pruned: int (or traced int32): that many pruned afterwards.

    Monotone: if at least that many are pruned already nothing changes, and
    only kept weights are ever pruned; weights already pruned stay pruned even
    when they have grown. The new pruned weights are the lowest-scored kept
    ones across all ranked leaves (``"global"``), ties by position: the same
    masks as the host ``prune_global(params, masks, k)`` with the same count
    ``k`` of new pruned weights. Uses the bisection kernel of `selection`
    (31 fused passes over the weights; fast on accelerators, ~0.5 s per call
    for ResNet18 on a CPU).

    `score`, `key`, `filter` and `score_args` are as in `prune` (``"lamp"``
    here is its float32 device form).
    """
    if (sparsity is None) == (pruned is None):
        raise TypeError("give exactly one of sparsity and pruned=")
    resolved = scores.resolve(score, key)
    entries, treedef = _entries(params, masks)
    chosen = _ranked(entries, filter)
    alive = [entries[i].mask for i in chosen]
    total = sum(int(m.size) for m in alive)
    target = count_for_sparsity(sparsity, total) if pruned is None else jnp.asarray(pruned, jnp.int32)
    kept = sum(jnp.sum(m, dtype=jnp.int32) for m in alive)
    k = jnp.clip(target - (total - kept), 0, kept)
    extras = _score_leaves(score_args, params, chosen)
    keys = resolved.keys([entries[i].param for i in chosen], alive, key, extras)
    selected = selection.select_lowest(keys, k, impl="jax")
    leaves = [e.mask for e in entries]
    for i, m, sel in zip(chosen, alive, selected):
        leaves[i] = jnp.logical_and(m, jnp.logical_not(sel))
    return jax.tree_util.tree_unflatten(treedef, leaves)
