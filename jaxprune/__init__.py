"""jaxprune: one-shot and iterative global unstructured pruning studies in JAX/Flax.

The public mask API (see `jaxprune.masks` for the semantics of masks,
``amount`` and ``sparsity``)::

    import jaxprune
    masks = jaxprune.init_masks(params)
    masks = jaxprune.prune_global(params, masks, 0.2)        # prune 20% of what remains
    params = jaxprune.apply_masks(params, masks)
    print(jaxprune.sparsity_report(masks))
"""

from jaxprune.masks import (
    METHODS,
    SparsityReport,
    apply_masks,
    default_filter,
    init_masks,
    path_str,
    prunable,
    prune_global,
    prune_layerwise,
    sparsity,
    sparsity_report,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "SparsityReport",
    "__version__",
    "apply_masks",
    "default_filter",
    "init_masks",
    "path_str",
    "prunable",
    "prune_global",
    "prune_layerwise",
    "sparsity",
    "sparsity_report",
]
