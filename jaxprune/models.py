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
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.Conv2d / nn.Linear default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5) over the last axis of NHWC inputs.

    What differs from flax.linen.BatchNorm, each as torch does it:
    - the running variance is updated with the *unbiased* batch variance
      (n / (n - 1) times the biased one that normalises the batch);
    - statistics are computed two-pass (mean, then mean squared deviation) in
      the input's precision promoted to at least float32 (Flax: float32, and
      E[x^2] - E[x]^2 by default), so a float64 model is float64 throughout.
    Variables keep Flax's names: params ``scale``, ``bias``; batch_stats
    ``mean``, ``var``. In a data-parallel step the statistics are over the
    global batch (XLA adds the all-reduce).
    """

    use_running_average: bool
    momentum: float = 0.1  # torch's convention: new = (1 - momentum) * old + momentum * batch
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        else:
            axes = tuple(range(x.ndim - 1))
            xs = x.astype(stat_dtype)
            mean = xs.mean(axes)
            var = jnp.square(xs - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // features
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
                unbiased = var * (n / max(n - 1, 1))
                ra_var.value = ((1 - m) * ra_var.value + m * unbiased).astype(ra_var.value.dtype)
        y = (x.astype(stat_dtype) - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(stat_dtype))
        return (y + bias.astype(stat_dtype)).astype(self.dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv shortcut when the shape changes."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_kernel_init
        )
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(x)
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
    """

    num_classes: int = 10
    width: int = 64
    dtype: Any = jnp.float32

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
                    self.width * mult, strides, self.dtype, name=f"layer{stage + 1}_{block}"
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


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def init_variables(model: nn.Module, seed: int, image_shape=(32, 32, 3)) -> dict:
    """``model.init`` under jit, drawing from an ``rbg`` key made from `seed`.

    Returns ``{'params', 'batch_stats'}``. The distributions are the model's
    own; the ``rbg`` generator (XLA's RngBitGenerator) is used because XLA
    takes ~20 s on a 2-core CPU to compile threefry for ResNet18's 62
    initialisers, against ~3 s for this. Deterministic for a given seed on a
    given platform (CPU and GPU may draw different bits).
    """
    key = jax.random.key(seed, impl="rbg")
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.jit(functools.partial(model.init, train=False))(key, x)
