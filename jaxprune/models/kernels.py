"""The model's prunable kernels: which leaves a run may prune, how many weights
they hold, and the check of --exclude patterns against their names.

One home for what training (the masks it starts from), the loop (the sparsity
column), the study (its plan's exact counts and disk estimate) and config
validation need. Everything here comes from shapes (`jax.eval_shape`), never
from compute, so full-size counts are instant on any machine.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax

from jaxprune import masks as masks_lib, models
from jaxprune.models import init_variables


class Arch(NamedTuple):
    """What fixes a model's shapes: its registered name, width, class count, and the channels
    kept per group where channel pruning made it smaller (empty: the whole model)."""

    model: str = "resnet18"
    width: int = 64
    classes: int = 10
    channels: tuple[int, ...] = ()

    @classmethod
    def of(cls, cfg) -> "Arch":
        """The architecture a TrainConfig builds."""
        return cls(cfg.model, cfg.width, cfg.num_classes, tuple(getattr(cfg, "channels", ())))

    @property
    def whole(self) -> "Arch":
        """The model before channel pruning."""
        return self._replace(channels=())


def mask_filter(exclude: tuple[str, ...] = ()):
    """Which leaves may be pruned: conv and dense kernels (the mask library's default),
    minus those `exclude`'s patterns name. None means the default."""
    return masks_lib.exclude(*exclude) if exclude else None


@functools.lru_cache(maxsize=16)
def abstract_params(arch: Arch) -> dict:
    """The model's params as ShapeDtypeStructs (no compute)."""
    model = models.get(arch.model).build(arch.classes, arch.width, channels=arch.channels)
    return jax.eval_shape(lambda: init_variables(model, 0))["params"]


def _prunable_shapes(arch: Arch, exclude: tuple[str, ...]) -> list[tuple[int, ...]]:
    """The shapes of `arch`'s prunable kernels with `exclude`, in leaf order."""
    params = abstract_params(arch)
    flags = jax.tree.leaves(masks_lib.prunable(params, mask_filter(tuple(exclude))))
    return [tuple(p.shape) for p, f in zip(jax.tree.leaves(params), flags) if f]


@functools.lru_cache(maxsize=64)
def counts(arch: Arch, exclude: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """(prunable kernels, prunable weights, all parameters) of `arch` with `exclude`.

    ResNet18 at the write-up's width 64 and 10 classes, nothing excluded: 21
    kernels (20 conv and the dense head) holding 11,164,352 weights.
    """
    shapes = _prunable_shapes(arch, exclude)
    total = sum(math.prod(p.shape) for p in jax.tree.leaves(abstract_params(arch)))
    return len(shapes), sum(math.prod(s) for s in shapes), total


def exclude_problem(arch: Arch, exclude: tuple[str, ...]) -> str | None:
    """Why these --exclude patterns are a mistake (one that names no kernel would
    silently prune everything; together they may leave nothing), or None."""
    everything = counts(arch)[0]
    for pattern in exclude:
        if counts(arch, (pattern,))[0] == everything:
            return (f"--exclude {pattern!r} matches no kernel; {arch.model}'s kernels are named like "
                    f"{models.get(arch.model).names_look_like}")
    if exclude and counts(arch, tuple(exclude))[0] == 0:
        return f"--exclude {' '.join(exclude)} leaves no kernel to prune"
    return None


@functools.lru_cache(maxsize=64)
def pattern_count(arch: Arch, exclude: tuple[str, ...], pattern: str) -> int:
    """Weights an N:M `pattern` prunes from `arch`'s dense prunable kernels: (M - N) of every M
    along each input axis that can hold it (`masks.nm.ineligible`); the rest stay dense."""
    from jaxprune.masks import nm

    n, m = nm.parse(pattern)
    return sum(math.prod(s) // m * (m - n) for s in _prunable_shapes(arch, exclude) if nm.ineligible(s, m) is None)
