"""Pruning on the host: exact counts, a score to rank by, a distribution to split by.

Counting conventions (``amount`` is the same as ``torch.nn.utils.prune``):

- ``sparsity`` is the fraction of the ranked weights that are pruned, in [0, 1].
- ``amount`` as a float in [0, 1] is the fraction of the *still remaining*
  ranked weights to prune now: ``round(amount * remaining)`` weights, with
  Python's round (half to even) of the float64 product, on the host. As an
  int it is the exact number of weights to prune now.

The *ranked* weights are those of the prunable leaves (mask leaves with
ndim >= 1), narrowed by ``filter`` when one is given.
"""

from __future__ import annotations

import numbers
from fractions import Fraction
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.masks import distributions, nm, scores, selection
from jaxprune.masks.core import Filter, PyTree, _entries, _place_like, _ranked, aligned, kept_counts, path_str


def _to_python_number(x):
    if hasattr(x, "dtype") and np.ndim(x) == 0 and not isinstance(x, (bool, int, float)):
        return np.asarray(x).item()
    return x


def _check_amount(amount):
    """Validates `amount` on its own (before any counting) and returns it as a Python number."""
    amount = _to_python_number(amount)
    if isinstance(amount, (bool, np.bool_)):
        raise TypeError(f"amount must be a float in [0, 1] or an int count, not bool {amount}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount {amount} is negative; give a count >= 0")
        return int(amount)
    if isinstance(amount, numbers.Real):
        if not 0.0 <= float(amount) <= 1.0:  # also rejects NaN
            raise ValueError(
                f"amount {amount} is outside [0, 1]; a float amount is the fraction "
                "of the remaining weights to prune"
            )
        return float(amount)
    raise TypeError(f"amount must be a float in [0, 1] or an int count, not {type(amount).__name__}")


