"""The model registry: what ``--model NAME`` builds.

A model is a factory ``factory(num_classes, width, dtype) -> flax.linen.Module``
whose ``init(key, images, train=False)`` gives ``{'params', 'batch_stats'}`` (an
empty ``batch_stats`` is fine) and whose ``apply(..., train=True,
mutable=['batch_stats'])`` trains. Its prunable leaves are found by the mask
library's default filter (conv and dense kernels), so a model needs no code of
its own to be pruned. Built in:

- ``resnet18``: kuangliu/pytorch-cifar's, the write-up's (the default);
- ``cifar_resnet_N`` (N = 6k + 2: 20, 32, 44, 56, 110, ...): open_lth's CIFAR ResNets;
- ``cifar_vgg_N`` (N = 11, 13, 16, 19): open_lth's CIFAR VGGs;
- ``tiny``: two convs and a dense layer, to check a pipeline in seconds (the tests' model).

A user's model joins with `register`; a family of names (like
``cifar_resnet_N``) with `register_family`. Names are matched exactly first,
then by each family in turn.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn

from jaxprune.models import cifar_resnet, cifar_vgg, resnet18, tiny
from jaxprune.runtime.errors import UserError

Factory = Callable[[int, int, Any], nn.Module]  # (num_classes, width, dtype) -> module
# (Flax module path, torch module name, kind: conv | conv_bias | linear | bn), in the
# torch model's state_dict order; see jaxprune.export.
TorchLayout = list[tuple[tuple[str, ...], str, str]]


class ModelError(UserError):
    """An unknown model name, or a registration that would shadow one."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
      name: what ``--model`` takes.
      factory: ``factory(num_classes, width, dtype)`` -> the Flax module.
      width: the published width (``--width 0`` means this one); tests use less.
      help: one line for ``--help`` and README.
      torch: the PyTorch model `jaxprune export` writes a state_dict for, in words;
        None: the export keeps Flax paths as keys.
      torch_layout: ``torch_layout()`` -> the `TorchLayout` of that model, or None.
      names_look_like: a few kernel names, for the message of an --exclude that names none.
      narrow: ``narrow(num_classes, width, dtype, channels)`` -> the module with fewer channels
        where channel pruning removed some (`channels`: per channel group, in the order
        jaxprune.structured's coupling lists the groups); None: no channel pruning.
    """

    name: str
    factory: Factory
    width: int
    help: str = ""
    torch: str | None = None
    torch_layout: Callable[[], TorchLayout] | None = None
    names_look_like: str = ""
    narrow: Callable[[int, int, Any, tuple[int, ...]], nn.Module] | None = None

    def build(self, num_classes: int, width: int = 0, dtype: Any = None, channels: tuple[int, ...] = ()) -> nn.Module:
        """The module at `width` (0: the published width) for `num_classes` outputs; with
        `channels`, the channel-pruned module that keeps that many channels per group."""
        import jax.numpy as jnp

        dtype = jnp.dtype(dtype or jnp.float32)
        if channels:
            if self.narrow is None:
                raise ModelError(f"model {self.name!r} cannot be built with fewer channels (no channel pruning)")
            return self.narrow(num_classes, width or self.width, dtype, tuple(channels))
        return self.factory(num_classes, width or self.width, dtype)


MODELS: dict[str, ModelSpec] = {}
FAMILIES: list[tuple[str, Callable[[str], ModelSpec | None]]] = []  # (pattern for help, resolver)
DEFAULT = "resnet18"


def register(name: str, factory: Factory, *, width: int = 1, help: str = "", torch: str | None = None,
             torch_layout=None, names_look_like: str = "", narrow=None, replace: bool = False) -> ModelSpec:
    """Adds a model that ``--model NAME`` (and `jaxprune.study.run`) can build.

    `factory(num_classes, width, dtype)` returns a Flax Linen module (see the
    module docstring). `width` is what ``--width 0`` gives it; a model without a
    width ignores the argument. Registering a taken name raises ModelError
    unless `replace`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ModelError(f"model name {name!r}: use letters, digits, '_', '-' and '.'")
    if not replace and (name in MODELS or _from_family(name) is not None):
        raise ModelError(f"a model named {name!r} is already registered; pass replace=True to replace it")
    spec = ModelSpec(name, factory, width, help, torch, torch_layout,
                     names_look_like or "conv/kernel, dense/kernel (Flax module paths)", narrow)
    MODELS[name] = spec
    return spec


def register_family(pattern: str, resolve: Callable[[str], ModelSpec | None]) -> None:
    """Adds a family of names: `resolve(name)` gives its ModelSpec, or None if the name is not one of it."""
    FAMILIES.append((pattern, resolve))


def _from_family(name: str) -> ModelSpec | None:
    for _, resolve in FAMILIES:
        spec = resolve(name)
        if spec is not None:
            return spec
    return None


def get(name: str) -> ModelSpec:
    """The model `name` names; ModelError (one line, listing the choices) if none."""
    spec = MODELS.get(name) or _from_family(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(names())} (a model of your own is "
                         "known only to a process that has called jaxprune.models.register)")
    return spec


def names() -> list[str]:
    """Registered names, then the families' patterns."""
    return [*MODELS, *(p for p, _ in FAMILIES)]


# ---------------------------------------------------------------- built in

register(
    "resnet18", lambda classes, width, dtype: resnet18.ResNet18(classes, width, dtype), width=64,
    help="kuangliu/pytorch-cifar's ResNet18, the write-up's (11,173,962 params at 10 classes)",
    torch="ResNet18 of kuangliu/pytorch-cifar models/resnet.py, stage widths width x (1, 2, 4, 8)",
    torch_layout=resnet18.torch_modules,
    names_look_like="stem_conv/kernel, layer1_0/conv1/kernel, layer2_0/shortcut_conv/kernel, head/kernel",
    narrow=lambda classes, width, dtype, channels: resnet18.ResNet18(classes, width, dtype, channels),
)

register(
    "tiny", lambda classes, width, dtype: tiny.Tiny(classes, width, dtype), width=8,
    help="two 3x3 convs with batch norm and a dense layer (3,986 params at width 8 on 32x32 images): checks a pipeline in seconds",
    torch="jaxprune.models.tiny's two-conv net (conv1, bn1, conv2, bn2, fc)",
    torch_layout=tiny.torch_modules,
    names_look_like="conv1/kernel, conv2/kernel, fc/kernel",
)


def _depth_family(prefix: str, module, cls, valid: Callable[[int], bool], width: int, describe: str,
                  names_look_like: str) -> Callable[[str], ModelSpec | None]:
    """A resolver for names PREFIX<depth> (open_lth's naming) built by ``cls(depth, classes, width, dtype)``."""

    def resolve(name: str) -> ModelSpec | None:
        m = re.fullmatch(rf"{prefix}(\d+)", name)
        if not m or not valid(int(m[1])):
            return None
        depth = int(m[1])
        return ModelSpec(
            name, lambda classes, w, dtype: cls(depth, classes, w, dtype), width, f"open_lth's {name}",
            torch=f"open_lth {describe} for {name!r}", torch_layout=lambda: module.torch_modules(depth),
            names_look_like=names_look_like,
            narrow=lambda classes, w, dtype, channels: cls(depth, classes, w, dtype, channels),
        )

    return resolve


_cifar_resnet = _depth_family(
    "cifar_resnet_", cifar_resnet, cifar_resnet.CifarResNet, lambda n: n >= 8 and (n - 2) % 6 == 0, 16,
    "models/cifar_resnet.py Model (He et al.'s CIFAR ResNet), segment widths width x (1, 2, 4)",
    "conv/kernel, blocks_0/conv1/kernel, blocks_3/shortcut_conv/kernel, fc/kernel")
_cifar_vgg = _depth_family(
    "cifar_vgg_", cifar_vgg, cifar_vgg.CifarVGG, lambda n: n in cifar_vgg.PLANS, 64,
    "models/cifar_vgg.py Model (VGG with BatchNorm), channels scaled by width / 64",
    "layers_0/conv/kernel, layers_3/conv/kernel, fc/kernel")


register_family("cifar_resnet_N (N = 6k+2: 20, 32, 44, 56, 110)", _cifar_resnet)
register_family("cifar_vgg_N (N = 11, 13, 16, 19)", _cifar_vgg)
