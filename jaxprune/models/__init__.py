"""Models in Flax Linen, and the registry ``--model`` reads. Nothing here knows about pruning.

`ResNet18` (the write-up's), open_lth's `CifarResNet` and `CifarVGG`, the shared
layers, and `register` for a model of your own (see `jaxprune.models.registry`).
"""

from jaxprune.models.cifar_resnet import CifarResNet
from jaxprune.models.cifar_vgg import CifarVGG
from jaxprune.models.layers import BatchNorm, count_params, init_variables, torch_bias_init, torch_kernel_init
from jaxprune.models.registry import DEFAULT, ModelError, ModelSpec, get, names, register, register_family
from jaxprune.models.resnet18 import BasicBlock, ResNet18
from jaxprune.models.tiny import Tiny

__all__ = [
    "BasicBlock", "BatchNorm", "CifarResNet", "CifarVGG", "DEFAULT", "ModelError", "ModelSpec", "ResNet18", "Tiny",
    "count_params", "get", "init_variables", "names", "register", "register_family", "torch_bias_init",
    "torch_kernel_init",
]