def _check_sparsity(value) -> float:
    value = _to_python_number(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"sparsity must be a float in [0, 1], not {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"sparsity {value} is outside [0, 1]; it is the fraction of weights pruned")
    return float(value)


def _count_to_prune(amount, remaining: int, where: str = "") -> int:
    """The exact number of weights `amount` prunes out of `remaining`."""
    amount = _check_amount(amount)
    if isinstance(amount, int):
        if amount > remaining:
            raise ValueError(
                f"amount {amount} is larger than the {remaining} weights still remaining{where}"
            )
        return amount
    # Python float arithmetic and round-half-even, as torch does.
    return round(amount * remaining)


def pruned_count(sparsity: float, total: int) -> int:
    """``round(sparsity * total)`` of the exact product, half to even.

    The float's exact binary value is used (no float product rounding first),
    which is also what `count_for_sparsity` computes on the device from the
    float32 value, so host and device agree given the same float32.
    """
    return round(Fraction(_check_sparsity(sparsity)) * total)


# --------------------------------------------------------------------------
# Selecting


def _on_host(arrays) -> bool:
    return selection._all_on_cpu(arrays)


def _select_global(score: scores.Score, params, masks, k, key, extras) -> list:
    """The `k` lowest-ranked kept weights across all the given leaves."""
    if score.host_select is not None and not extras and _on_host([*params, *masks]):
        return score.host_select(params, masks, k)
    return selection.select_lowest(score.keys(params, masks, key, extras), k)


def _select_each(score: scores.Score, params, masks, ks, key, extras) -> list:
    """The ``ks[l]`` lowest-ranked kept weights of each leaf on its own."""
    if score.host_select is not None and not extras and _on_host([*params, *masks]):
        return [score.host_select([p], [m], k)[0] for p, m, k in zip(params, masks, ks)]
    keys = score.keys(params, masks, key, extras)
    return [selection.select_lowest([kk], k)[0] for kk, k in zip(keys, ks)]


def _prune_selected(masks, selected) -> list:
    """New masks with the selected weights set to False."""
    out = []
    for mask, sel in zip(masks, selected):
        # Only kept weights are ever selected, so xor clears exactly those.
        if isinstance(sel, np.ndarray):
            out.append(_place_like(np.not_equal(np.asarray(mask), sel), mask))
        else:
            out.append(jnp.not_equal(mask, sel))
    return out


def _score_leaves(score_args, params, indices) -> dict[str, list]:
    """``score_args`` pytrees (each mirroring params) as lists of the ranked leaves."""
    out = {}
    for name, tree in (score_args or {}).items():
        try:
            leaves = jax.tree.leaves(aligned(tree, params))
        except ValueError as e:
            raise ValueError(f"score_args[{name!r}] does not mirror params: {e}") from None
        out[name] = [leaves[i] for i in indices]
    return out


def _prune(params, masks, *, score, key, filter, score_args, counts: Callable) -> PyTree:
    """Shared by the host entry points: `counts(kept, shapes, names)` says how many go, and from where.

    It returns ``("global", k)`` (rank all chosen leaves together) or
    ``("each", [k_l, ...])`` (each leaf on its own).
    """
    entries, treedef = _entries(params, masks)
    chosen = _ranked(entries, filter)
    leaf_params = [entries[i].param for i in chosen]
    alive = [entries[i].mask for i in chosen]
    names = [path_str(entries[i].path) for i in chosen]
    kind, k = counts(kept_counts(alive), [tuple(m.shape) for m in alive], names)
    extras = _score_leaves(score_args, params, chosen)
    pick = _select_global if kind == "global" else _select_each
    new = _prune_selected(alive, pick(score, leaf_params, alive, k, key, extras))
    leaves = [e.mask for e in entries]
    for i, m in zip(chosen, new):
        leaves[i] = m
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _prune_pattern(params, masks, n: int, m: int, axis: int, *, score, key, filter, score_args) -> PyTree:
    """N:M on every ranked leaf that can hold it (`nm.ineligible`); the others keep their masks."""
    entries, treedef = _entries(params, masks)
    chosen = [i for i in _ranked(entries, filter) if nm.ineligible(tuple(np.shape(entries[i].mask)), m, axis) is None]
    leaves = [e.mask for e in entries]
    if not chosen:
        return jax.tree_util.tree_unflatten(treedef, leaves)
    leaf_params = [entries[i].param for i in chosen]
    alive = [entries[i].mask for i in chosen]
    keys = score.keys(leaf_params, alive, key, _score_leaves(score_args, params, chosen))
    if _on_host([*leaf_params, *alive]):  # exact and sync-free in numpy; the same masks as on a device
        keys = jax.device_get(keys)
        new = [_place_like(nm.keep(np.asarray(k), np.asarray(a), n, m, axis), a) for k, a in zip(keys, alive)]
    else:
        new = [nm.keep(k, a, n, m, axis) for k, a in zip(keys, alive)]
    for i, mask in zip(chosen, new):
        leaves[i] = mask
    return jax.tree_util.tree_unflatten(treedef, leaves)


# --------------------------------------------------------------------------
# The entry points


def prune(
    params: PyTree,
    masks: PyTree,
    amount: float | int | None = None,
    *,
    sparsity: float | None = None,
    distribution: str = "global",
    score: str | Callable | scores.Score = "magnitude",
    key: jax.Array | None = None,
    filter: Filter | None = None,
    score_args: Mapping[str, PyTree] | None = None,
    pattern: str | None = None,
    axis: int = nm.AXIS,
) -> PyTree:
    """Prunes to an exact count, ranking by `score`, split across leaves by `distribution`;
    or, with `pattern`, to an N:M pattern.

    Give exactly one of:
      amount: float in [0, 1]: prune ``round(amount * remaining)`` of the ranked
        weights still remaining (float64 product, half to even, like torch);
        int: prune exactly that many now.
      sparsity: the fraction of all ranked weights that should be pruned after
        this call: ``round(sparsity * total)`` of them (exact product, half to
        even; see `pruned_count`). If that many or more are pruned already,
        nothing changes: masks never regain weights.

    Either way the call fixes one total: how many ranked weights are kept
    afterwards. Then `distribution` decides which:

    - ``"global"``: the lowest-scored kept weights across all ranked leaves.
    - ``"uniform"`` / ``"erk"``: each leaf keeps its quota from
      `distributions.layer_targets` (exact integers summing to the total, no
      quota above what the leaf keeps now) and prunes the rest of its kept
      weights by `score`. So a study that prunes 10% of what remains per round
      (``amount=0.1``) removes the same total each round with any distribution,
      and every round only prunes.

    Args:
      params: the weights (any pytree).
      masks: current masks mirroring `params` (see `jaxprune.masks.core`).
      distribution: ``"global"``, ``"uniform"`` or ``"erk"``.
      score: a name in `SCORES` (``"magnitude"``, ``"random"``, ``"lamp"``, or
        one you registered), or ``fn(param, mask, **extras) -> float scores``;
        lower scores are pruned first.
      key: PRNG key, required by ``"random"``.
      filter: rank only the prunable leaves for which ``filter(path, param)``
        is True (e.g. `exclude`); the rest keep their masks and do not count
        in ``remaining``, ``total`` or the quotas.
      score_args: extra pytrees mirroring `params`, passed leaf by leaf to the
        score function as keyword arguments (e.g. ``{"grads": grads}``).
      pattern: ``"N:M"`` (e.g. ``"2:4"``) instead of `amount`/`sparsity`: in
        every group of M consecutive weights along `axis` of each ranked leaf,
        the N highest-scored are kept (see `jaxprune.masks.nm`; ties by
        position, weights pruned already go first). Leaves whose `axis` is not a
        multiple of M keep their masks (``sparsity_report(masks, pattern=...)``
        says so). `distribution` is not used.
      axis: the axis the N:M groups run along: -2, a Flax kernel's input axis.

    Returns:
      New masks: exactly the computed count of kept weights goes from True to
      False; weights already pruned stay pruned. Ties in a ranking are broken
      by position (leaf order of ``jax.tree.leaves``, then row-major), the
      earlier weight pruned first, so the result is deterministic.

    Not jittable: counts are exact on the host (one device sync). Inside a jitted
    training loop use `update_masks_on_device`.
    """
    if pattern is not None:
        if amount is not None or sparsity is not None:
            raise TypeError("pattern= fixes how many are kept; give neither amount nor sparsity= with it")
        n, m = nm.parse(pattern)
        return _prune_pattern(params, masks, n, m, axis, score=scores.resolve(score, key), key=key, filter=filter,
                              score_args=score_args)
    if (amount is None) == (sparsity is None):
        raise TypeError("give exactly one of amount (a fraction of what remains, or a count) and sparsity=")
    resolved = scores.resolve(score, key)
    weight = distributions.check(distribution)
    if amount is not None:
        _check_amount(amount)  # before any device work
    else:
        _check_sparsity(sparsity)

    def counts(kept, shapes, names):
        del names
        remaining = sum(kept)
        if amount is not None:
            k = _count_to_prune(amount, remaining)
        else:
            total = sum(int(np.prod(s)) for s in shapes)
            k = max(0, pruned_count(sparsity, total) - (total - remaining))
        if weight is None:
            return "global", k
        quota = distributions.layer_targets(shapes, remaining - k, distribution=distribution, kept=kept)
        return "each", [c - q for c, q in zip(kept, quota)]

    return _prune(params, masks, score=resolved, key=key, filter=filter, score_args=score_args, counts=counts)


def prune_global(
    params: PyTree,
    masks: PyTree,
    amount: float | int,
    *,
    method: str = "magnitude",
    key: jax.Array | None = None,
    filter: Filter | None = None,
) -> PyTree:
    """Prunes across all prunable leaves together, like ``torch``'s ``global_unstructured``.

    ``prune(params, masks, amount, distribution="global", score=method, ...)``;
    see `prune` for `amount`, ties and `filter`. `method` is a name in `METHODS`.
    """
    return prune(params, masks, amount, distribution="global", score=method, key=key, filter=filter)


def prune_layerwise(
    params: PyTree,
    masks: PyTree,
    amount: float | int,
    *,
    method: str = "magnitude",
    key: jax.Array | None = None,
    filter: Filter | None = None,
) -> PyTree:
    """Like `prune_global`, but `amount` applies to each prunable leaf on its own.

    A float prunes ``round(amount * remaining_in_leaf)`` of each leaf (so the
    total is the sum of per-leaf roundings; ``prune(..., distribution="uniform")``
    instead fixes the total first); an int prunes exactly that many from every
    leaf (each must have that many left).
    """
    resolved = scores.resolve(method, key)
    _check_amount(amount)

    def counts(kept, shapes, names):
        del shapes
        return "each", [_count_to_prune(amount, r, where=f" in {n!r}") for r, n in zip(kept, names)]

    return _prune(params, masks, score=resolved, key=key, filter=filter, score_args=None, counts=counts)

