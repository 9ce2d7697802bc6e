"""``tiny``: a two-conv network for checking a pipeline in seconds.

Not a model to study: it exists so that the study's machinery (plans, resume,
faults, signals, modes, reports, export) can be exercised on a network that
compiles and trains in a fraction of ResNet18's time, yet still has what every
part of jaxprune acts on: conv kernels, batch norms with running statistics
and a dense classifier, all prunable by the default filter.

Shape (width w, 8 by default; 3,986 params at 10 classes on 32x32 images):
``conv1`` 3x3, 3 -> w, no bias; ``bn1``; relu; 2x2 max pool;
``conv2`` 3x3, w -> 2w, no bias; ``bn2``; relu; 4x4 average pool (32x32
images: a 4x4 grid); ``fc`` dense from the flattened grid to classes, with bias. Initialisation is torch's default (as
ResNet18's), so its exported twin behaves like a torch module of the same shape.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.models.layers import BatchNorm, torch_bias_init, torch_kernel_init


class Tiny(nn.Module):
    """Two 3x3 convs with batch norm, then a dense classifier.

    Attributes:
      num_classes: size of the output layer.
      width: conv1's channels; conv2 has twice as many.
      dtype: compute dtype; parameters are float32.
    """

    num_classes: int = 10
    width: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        for i, features in enumerate((self.width, 2 * self.width), start=1):
            x = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                        kernel_init=torch_kernel_init, name=f"conv{i}")(x)
            x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            if i == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        # A 4x4 grid of averages, not one global average: the classes of the synthetic
        # data differ by where their colours lie, which a global average would erase.
        x = nn.avg_pool(x, (4, 4), strides=(4, 4))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_kernel_init,
                     bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def torch_modules() -> list[tuple[tuple[str, ...], str, str]]:
    """(Flax module path, torch module name, kind) of the twin, in its state_dict order."""
    return [(("conv1",), "conv1", "conv"), (("bn1",), "bn1", "bn"),
            (("conv2",), "conv2", "conv"), (("bn2",), "bn2", "bn"), (("fc",), "fc", "linear")]
