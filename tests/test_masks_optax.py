"""keep_pruned: an optax transformation that holds pruned weights at exactly +0.0 in any chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune.masks import KeepPrunedState, keep_pruned, update_masks
from tests.test_masks import prunable_leaves


def setup(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32), "bias": jnp.ones(8)},
        "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32), "bias": jnp.ones(5)},
    }
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.6)
    return params, masks


def loss(params, x):
    # Nonzero gradients everywhere, at pruned (zero) weights too.
    return sum(jnp.sum(jnp.sin(p * x + 0.5) ** 2) for p in jax.tree.leaves(params))


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x):
        grads = jax.grad(loss)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def train(tx, params, steps=60, opt_state=None, step=None):
    opt_state = tx.init(params) if opt_state is None else opt_state
    step = step or make_step(tx)
    for i in range(steps):
        params, opt_state = step(params, opt_state, jnp.float32(1 + 0.01 * i))
    return params, opt_state, step


@pytest.mark.parametrize(
    "optimizer",
    [optax.sgd(0.05, momentum=0.9), optax.adamw(1e-2, weight_decay=0.1), optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))],
    ids=["sgd-momentum", "adamw", "clip-adam"],
)
def test_pruned_weights_stay_exactly_positive_zero(optimizer):
    params, masks = setup()
    start = jaxprune.apply_masks(params, masks)
    end, _, _ = train(optax.chain(optimizer, keep_pruned(masks)), start)
    for (p0, m), (p1, _) in zip(prunable_leaves(start, masks), prunable_leaves(end, masks)):
        assert np.all(p1[~m] == 0) and not np.any(np.signbit(p1[~m]))  # +0.0, not -0.0
        assert np.all(p1[m] != p0[m])  # kept weights move
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal, end["conv"]["bias"], start["conv"]["bias"])
    # Without it the same optimiser moves the pruned weights off zero.
    free, _, _ = train(optax.chain(optimizer), start, steps=3)
    assert any(np.any(p[~m] != 0) for p, m in prunable_leaves(free, masks))


def test_zeroes_pruned_weights_that_were_not_masked_first():
    params, masks = setup(1)
    tricky = jax.tree.map(lambda p, m: p if np.ndim(m) == 0 else jnp.where(m, p, -0.0), params, masks)
    for start in (params, tricky):  # nonzero, and -0.0, at pruned positions
        end, _, _ = train(optax.chain(optax.sgd(0.1), keep_pruned(masks)), start, steps=1)
        for p, m in prunable_leaves(end, masks):
            assert np.all(p[~m] == 0) and not np.any(np.signbit(p[~m]))


def test_masks_in_state_change_without_recompiling():
    params, _ = setup(2)
    dense = jaxprune.init_masks(params)
    tx = optax.chain(optax.adamw(1e-2), keep_pruned(dense))
    params, opt_state, step = train(tx, params, steps=5)
    compiled = step._cache_size()
    for amount in (0.3, 0.5):  # gradual pruning: new masks into the same optimiser state
        masks = jaxprune.prune_global(params, opt_state[1].masks, amount)
        opt_state = jax.jit(update_masks)(opt_state, masks)
        params, opt_state, _ = train(tx, params, steps=5, opt_state=opt_state, step=step)
        for p, m in prunable_leaves(params, masks):
            assert np.all(p[~m] == 0) and np.all(p[m] != 0)
    assert step._cache_size() == compiled


def test_works_with_tree_map_params():
    # train.py zeroes momentum with optax.tree_utils.tree_map_params; the state must allow it.
    params, masks = setup(3)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), keep_pruned(masks))
    state = tx.init(params)
    mapped = optax.tree_utils.tree_map_params(tx, jaxprune.masks.zero_pruned, state, masks, transform_non_params=lambda v: v)
    assert isinstance(mapped[1], KeepPrunedState)


def test_errors():
    params, masks = setup(4)
    tx = keep_pruned(masks)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="holds no keep_pruned state"):
        update_masks(optax.sgd(0.1).init(params), masks)
    with pytest.raises(ValueError, match="do not mirror params"):
        tx.update({"conv": params["conv"]}, tx.init(params), {"conv": params["conv"]})


def test_nnx_optimizer():
    from flax import nnx

    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Conv(3, 8, (3, 3), rngs=rngs), lambda x: x.mean((1, 2)), nnx.Linear(8, 4, rngs=rngs))
    state = nnx.state(model, nnx.Param)
    masks = jaxprune.prune_global(state, jaxprune.init_masks(state), 0.5)
    nnx.update(model, jaxprune.apply_masks(state, masks))
    optimizer = nnx.Optimizer(model, optax.chain(optax.adamw(1e-2), keep_pruned(masks)), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)

    before = np.asarray(model.layers[0].kernel[...])
    for _ in range(5):
        step(model, optimizer, jnp.ones((2, 8, 8, 3)))
    m = np.asarray(masks["layers"][0]["kernel"])
    after = np.asarray(model.layers[0].kernel[...])
    assert np.all(after[~m] == 0) and np.all(after[m] != before[m])
    new = jaxprune.prune_global(nnx.state(model, nnx.Param), masks, 0.5)
    optimizer.opt_state = update_masks(optimizer.opt_state, new)
    step(model, optimizer, jnp.ones((2, 8, 8, 3)))
    assert np.all(np.asarray(model.layers[0].kernel[...])[~np.asarray(new["layers"][0]["kernel"])] == 0)
