"""N:M structured sparsity: in every group of M consecutive weights along a kernel's
reduction (input) axis, exactly N are kept.

2:4 is the pattern Ampere and Hopper tensor cores run faster (PyTorch's
``to_sparse_semi_structured``, TensorRT). The reduction axis of a Flax kernel is
-2: ``(in, out)`` for dense, ``(kh, kw, in, out)`` for conv. In PyTorch's layout
the groups run along dim 1, ``in``: consecutive in memory for a linear weight
``(out, in)`` (what ``to_sparse_semi_structured`` takes), and for a conv weight
in channels-last order ``(out, kh, kw, in)``, the order NVIDIA's ASP prunes
convs in.

Counting is exact and in integers: within a group the weights are ranked by
their score's int32 rank key (`jaxprune.masks.scores.float_keys`), ties broken
by position (the earlier weight pruned first, as everywhere in jaxprune), and
the M - N lowest go. Weights pruned already rank lowest and stay pruned, so a
group that had lost more than M - N keeps fewer than N. jaxpruner's NByM
rounds in float and breaks ties by sort order instead.

A leaf whose reduction axis is not a multiple of M (a 3-channel stem, a
classifier with 10 inputs) cannot hold the pattern and is left as it is;
`ineligible` says why.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

AXIS = -2  # a Flax kernel's input axis: (in, out) and (kh, kw, in, out)


def parse(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4). ValueError unless 0 < N < M, both integers."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m or not 0 < int(m[1]) < int(m[2]):
        raise ValueError(f"pattern {pattern!r}: use N:M with 0 < N < M, e.g. 2:4")
    return int(m[1]), int(m[2])


def ineligible(shape: tuple[int, ...], m: int, axis: int = AXIS) -> str | None:
    """Why a leaf of `shape` cannot hold an N:M pattern along `axis`, or None if it can."""
    if len(shape) < 2:
        return f"{len(shape)}-d, not a kernel"
    size = shape[axis]
    if size % m:
        return f"its input axis holds {size} weights, not a multiple of {m}"
    return None


def _grouped(x, m: int, axis: int, xp):
    """`x` with `axis` moved last and split into groups: (..., size // m, m)."""
    x = xp.moveaxis(x, axis, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // m, m)


def _ungrouped(x, shape: tuple[int, ...], axis: int, xp):
    moved = list(shape)
    moved.append(moved.pop(axis % len(shape)))
    return xp.moveaxis(x.reshape(moved), -1, axis)


def keep(keys, mask, n: int, m: int, axis: int = AXIS):
    """The new mask of one leaf: in each group of `m` along `axis`, the `n` highest
    rank keys kept (int32 keys, lower pruned first, `selection.DEAD` = pruned
    already, which goes first). numpy in, numpy out (exact, on the host); a JAX
    array in, a JAX array out (jittable, same result)."""
    xp = np if isinstance(keys, np.ndarray) and isinstance(mask, np.ndarray) else jnp
    live = xp.where(xp.asarray(mask), xp.asarray(keys), -1)  # pruned below every live key (>= 0)
    g = _grouped(live, m, axis, xp)
    if xp is np:
        order = np.argsort(g, axis=-1, kind="stable")
        rank = np.argsort(order, axis=-1, kind="stable")
    else:
        order = jnp.argsort(g, axis=-1, stable=True)
        rank = jnp.argsort(order, axis=-1, stable=True)
    kept = _ungrouped(rank >= m - n, tuple(live.shape), axis, xp)
    return xp.logical_and(xp.asarray(mask), kept)


def follows(mask, n: int, m: int, axis: int = AXIS) -> bool:
    """Whether every group of `m` along `axis` keeps at most `n` (exactly `n` if nothing
    else was pruned): the check PyTorch's semi-structured kernels need."""
    g = _grouped(np.asarray(mask), m, axis, np)
    return bool((g.sum(-1) <= n).all())
