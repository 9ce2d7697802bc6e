"""ResNet18, CIFAR variant, in Flax Linen. Nothing here knows about pruning.

The architecture of kuangliu/pytorch-cifar, which the write-up trained: a 3x3
stem with no max-pool, BasicBlocks [2, 2, 2, 2] of width 64/128/256/512
(strides 1, 2, 2, 2), 1x1 conv + BatchNorm shortcuts where the shape changes,
global average pooling and a dense head. Convolutions have no bias. At
width 64: 20 conv kernels + 1 dense kernel = 11,164,352 prunable weights,
11,173,962 parameters in all.

Initialisation and BatchNorm follow PyTorch's defaults, so that the recipe
behaves as it did there: kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and
`BatchNorm` with torch.nn.BatchNorm2d's semantics (see there). Padding is
explicit (1 pixel for 3x3), as in PyTorch, rather than Flax's asymmetric
'SAME' at stride 2.

Layout is NHWC. ``dtype`` is the compute dtype; parameters stay float32, and
statistics, the head's output and the loss are computed in at least float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.models.layers import BatchNorm, torch_bias_init, torch_kernel_init


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv shortcut when the shape changes."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    inner: int = 0  # conv1's outputs (0: `features`); fewer once channel pruning removed some

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_kernel_init
        )
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        s = (self.strides, self.strides)
        y = conv(self.inner or self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), s, padding="VALID", name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs.

    Attributes:
      num_classes: size of the output layer.
      width: channels of the first stage (64 in the paper); stages use
        width x (1, 2, 4, 8). Tests use 4 to 8.
      dtype: compute dtype (float32 or bfloat16); parameters are float32.
      inner: each block's conv1 output channels, in block order (empty: as published); what
        channel pruning inside the blocks leaves (jaxprune.structured).
    """

    num_classes: int = 10
    width: int = 64
    dtype: Any = jnp.float32
    inner: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        x = nn.Conv(
            self.width,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=torch_kernel_init,
            name="stem_conv",
        )(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="stem_bn")(x)
        x = nn.relu(x)
        for stage, mult in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    self.width * mult, strides, self.dtype,
                    self.inner[2 * stage + block] if self.inner else 0, name=f"layer{stage + 1}_{block}"
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
            name="head",
        )(x)
        # Logits (and so the loss) in at least float32: bf16 logits would round
        # the loss, and a float64 model stays float64.
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def torch_modules() -> list[tuple[tuple[str, ...], str, str]]:
    """(Flax module path, torch module name, kind) of kuangliu's ResNet18, in its state_dict order."""
    out = [(("stem_conv",), "conv1", "conv"), (("stem_bn",), "bn1", "bn")]
    for stage in range(1, 5):
        for block in range(2):
            flax_name, prefix = f"layer{stage}_{block}", f"layer{stage}.{block}"
            out += [((flax_name, m), f"{prefix}.{m}", m[:-1]) for m in ("conv1", "bn1", "conv2", "bn2")]
            if stage > 1 and block == 0:  # stride 2 and a channel change: a 1x1 conv shortcut
                out += [((flax_name, "shortcut_conv"), f"{prefix}.shortcut.0", "conv"),
                        ((flax_name, "shortcut_bn"), f"{prefix}.shortcut.1", "bn")]
    return out + [(("head",), "linear", "linear")]
