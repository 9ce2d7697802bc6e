"""Layers and initialisers the models share, with PyTorch's semantics, and the helpers
that initialise and count any Flax model's variables. Nothing here knows about pruning."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

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


# torch.nn.init.kaiming_normal_ (fan_in, gain sqrt(2)): N(0, 2 / fan_in), not truncated.
# open_lth's default `model_init` for its CIFAR models (models/initializers.py).
kaiming_normal_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def uniform_scale_init(key, shape, dtype=jnp.float32):
    """BatchNorm weights U[0, 1), as torch.rand: open_lth's default `batchnorm_init`
    'uniform' (models/bn_initializers.py); biases stay 0."""
    return jax.random.uniform(key, shape, dtype)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5) over the last axis of NHWC inputs.

    What differs from flax.linen.BatchNorm, each as torch does it:
    - the running variance is updated with the *unbiased* batch variance
      (n / (n - 1) times the biased one that normalises the batch);
    - statistics are computed two-pass (mean, then mean squared deviation) in
      the input's precision promoted to at least float32 (Flax: float32, and
      E[x^2] - E[x]^2 by default), so a float64 model is float64 throughout.
    Variables keep Flax's names: params ``scale`` (initialised by `scale_init`,
    torch's 1 by default), ``bias``; batch_stats ``mean``, ``var``. In a data-parallel step the statistics are over the
    global batch (XLA adds the all-reduce).
    """

    use_running_average: bool
    momentum: float = 0.1  # torch's convention: new = (1 - momentum) * old + momentum * batch
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,))
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


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def init_variables(model: nn.Module, seed: int, image_shape=(32, 32, 3)) -> dict:
    """``model.init`` under jit, drawing from an ``rbg`` key made from `seed`.

    Returns ``{'params', 'batch_stats'}`` (empty batch_stats for a model without any). The distributions are the model's
    own; the ``rbg`` generator (XLA's RngBitGenerator) is used because XLA
    takes ~20 s on a 2-core CPU to compile threefry for ResNet18's 62
    initialisers, against ~3 s for this. Deterministic for a given seed on a
    given platform (CPU and GPU may draw different bits).
    """
    key = jax.random.key(seed, impl="rbg")
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(key, x)
    # A model without BatchNorm has no batch_stats; every caller (and Orbax) expects the key.
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
