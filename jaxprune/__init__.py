"""jaxprune: one-shot and iterative global unstructured pruning studies in JAX/Flax.

The public mask API (see `jaxprune.masks` for the semantics of masks,
``amount`` and ``sparsity``)::

    import jaxprune
    masks = jaxprune.init_masks(params)
    masks = jaxprune.prune_global(params, masks, 0.2)        # prune 20% of what remains
    masks = jaxprune.prune(params, masks, sparsity=0.5, distribution="erk", score="lamp")
    params = jaxprune.apply_masks(params, masks)
    print(jaxprune.sparsity_report(masks))
    tx = optax.chain(optax.adamw(1e-3), jaxprune.keep_pruned(masks))
"""

__version__ = "0.1.0"

# The mask API is loaded on first use (PEP 562), so `import jaxprune.<module>` stays
# light: the command line installs its signal handlers before JAX is imported.
_FROM_MASKS = frozenset({
    "DISTRIBUTIONS", "METHODS", "SCORES", "SparsityReport", "apply_masks", "default_filter", "exclude",
    "init_masks", "keep_pruned", "path_str", "polynomial_sparsity", "prunable", "prune", "prune_global",
    "prune_layerwise", "register_score", "sparsity", "sparsity_report", "update_masks", "update_masks_on_device",
})




def _submodules() -> list[str]:
    """The public submodules and subpackages, found on disk (nothing is imported)."""
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str):
    # PEP 562 serves submodules too: `import jaxprune; jaxprune.masks.prune(...)`, as
    # an eager import would, without importing JAX before the CLI installs its handlers.
    if name in _FROM_MASKS:
        from jaxprune import masks

        value = getattr(masks, name)
        globals()[name] = value
        return value
    if not name.startswith("_") and name in _submodules():
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # binds itself as an attribute
    raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_FROM_MASKS, *_submodules()})


__all__ = [
    "DISTRIBUTIONS",
    "METHODS",
    "SCORES",
    "SparsityReport",
    "__version__",
    "apply_masks",
    "default_filter",
    "exclude",
    "init_masks",
    "keep_pruned",
    "path_str",
    "polynomial_sparsity",
    "prunable",
    "prune",
    "prune_global",
    "prune_layerwise",
    "register_score",
    "sparsity",
    "sparsity_report",
    "update_masks",
    "update_masks_on_device",
]
