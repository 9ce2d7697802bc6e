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




# Where modules that once sat flat in jaxprune/ live now: `import jaxprune.checkpoint`,
# `from jaxprune import loop` and `jaxprune.rundir` keep working (a user's code, old
# notebooks), each giving the module itself. `jaxprune.config` is `jaxprune.study.config`
# (which serves `jaxprune.training.config`'s names too).
MOVED = {
    "errors": "runtime.errors", "interrupt": "runtime.interrupt", "hosts": "runtime.hosts",
    "faults": "runtime.faults", "kernels": "models.kernels", "download": "data.download",
    "checkpoint": "training.checkpoint", "train": "training.train", "loop": "training.loop",
    "devices": "training.devices", "evaluation": "training.evaluation", "rundir": "training.rundir",
    "modes": "study.modes", "config": "study.config", "paired": "report.paired", "report_paired": "report.comparisons",
    "report_masks": "report.masks", "phase_masks": "report.phase_masks",
}


class _MovedFinder:
    """Imports `jaxprune.<old name>` as the module it moved to (the same module object)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in MOVED:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _MovedFinder)

    @staticmethod
    def create_module(spec):
        import importlib

        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    @staticmethod
    def exec_module(module):
        pass  # already executed under its own name


def _install_moved_finder() -> None:
    import sys

    if not any(f is _MovedFinder for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder)


_install_moved_finder()


def _submodules() -> list[str]:
    """The public submodules and subpackages, found on disk (nothing is imported), and the old
    names of moved ones."""
    import pkgutil

    return sorted({*(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")), *MOVED})


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
