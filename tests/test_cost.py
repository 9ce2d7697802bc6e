"""jaxprune.models.cost: parameters, non-zero parameters and multiply-adds, against hand counts
for a small conv net and against PyTorch's twin of ResNet18 (forward hooks on its layers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune.models import ResNet18, cost as cost_lib, init_variables


class Small(nn.Module):
    """conv 3->4 (3x3, same) on 8x8, conv 4->8 (3x3, stride 2) -> 4x4, batch norm, mean pool, dense 8->10."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="conv2")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(10, name="head")(jnp.mean(x, axis=(1, 2)))


def test_a_small_conv_net_by_hand():
    model = Small()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    params = jax.tree.map(jnp.ones_like, variables["params"])  # no weight is zero by chance
    c = cost_lib.cost(model, {**variables, "params": params}, image_shape=(8, 8, 3))
    assert [(l.name, l.kind, l.weights, l.flops) for l in c.layers] == [
        ("conv1", "conv", 3 * 4 * 9, 3 * 4 * 9 * 8 * 8),   # C_in C_out kh kw H_out W_out
        ("conv2", "conv", 4 * 8 * 9, 4 * 8 * 9 * 4 * 4),
        ("head", "dense", 8 * 10, 8 * 10),                  # in out
    ]
    # Kernels, biases and batch norm's scale and offset; not its running statistics.
    assert c.params == 108 + 4 + 288 + 8 + 8 + 8 + 80 + 10 == 514
    assert c.params_nz == 514 and c.flops == 6912 + 4608 + 80 and c.compression == c.speedup == 1

    # Half of conv2's kernel pruned, by a mask.
    masks = jaxprune.init_masks(params)
    keep = np.zeros(288, bool)
    keep[::2] = True
    masks["conv2"]["kernel"] = jnp.asarray(keep.reshape(3, 3, 4, 8))
    c = cost_lib.cost(model, {**variables, "params": params}, masks, image_shape=(8, 8, 3))
    assert [l.weights_kept for l in c.layers] == [108, 144, 80]
    assert c.params_nz == 514 - 144 and c.flops_nz == 6912 + 4608 / 2 + 80
    assert c.compression == pytest.approx(514 / 370) and c.speedup == pytest.approx(11600 / 9296)


def test_full_size_resnet18_counts_as_its_torch_twin():
    torch = pytest.importorskip("torch")
    from torch_resnet import ResNet18 as TorchResNet18

    model = ResNet18()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    c = cost_lib.cost(model, shapes)  # shapes only: no compute

    twin, macs = TorchResNet18(), []

    def hook(layer, inputs, out):
        if isinstance(layer, torch.nn.Conv2d):
            kh, kw = layer.kernel_size
            macs.append(layer.in_channels // layer.groups * layer.out_channels * kh * kw * out.shape[2] * out.shape[3])
        else:
            macs.append(layer.in_features * layer.out_features)

    for layer in twin.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_hook(hook)
    with torch.no_grad():
        twin.eval()(torch.zeros(1, 3, 32, 32))
    assert len(c.layers) == len(macs) == 21  # 20 convolutions and the dense layer
    assert c.flops == sum(macs) == 555_422_720  # 0.56 G multiply-adds
    assert c.params == sum(p.numel() for p in twin.parameters()) == 11_173_962
    # The write-up's 11,164,352 prunable weights are the kernels'.
    assert sum(l.weights for l in c.layers) == 11_164_352


def test_a_pruned_width_4_resnet18_sums_its_layers():
    model = ResNet18(width=4)
    variables = init_variables(model, 0)
    masks = jaxprune.prune(variables["params"], jaxprune.init_masks(variables["params"]), sparsity=0.75)
    c = cost_lib.cost(model, variables, masks)
    kept = sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks) if np.ndim(m))
    assert sum(l.weights_kept for l in c.layers) == kept
    assert c.flops_nz == pytest.approx(sum(l.flops * l.weights_kept / l.weights for l in c.layers))
    assert c.speedup > 1 and c.compression > 1
    # Global magnitude spares the cheap late layers less than the early ones: FLOPs fall less than weights.
    assert c.speedup < sum(l.weights for l in c.layers) / kept
