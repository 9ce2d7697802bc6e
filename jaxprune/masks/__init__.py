"""Pruning masks over any JAX pytree: pure functions, no training, no I/O.

A mask mirrors the params: per prunable leaf a bool array (True = kept), per
other leaf a 0-d True (`core`). The rooms:

- `core`: paths, filters (`default_filter`, `exclude`), `init_masks`,
  `apply_masks`, `sparsity`, `sparsity_report`.
- `scores`: what to prune first: ``"magnitude"``, ``"random"``, ``"lamp"``, or
  your own ``fn(param, mask, **extras)`` (`register_score`).
- `distributions`: how many each leaf loses: ``"global"``, ``"uniform"``,
  ``"erk"`` (`layer_targets`: exact integer quotas).
- `pruning`: `prune` (exact counts on the host), `prune_global`, `prune_layerwise`.
- `gradual`: Zhu & Gupta's `polynomial_sparsity` and `update_masks_on_device`
  (jittable, no host sync).
- `optax`: `keep_pruned(masks)`, the transformation that keeps pruned weights
  at exactly 0 in any optax chain, and `update_masks` for its state.
- `overlap`: the Jaccard overlap of two masks' kept weights (bit-packed).
- `nm`: N:M structured patterns (2:4), exact and ties by position; ``prune(...,
  pattern="2:4")`` applies one.
- `selection`: the exact k-smallest kernels underneath.

Units: ``sparsity`` is the fraction pruned, in [0, 1]; ``amount`` is the
fraction of what remains to prune now (or an int count), as in torch.
"""

from jaxprune.masks.core import (
    SparsityReport,
    SparsityRow,
    aligned,
    apply_masks,
    default_filter,
    exclude,
    init_masks,
    kept_counts,
    path_names,
    path_str,
    prunable,
    shuffle_masks,
    sparsity,
    sparsity_report,
    zero_pruned,
)
from jaxprune.masks.distributions import DISTRIBUTIONS, layer_targets
from jaxprune.masks import nm, overlap
from jaxprune.masks.gradual import (
    count_for_sparsity,
    is_update_step,
    polynomial_sparsity,
    update_masks_on_device,
)
from jaxprune.masks.optax import KeepPrunedState, keep_pruned, update_masks
from jaxprune.masks.pruning import pruned_count, prune, prune_global, prune_layerwise
from jaxprune.masks.scores import METHODS, SCORES, Score, float_keys, register_score

__all__ = [
    "DISTRIBUTIONS",
    "KeepPrunedState",
    "METHODS",
    "SCORES",
    "Score",
    "SparsityReport",
    "SparsityRow",
    "aligned",
    "apply_masks",
    "count_for_sparsity",
    "default_filter",
    "exclude",
    "float_keys",
    "init_masks",
    "is_update_step",
    "keep_pruned",
    "kept_counts",
    "layer_targets",
    "nm",
    "overlap",
    "path_names",
    "path_str",
    "polynomial_sparsity",
    "prunable",
    "prune",
    "prune_global",
    "prune_layerwise",
    "pruned_count",
    "register_score",
    "sparsity",
    "shuffle_masks",
    "sparsity_report",
    "update_masks",
    "update_masks_on_device",
    "zero_pruned",
]
