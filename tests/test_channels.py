"""Channel pruning that removes channels: groups, scores, selection, the smaller model's logits
against the silenced original, and the smaller VGG's PyTorch twin."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import export, models, structured
from jaxprune.models import init_variables
from jaxprune.structured import channels

sys.path.insert(0, str(Path(__file__).parent))  # open_lth_models

X = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)


def trained_like(name, width, seed=0):
    """The model and variables with running statistics and batch-norm scales away from their
    defaults (as after training), so that a wrong cut shows in the logits."""
    module = models.get(name).build(10, width)
    v = init_variables(module, seed)
    rng = np.random.default_rng(seed)

    def vary(path, x):
        key = path[-1].key
        if key in ("mean", "bias"):
            return jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype)
        if key in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
        return x

    v = {"params": jax.tree_util.tree_map_with_path(lambda p, x: vary(p, x) if x.ndim == 1 else x, v["params"]),
         "batch_stats": jax.tree_util.tree_map_with_path(vary, v["batch_stats"])}
    return module, v


@pytest.mark.parametrize("name, width, n_groups, score, scope", [
    # Every score and scope on the VGG; each residual family with both scopes.
    ("cifar_vgg_11", 8, 8, "l1", "layer"), ("cifar_vgg_11", 8, 8, "l2", "global"),
    ("cifar_vgg_11", 8, 8, "bn-scale", "layer"), ("cifar_vgg_11", 8, 8, "random", "global"),
    ("cifar_resnet_20", 4, 9, "l1", "global"), ("cifar_resnet_20", 4, 9, "bn-scale", "layer"),
    ("resnet18", 4, 8, "l2", "layer"), ("resnet18", 4, 8, "random", "global"),
])
@pytest.mark.slow
def test_the_smaller_model_computes_what_the_silenced_original_does(name, width, n_groups, score, scope):
    module, v = trained_like(name, width)
    pruned = structured.prune_channels(name, v, 0.5, score=score, scope=scope, width=width)
    assert len(pruned.groups) == n_groups
    got = np.asarray(jax.jit(pruned.model.apply)(pruned.variables, jnp.asarray(X)))
    apply = jax.jit(module.apply)
    expected = np.asarray(apply(structured.silenced(v, pruned.groups, pruned.kept), jnp.asarray(X)))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    full = np.asarray(apply(v, jnp.asarray(X)))
    assert np.abs(full - expected).max() > 1e-3  # the removed channels mattered: the test can fail
    # Every coupled tensor lost exactly the removed channels; nothing else changed shape.
    for g, kept in zip(pruned.groups, pruned.kept):
        prod = channels._get(pruned.variables["params"], g.producer)["kernel"]
        assert prod.shape[-1] == len(kept)
        for c in g.consumers:
            assert channels._get(pruned.variables["params"], c)["kernel"].shape[-2] == len(kept)
        assert channels._get(pruned.variables["batch_stats"], g.norm)["mean"].shape == (len(kept),)


def test_layer_scope_removes_the_same_fraction_everywhere_and_global_the_fraction_overall():
    s = [np.array([3.0, 1.0, 2.0, 4.0]), np.array([10.0, 30.0, 20.0, 40.0, 50.0, 60.0, 70.0, 80.0])]
    layer = channels.select(s, 0.5, "layer")
    assert [k.tolist() for k in layer] == [[0, 3], [4, 5, 6, 7]]
    # Global, scores divided by each group's mean (2.5 and 45): group 0 reads 1.2 .4 .8 1.6,
    # group 1 .22 .67 .44 .89 1.1 1.3 1.6 1.8; the 6 lowest go.
    glob = channels.select(s, 0.5, "global")
    assert [k.tolist() for k in glob] == [[0, 3], [4, 5, 6, 7]]
    assert sum(len(x) - len(k) for x, k in zip(s, glob)) == 6
    # A group keeps one channel however low its scores.
    low = [np.array([0.001, 0.002]), np.array([5.0, 6.0, 7.0, 8.0])]
    assert [len(k) for k in channels.select(low, 0.9, "layer")] == [1, 1]
    assert min(len(k) for k in channels.select([np.array([1.0, 1e-9])] + [np.ones(8)], 0.9, "global")) >= 1


def test_scores_are_the_filters_norms_and_the_batch_norm_scale():
    params = {"c": {"kernel": jnp.asarray(np.arange(2 * 3).reshape(1, 1, 2, 3) - 2.0)},
              "n": {"scale": jnp.asarray([0.5, -2.0, 1.0]), "bias": jnp.zeros(3)}}
    g = [channels.Group("c", ("c",), ("n",), ())]
    # kernel columns (filters): [-2, 1], [-1, 2], [0, 3]
    assert channels.scores(params, g, "l1")[0].tolist() == [3.0, 3.0, 3.0]
    np.testing.assert_allclose(channels.scores(params, g, "l2")[0], np.sqrt([5.0, 5.0, 9.0]))
    assert channels.scores(params, g, "bn-scale")[0].tolist() == [0.5, 2.0, 1.0]
    assert sorted(channels.scores(params, g, "random", seed=1)[0].tolist()) == [0.0, 1.0, 2.0]


def test_fraction_removed_counts_whole_channels():
    module = models.get("cifar_vgg_11").build(10, 8)
    rng = np.random.default_rng(0)  # shapes only, filled on the host: nothing compiles
    v = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                     jax.eval_shape(lambda: init_variables(module, 0)))
    pruned = structured.prune_channels("cifar_vgg_11", v, 0.5, width=8)
    # Half the channels of every layer: each conv keeps about a quarter of its weights (inputs and
    # outputs both halve), the first conv half (3 inputs), the dense layer half.
    assert pruned.counts == (4, 8, 16, 16, 32, 32, 32, 32)
    assert 0.70 < channels.weights_removed(v, pruned) < 0.76


def test_a_model_without_a_coupling_is_one_clear_error():
    with pytest.raises(structured.ChannelError, match=r"does not know how 'tiny'.*cifar_vgg_N.*COUPLINGS"):
        structured.prune_channels("tiny", {"params": {}, "batch_stats": {}}, 0.5)
    with pytest.raises(structured.ChannelError, match="choose from l1, l2, bn-scale, random"):
        channels.scores({}, [], "taylor")


@pytest.mark.slow
def test_the_smaller_vgg_loads_strictly_into_open_lths_torch_model_built_with_its_counts():
    torch = pytest.importorskip("torch")
    import open_lth_models as ref

    _, v = trained_like("cifar_vgg_11", 8)
    pruned = structured.prune_channels("cifar_vgg_11", v, 0.5, width=8, score="bn-scale")
    counts = iter(pruned.counts)
    plan = [s if s == "M" else next(counts) for s in ref.CifarVGG.PLANS[11]]
    torch.manual_seed(0)
    twin = ref.CifarVGG(plan, ref.init_fn, 10)
    sd = export.to_torch_state_dict(pruned.variables["params"], pruned.variables["batch_stats"], model="cifar_vgg_11")
    twin.load_state_dict({k: torch.from_numpy(x) for k, x in sd.items()}, strict=True)
    twin.eval()
    with torch.no_grad():
        got = twin(torch.from_numpy(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))).numpy()
    expected = np.asarray(pruned.model.apply(pruned.variables, jnp.asarray(X)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_weight_target_is_reached_as_closely_as_whole_channels_allow():
    module = models.get("cifar_vgg_11").build(10, 16)
    v = jax.eval_shape(lambda: init_variables(module, 0))
    params = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32), v["params"])
    groups = channels.coupling("cifar_vgg_11").groups("cifar_vgg_11", params)
    s = channels.scores(params, groups, "l1")
    def removed(f):
        kept, total = channels.kept_weights(params, groups, [len(k) for k in channels.select(s, f)])
        return 1 - kept / total

    reachable = {removed(f) for f in np.linspace(0, 0.999, 1000)}  # every fraction whole channels give
    for target in (0.5, 0.75, 0.9):
        fraction, reached = channels.fraction_for(params, groups, s, target)
        assert reached == removed(fraction)
        assert abs(reached - target) == min(abs(r - target) for r in reachable), (target, reached)
        assert abs(reached - target) < 0.02
