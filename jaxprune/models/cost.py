"""What a network costs, as ShrinkBench counts it (Blalock et al., MLSys 2020, "What is the
State of Neural Network Pruning?"): its parameters, the non-zero ones, and the multiply-adds of
its convolutions and dense layers for one input.

Units and semantics:

- ``params``: every parameter (kernels, biases, batch-norm scales and offsets; not the
  running statistics). ``params_nz``: those that are not zero once the masks are applied.
  ``compression = params / params_nz``.
- ``flops``: multiply-adds (MACs) for ONE input image of the given shape. A convolution counts
  ``C_in/groups · C_out · kh · kw · H_out · W_out``, a dense layer ``in · out``; batch norm,
  biases, activations and pooling are not counted. ``flops_nz``: each layer's flops times the
  kept fraction of its kernel. ``speedup = flops / flops_nz`` (theoretical: masked weights
  still run at dense speed on dense kernels).
- XLA's ``cost_analysis`` counts 2 FLOPs per multiply-add, and counts masked weights as dense.

Shapes come from `jax.eval_shape`, so a full-size network costs no compute to count.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import masks as masks_lib, models
from jaxprune.models.layers import init_variables


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One convolution or dense layer: its kernel's path, weights and multiply-adds."""

    name: str  # the kernel's module path, '/'-joined (e.g. 'layer1_0/conv1')
    kind: str  # 'conv' or 'dense'
    weights: int  # kernel entries
    weights_kept: int  # kernel entries kept (the mask's count; without masks, the non-zero ones)
    flops: int  # multiply-adds for one input
    flops_nz: float  # flops times the kernel's kept fraction


@dataclasses.dataclass(frozen=True)
class Cost:
    """A network's size and multiply-adds, in total and per layer."""

    layers: tuple[LayerCost, ...]
    params: int
    params_nz: int
    flops: int
    flops_nz: float

    @property
    def compression(self) -> float:
        return self.params / self.params_nz

    @property
    def speedup(self) -> float:
        return self.flops / self.flops_nz


def _is_counted(module: nn.Module, method: str) -> bool:
    return isinstance(module, (nn.Conv, nn.Dense)) and method == "__call__"


def output_shapes(model: nn.Module, variables: dict, image_shape=(32, 32, 3)) -> dict[tuple[str, ...], tuple]:
    """{module path: output shape} of every convolution and dense layer, for a batch of one
    input in eval mode (`jax.eval_shape`: nothing is computed)."""

    def run(v):
        _, state = model.apply(v, jnp.zeros((1, *image_shape)), train=False, capture_intermediates=_is_counted,
                               mutable=["intermediates"])
        return state["intermediates"]

    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.eval_shape(run, variables)):
        keys = masks_lib.path_names(path)
        out[keys[: keys.index("__call__")]] = tuple(leaf.shape)
    return out


def cost(model: nn.Module, variables: dict, masks: Any = None, image_shape=(32, 32, 3)) -> Cost:
    """The network's `Cost` (see the module docstring). `variables` holds 'params' (arrays, or
    ShapeDtypeStructs when `masks` is None and only counts of weights are wanted); `masks`
    (a mask pytree over the params, as `jaxprune.init_masks` makes) gives the kept weights."""
    def by_path(tree) -> dict[tuple[str, ...], Any]:
        return {masks_lib.path_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    params = variables["params"]
    flat = by_path(params)
    mask_flat = by_path(masks) if masks is not None else {}
    layers = []
    for path, shape in sorted(output_shapes(model, variables, image_shape).items()):
        kernel = flat[(*path, "kernel")]
        size = math.prod(kernel.shape)
        flops = size * math.prod(shape[1:-1])  # kernel entries times output positions (1 for dense)
        m = mask_flat.get((*path, "kernel"))
        if m is not None and np.ndim(m):
            kept = int(np.count_nonzero(np.asarray(m)))
        elif isinstance(kernel, jax.ShapeDtypeStruct):
            kept = size
        else:
            kept = int(np.count_nonzero(np.asarray(kernel)))
        layers.append(LayerCost("/".join(path), "conv" if len(kernel.shape) > 2 else "dense", size, kept, flops,
                                flops * kept / size))
    n_params = sum(math.prod(x.shape) for x in flat.values())
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in flat.values()):
        nz = n_params  # shapes only: nothing is known to be zero
    else:
        applied = masks_lib.apply_masks(params, masks) if masks is not None else params
        nz = sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(applied))
    return Cost(tuple(layers), n_params, nz, sum(l.flops for l in layers), sum(l.flops_nz for l in layers))


@dataclasses.dataclass(frozen=True)
class ArchCost:
    """What a training loop needs to count an epoch's size and multiply-adds from its masks alone.

    Attributes:
      params: every parameter of the dense network (as `Cost.params`); for a channel-pruned
        architecture, of the whole one before it, so that ratios compare with the same dense network.
      flops: its multiply-adds for one input (as `Cost.flops`).
      own_params, own_flops: the same of this architecture (fewer after channel pruning).
      sizes: entries of each prunable kernel, in leaf order (the masks' non-scalar leaves).
      flops_per_weight: multiply-adds one weight of that kernel costs per input (a conv's
        output positions, 1 for a dense layer, 0 for a leaf that is neither).
    """

    params: int
    flops: int
    own_params: int
    own_flops: int
    sizes: tuple[int, ...]
    flops_per_weight: tuple[int, ...]

    def nonzero(self, kept: Any) -> tuple[int, int]:
        """(params_nz, flops_nz) when the prunable kernels keep `kept` weights each (leaf order).
        A pruned weight is an exact zero; a kept one is counted as non-zero."""
        kept = np.asarray(kept, np.int64)
        removed = np.asarray(self.sizes, np.int64) - kept
        return (int(self.own_params - removed.sum()),
                int(self.own_flops - (removed * np.asarray(self.flops_per_weight, np.int64)).sum()))


@functools.lru_cache(maxsize=64)
def arch_cost(arch, exclude: tuple[str, ...] = (), image_shape: tuple[int, ...] = (32, 32, 3)) -> ArchCost:
    """`ArchCost` of a `kernels.Arch` whose leaves `exclude` keeps dense, for inputs of `image_shape` (H, W, C)."""
    from jaxprune.models import kernels

    def dense_cost(a):
        model = models.get(a.model).build(a.classes, a.width, channels=tuple(getattr(a, "channels", ())))
        shapes = jax.eval_shape(lambda: init_variables(model, 0, image_shape))
        return shapes, cost(model, shapes, None, image_shape)

    shapes, dense = dense_cost(arch)
    whole = dense_cost(arch.whole)[1] if getattr(arch, "channels", ()) else dense
    per_weight = {l.name: l.flops // l.weights for l in dense.layers}
    params = shapes["params"]
    flags = jax.tree.leaves(masks_lib.prunable(params, kernels.mask_filter(tuple(exclude))))
    sizes, fpw = [], []
    for (path, leaf), flag in zip(jax.tree_util.tree_leaves_with_path(params), flags):
        if flag:
            names = masks_lib.path_names(path)
            sizes.append(math.prod(leaf.shape))
            fpw.append(per_weight.get("/".join(names[:-1]), 0) if names[-1] == "kernel" else 0)
    return ArchCost(whole.params, whole.flops, dense.params, dense.flops, tuple(sizes), tuple(fpw))
