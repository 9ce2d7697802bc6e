"""ResNet18 (CIFAR variant): shapes and counts at full size, forward passes at small width."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune.models import ResNet18, count_params, init_variables


def test_full_size_counts(resnet18_shapes):
    params = resnet18_shapes["params"]
    assert count_params(params) == 11_173_962
    flags = jaxprune.prunable(params)
    kernels = [p for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f]
    assert sum(p.ndim == 4 for p in kernels) == 20
    assert sum(p.ndim == 2 for p in kernels) == 1
    assert sum(int(np.prod(p.shape)) for p in kernels) == 11_164_352
    # BatchNorm running statistics live apart from params.
    assert count_params(resnet18_shapes["batch_stats"]) == 2 * 4800


def test_architecture_shapes(resnet18_shapes):
    p = resnet18_shapes["params"]
    assert p["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    assert p["layer1_0"]["conv1"]["kernel"].shape == (3, 3, 64, 64)
    assert "shortcut_conv" not in p["layer1_0"]
    assert p["layer2_0"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert p["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 512, 512)
    assert p["head"]["kernel"].shape == (512, 10) and p["head"]["bias"].shape == (10,)
    assert "bias" not in p["stem_conv"]


def test_small_width_forward_and_train_mode():
    model = ResNet18(num_classes=10, width=4)
    x = jnp.ones((2, 32, 32, 3))
    variables = init_variables(model, seed=0)
    assert set(variables) == {"params", "batch_stats"}
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (2, 10)
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["stem_bn"]["mean"], before)


@pytest.mark.slow
def test_downsampling_and_bf16():
    model = ResNet18(width=4, dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    variables = init_variables(model, seed=0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    # The last stage sees 4x4 maps (three stride-2 stages from 32x32).
    _, inter = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert inter["intermediates"]["layer4_1"]["__call__"][0].shape == (1, 4, 4, 32)
    assert model.apply(variables, x).dtype == jnp.float32


def test_torch_style_init_bounds():
    variables = init_variables(ResNet18(width=8), seed=0)
    k = np.asarray(variables["params"]["layer1_0"]["conv1"]["kernel"])
    bound = 1 / np.sqrt(3 * 3 * 8)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound


def test_tiny_is_the_shape_its_docstring_gives_and_exports_under_torch_names():
    from jaxprune import export
    from jaxprune.models import count_params, get

    spec = get("tiny")
    v = jax.eval_shape(lambda: spec.build(10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    shapes = jax.tree.map(lambda s: s.shape, v["params"])
    assert shapes == {"conv1": {"kernel": (3, 3, 3, 8)}, "bn1": {"scale": (8,), "bias": (8,)},
                      "conv2": {"kernel": (3, 3, 8, 16)}, "bn2": {"scale": (16,), "bias": (16,)},
                      "fc": {"kernel": (256, 10), "bias": (10,)}}  # 4x4 grid x 16 channels
    assert count_params(v["params"]) == 216 + 1_152 + 2_560 + 10 + 2 * (8 + 16) == 3_986
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v)
    sd = export.to_torch_state_dict(zeros["params"], zeros["batch_stats"], model="tiny")
    assert list(sd) == export.torch_keys("tiny")
    assert sd["conv2.weight"].shape == (16, 8, 3, 3) and sd["fc.weight"].shape == (10, 256)
