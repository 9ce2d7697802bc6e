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

import jax

from jaxprune import data, masks as masks_lib
from jaxprune.models import ResNet18, init_variables

# How kernels are named, for the message of a pattern that names none.
NAMES_LOOK_LIKE = "stem_conv/kernel, layer1_0/conv1/kernel, layer2_0/shortcut_conv/kernel, head/kernel"


def mask_filter(exclude: tuple[str, ...] = ()):
    """Which leaves may be pruned: conv and dense kernels (the mask library's default),
    minus those `exclude`'s patterns name. None means the default."""
    return masks_lib.exclude(*exclude) if exclude else None


@functools.lru_cache(maxsize=8)
def abstract_params(width: int) -> dict:
    """ResNet18's params at `width` as ShapeDtypeStructs (no compute)."""
    model = ResNet18(num_classes=data.NUM_CLASSES, width=width)
    return jax.eval_shape(lambda: init_variables(model, 0))["params"]


@functools.lru_cache(maxsize=32)
def counts(width: int, exclude: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """(prunable kernels, prunable weights, all parameters) at `width` with `exclude`.

    At the write-up's width 64 with nothing excluded: 21 kernels (20 conv and
    the dense head) holding 11,164,352 weights.
    """
    params = abstract_params(width)
    flags = jax.tree.leaves(masks_lib.prunable(params, mask_filter(tuple(exclude))))
    sizes = [math.prod(p.shape) for p in jax.tree.leaves(params)]
    return sum(flags), sum(n for n, f in zip(sizes, flags) if f), sum(sizes)


def exclude_problem(width: int, exclude: tuple[str, ...]) -> str | None:
    """Why these --exclude patterns are a mistake (one that names no kernel would
    silently prune everything; together they may leave nothing), or None."""
    everything = counts(width)[0]
    for pattern in exclude:
        if counts(width, (pattern,))[0] == everything:
            return f"--exclude {pattern!r} matches no kernel; kernels are named like {NAMES_LOOK_LIKE}"
    if exclude and counts(width, tuple(exclude))[0] == 0:
        return f"--exclude {' '.join(exclude)} leaves no kernel to prune"
    return None
