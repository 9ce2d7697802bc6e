"""VGG for CIFAR, as open_lth builds it (``cifar_vgg_11/13/16/19``).

A port of facebookresearch/open_lth ``models/cifar_vgg.py`` (MIT licence): the
plan's 3x3 convs (with bias), each followed by BatchNorm and relu, 2x2 max pools
at its 'M's, then a 2x2 average pool (2x2 -> 1x1) and a dense ``fc`` from the
last 512 channels. ``cifar_vgg_16`` at 10 classes: 13 conv kernels + fc,
14,728,266 params.

Initialisation is open_lth's default for these models (``default_hparams``):
kaiming-normal conv and fc weights, BatchNorm weights U[0, 1) and biases 0; conv
and fc biases as torch's defaults. open_lth's recipe leaves ``fc.weight``
unpruned (``pruning_layers_to_ignore='fc.weight'``): the preset excludes ``fc``.

``width`` scales every layer by width / 64 (64: the published network), so
tests stay small. Flax names mirror torch's ``nn.Sequential`` indices, which
count the pools too: ``layers_0/{conv,bn}``, ``layers_1/...``, ``layers_3/...``
(``layers_2`` is a pool), ``fc``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxprune.models.layers import BatchNorm, kaiming_normal_init, torch_bias_init, uniform_scale_init

PLANS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


def plan(depth: int, width: int = 64) -> tuple:
    """open_lth's plan for `depth`, channels scaled by width / 64."""
    if depth not in PLANS:
        raise ValueError(f"a CIFAR VGG has depth 11, 13, 16 or 19, not {depth}")
    return tuple(s if s == "M" else s * width // 64 for s in PLANS[depth])


class ConvModule(nn.Module):
    """open_lth's ``Model.ConvModule``: 3x3 conv (with bias), BatchNorm, relu."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        fan_in = 9 * x.shape[-1]
        x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    kernel_init=kaiming_normal_init, bias_init=torch_bias_init(fan_in), name="conv")(x)
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, scale_init=uniform_scale_init, name="bn")(x)
        return nn.relu(x)


class CifarVGG(nn.Module):
    """open_lth's ``cifar_vgg_{depth}`` for 32x32 inputs.

    Attributes:
      depth: 11, 13, 16 or 19.
      num_classes: size of the output layer (the data set's class count).
      width: the first conv's channels (64 as published); every layer scales with it.
      dtype: compute dtype; parameters are float32.
      channels: each conv's output channels, in order (empty: the plan's); what channel
        pruning leaves (jaxprune.structured).
    """

    depth: int = 16
    num_classes: int = 10
    width: int = 64
    dtype: Any = jnp.float32
    channels: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        convs = iter(self.channels)
        for i, spec in enumerate(plan(self.depth, self.width)):
            if spec == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = ConvModule(next(convs, spec) if self.channels else spec, self.dtype, name=f"layers_{i}")(x, train)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kaiming_normal_init,
                     bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def torch_modules(depth: int) -> list[tuple[tuple[str, ...], str, str]]:
    """(Flax module path, torch module name, kind) of open_lth's model, in its state_dict order."""
    out = []
    for i, spec in enumerate(PLANS[depth]):
        if spec != "M":
            out += [((f"layers_{i}", "conv"), f"layers.{i}.conv", "conv_bias"),
                    ((f"layers_{i}", "bn"), f"layers.{i}.bn", "bn")]
    return out + [(("fc",), "fc", "linear")]
