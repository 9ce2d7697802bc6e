"""He et al. (2016)'s ResNets for CIFAR, as open_lth builds them (``cifar_resnet_N``).

A port of facebookresearch/open_lth ``models/cifar_resnet.py`` (MIT licence), layer
for layer: a 3x3 stem conv + BatchNorm, three segments of D = (N - 2) / 6 blocks
of width W, 2W, 4W (the first block of segments 2 and 3 at stride 2), global
average pooling and a dense ``fc``. A block is conv-bn-relu-conv-bn plus its
shortcut, then relu; the shortcut is the identity, or a 1x1 conv at stride 2 +
BatchNorm where the shape changes (open_lth gives that conv stride 2 in every
case). Convolutions have no bias. open_lth's W is 16 (``cifar_resnet_20``: 9
blocks, 19 conv kernels + fc = 270,896 params at 10 classes).

Initialisation is open_lth's default for these models (``default_hparams``):
kaiming-normal conv and fc weights (``model_init='kaiming_normal'``), BatchNorm
weights U[0, 1) and biases 0 (``batchnorm_init='uniform'``), the fc bias as
torch's default.

Flax names mirror the torch module names so that export is a renaming:
``conv``, ``bn``, ``blocks_I/{conv1,bn1,conv2,bn2,shortcut_conv,shortcut_bn}``
(torch: ``blocks.I.shortcut.0`` / ``.1``), ``fc``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.models.layers import BatchNorm, kaiming_normal_init, torch_bias_init, uniform_scale_init


class Block(nn.Module):
    """open_lth's ``Model.Block``: two 3x3 convs, and a 1x1 stride-2 conv shortcut where the shape changes."""

    features: int
    downsample: bool = False
    dtype: Any = jnp.float32
    inner: int = 0  # conv1's outputs (0: `features`); fewer once channel pruning removed some

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=kaiming_normal_init)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype,
                                 scale_init=uniform_scale_init)
        s = 2 if self.downsample else 1
        y = conv(self.inner or self.features, (3, 3), (s, s), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.downsample or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), (2, 2), padding="VALID", name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """open_lth's ``cifar_resnet_{depth}_{width}`` for 32x32 inputs.

    Attributes:
      depth: layers N = 6 D + 2 (20, 32, 44, 56, 110, ...).
      num_classes: size of the output layer (the data set's class count).
      width: W, the first segment's channels (16 in open_lth and He et al.).
      dtype: compute dtype; parameters are float32.
      inner: each block's conv1 output channels, in block order (empty: as published); what
        channel pruning inside the blocks leaves (jaxprune.structured).
    """

    depth: int = 20
    num_classes: int = 10
    width: int = 16
    dtype: Any = jnp.float32
    inner: tuple[int, ...] = ()

    def blocks_per_segment(self) -> int:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6k + 2 (20, 32, 44, 56, 110), not {self.depth}")
        return (self.depth - 2) // 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        per_segment = self.blocks_per_segment()
        x = x.astype(self.dtype)
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    kernel_init=kaiming_normal_init, name="conv")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, scale_init=uniform_scale_init,
                              name="bn")(x))
        i = 0
        for segment, mult in enumerate((1, 2, 4)):
            for block in range(per_segment):
                x = Block(self.width * mult, segment > 0 and block == 0, self.dtype,
                          self.inner[i] if self.inner else 0, name=f"blocks_{i}")(x, train)
                i += 1
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kaiming_normal_init,
                     bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def torch_modules(depth: int) -> list[tuple[tuple[str, ...], str, str]]:
    """(Flax module path, torch module name, kind) of open_lth's model, in its state_dict order."""
    out = [(("conv",), "conv", "conv"), (("bn",), "bn", "bn")]
    per_segment = (depth - 2) // 6
    for i in range(3 * per_segment):
        b = f"blocks_{i}"
        out += [((b, m), f"blocks.{i}.{m}", m[:-1]) for m in ("conv1", "bn1", "conv2", "bn2")]
        if i and i % per_segment == 0:
            out += [((b, "shortcut_conv"), f"blocks.{i}.shortcut.0", "conv"),
                    ((b, "shortcut_bn"), f"blocks.{i}.shortcut.1", "bn")]
    return out + [(("fc",), "fc", "linear")]
