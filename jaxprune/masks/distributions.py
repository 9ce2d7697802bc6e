"""Distributions: how many weights each leaf keeps, given how many all of them keep.

- ``"global"``: no quota per leaf; one ranking across all ranked leaves decides
  (`prune` handles it; `layer_targets` has nothing to compute).
- ``"uniform"``: every leaf keeps the same fraction, ``kept_l ∝ size_l``.
- ``"erk"``: Erdős–Rényi-Kernel (Evci et al. 2020, RigL): a leaf's density is
  proportional to ``sum(shape) / prod(shape)``, i.e. (n_in + n_out + k_h + k_w)
  / (n_in n_out k_h k_w) for a conv kernel and (n_in + n_out) / (n_in n_out) for
  a dense one, so ``kept_l ∝ sum(shape_l)``. As in RigL's ``get_sparsities``,
  a leaf that would come out denser than it may be is held at its limit and
  the rest is re-scaled to meet the total, repeatedly, until none overflows.

The limit of a leaf is what it keeps now (its size when dense): quotas never
ask a leaf to regain pruned weights, which is what keeps pruning over rounds
monotone. Counts are exact integers: the real-valued quotas are rounded by the
largest-remainder method (ties to the earlier leaf), so they sum to the total
exactly. The arithmetic is rational (`fractions.Fraction`), not floating point.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Sequence

Shape = Sequence[int]


def uniform_weight(shape: Shape) -> int:
    """Uniform: a leaf's share of the kept weights is its size."""
    return math.prod(shape)


def erk_weight(shape: Shape) -> int:
    """ERK: density ∝ sum(shape) / prod(shape), so the kept count ∝ sum(shape)."""
    return sum(shape) if math.prod(shape) else 0


# name -> weight(shape) (kept counts are proportional to it, within limits);
# None for "global", which ranks instead of dividing.
DISTRIBUTIONS: dict[str, Callable[[Shape], int] | None] = {
    "global": None,
    "uniform": uniform_weight,
    "erk": erk_weight,
}


def check(distribution: str) -> Callable[[Shape], int] | None:
    """The weight function of a distribution name (None for "global"); ValueError if unknown."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {distribution!r}; choose from {sorted(DISTRIBUTIONS)}"
        )
    return DISTRIBUTIONS[distribution]


def layer_targets(
    shapes: Sequence[Shape],
    target_kept: int,
    *,
    distribution: str,
    kept: Sequence[int] | None = None,
) -> list[int]:
    """Weights each leaf keeps: exact integers that sum to `target_kept`.

    Args:
      shapes: the leaves' shapes (the ranked leaves, in order).
      target_kept: how many weights all of them keep together.
      distribution: ``"uniform"`` or ``"erk"`` (or a name added to `DISTRIBUTIONS`).
      kept: how many each keeps now (default: its size, i.e. dense). No quota
        exceeds it, so following the quotas only ever prunes.

    Returns:
      ``kept_l`` per leaf with ``sum == target_kept`` and ``kept_l <= kept[l]``:
      the largest-remainder rounding of ``min(kept[l], eps * weight(shape_l))``,
      where ``eps`` is the one scale that makes those sum to `target_kept`.
    """
    weight = check(distribution)
    if weight is None:
        raise ValueError("the 'global' distribution ranks all leaves together; it has no per-leaf quotas")
    sizes = [math.prod(s) for s in shapes]
    limits = list(sizes if kept is None else kept)
    if len(limits) != len(sizes) or any(not 0 <= c <= n for c, n in zip(limits, sizes)):
        raise ValueError(f"kept counts {limits} do not fit the leaf sizes {sizes}")
    if not 0 <= target_kept <= sum(limits):
        raise ValueError(
            f"target of {target_kept} kept weights is outside [0, {sum(limits)}] (what is kept now)"
        )
    weights = [weight(tuple(s)) for s in shapes]
    # Water-filling: leaves whose share would pass their limit are held there
    # and the rest re-scaled. Holding a leaf only raises eps, so every leaf
    # held once stays held, and holding all offenders at once reaches the same
    # fixed point as RigL's one-at-a-time loop.
    held = [w == 0 or c == 0 for w, c in zip(weights, limits)]
    while True:
        free = sum(w for w, h in zip(weights, held) if not h)
        budget = target_kept - sum(c for c, h in zip(limits, held) if h)
        eps = Fraction(budget, free) if free else Fraction(0)
        over = [not h and eps * w > c for w, c, h in zip(weights, limits, held)]
        if not any(over):
            break
        held = [h or o for h, o in zip(held, over)]
    ideal = [Fraction(c) if h else eps * w for w, c, h in zip(weights, limits, held)]
    counts = [math.floor(x) for x in ideal]
    short = target_kept - sum(counts)
    # Largest remainders first; equal remainders go to the earlier leaf. A
    # leaf with a remainder is below its (integer) limit, so +1 stays within it.
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return counts
