"""Scores: float keys, LAMP (host kernel, device form and the plain definition), your own scores."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxprune
from jaxprune.masks import selection
from jaxprune.masks import scores
from tests.test_masks import flat_masks, impl, prunable_leaves, reference_prune  # noqa: F401 (impl: fixture)


def lamp_definition(params, masks):
    """LAMP straight from the definition, in float64: one score per weight, NaN for pruned.

    score(w) = w**2 / sum(v**2 for kept finite v in the leaf with |v| >= |w|); 0 when
    that sum is 0; +inf for non-finite weights.
    """
    out = []
    for p, m in prunable_leaves(params, masks):
        a = np.square(p.astype(np.float64)).reshape(-1)
        kept = m.reshape(-1)
        counted = kept & np.isfinite(a)
        s = np.full(a.shape, np.nan)
        for i in np.flatnonzero(kept):
            if not np.isfinite(a[i]):
                s[i] = np.inf
                continue
            total = a[counted & (a >= a[i])].sum()
            s[i] = a[i] / total if total > 0 else 0.0
        out.append(s)
    return np.concatenate(out)


def prune_by_scores(flat_scores, k):
    """The k lowest scores among kept weights (NaN = pruned), ties by position: the kept flags after."""
    alive = ~np.isnan(flat_scores)
    idx = np.flatnonzero(alive)
    order = idx[np.argsort(flat_scores[idx], kind="stable")]
    new = alive.copy()
    new[order[:k]] = False
    return new


# ---------------------------------------------------------------- float keys


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(0, None, width=32)))
def test_float_keys_order_like_the_values(values):
    keys = np.asarray(scores.float_keys(jnp.asarray(values), jnp.ones(values.shape, bool)))
    i, j = np.meshgrid(np.arange(values.size), np.arange(values.size))
    np.testing.assert_array_equal(keys[i] < keys[j], values[i] < values[j])
    np.testing.assert_array_equal(keys[i] == keys[j], values[i] == values[j])
    assert keys.min() >= 0 and keys.max() < selection.DEAD


def test_float_keys_special_values():
    values = jnp.asarray([np.nan, np.inf, -0.0, 0.0, -3.0, 1.0, -np.nan], jnp.float32)
    keys = np.asarray(scores.float_keys(values, jnp.asarray([1, 1, 1, 1, 1, 1, 1], bool)))
    assert keys[0] == keys[6] == scores.NAN_KEY > keys[1]  # every NaN after +inf
    assert keys[2] == keys[3] == keys[4] == 0  # -0.0 and negatives rank like +0.0
    dead = np.asarray(scores.float_keys(values, jnp.zeros(7, bool)))
    assert (dead == selection.DEAD).all()


# ---------------------------------------------------------------- LAMP


def test_lamp_by_hand(impl):
    # A = [1, 2, 3]: w**2 = 1, 4, 9, sums of the not-smaller 14, 13, 9.
    # B = [2, -2]: equal magnitudes share the sum 8: both 0.5.
    params = {"a": {"kernel": jnp.asarray([[1.0, 2.0, 3.0]])}, "b": {"kernel": jnp.asarray([[2.0, -2.0]])}}
    np.testing.assert_allclose(
        np.asarray(scores.lamp(params["a"]["kernel"], jnp.ones((1, 3), bool))), [[1 / 14, 4 / 13, 1.0]], rtol=1e-6
    )
    init = jaxprune.init_masks(params)
    m = jaxprune.prune(params, init, 2, score="lamp")
    assert np.asarray(m["a"]["kernel"]).tolist() == [[False, False, True]] and np.asarray(m["b"]["kernel"]).all()
    m = jaxprune.prune(params, init, 3, score="lamp")  # then B's tie goes by position
    assert np.asarray(m["b"]["kernel"]).tolist() == [[False, True]]
    # Only kept weights count: with A's 3 pruned, A = [1, 2] scores 1/5 and 4/4,
    # so B's 0.5 goes before A's 2.
    m = {"a": {"kernel": jnp.asarray([[True, True, False]])}, "b": init["b"]}
    m = jaxprune.prune(params, m, 2, score="lamp")
    assert np.asarray(m["a"]["kernel"]).tolist() == [[False, True, False]]
    assert np.asarray(m["b"]["kernel"]).tolist() == [[False, True]]
    # Ties share the sum that starts at the first of them: C's two 2s both score
    # 4/17 and go before D's 1.5 (2.25/8.5); were the sums not shared, C's
    # second 2 would score 4/13 and D's 1.5 would go instead.
    params = {"c": {"kernel": jnp.asarray([[2.0, 2.0, 3.0]])}, "d": {"kernel": jnp.asarray([[1.5, 2.5]])}}
    m = jaxprune.prune(params, jaxprune.init_masks(params), 2, score="lamp")
    assert np.asarray(m["c"]["kernel"]).tolist() == [[False, False, True]] and np.asarray(m["d"]["kernel"]).all()


@st.composite
def lamp_case(draw, exact=True):
    """Leaves of small integer-valued weights (float sums are then exact), some NaN/inf, random masks."""
    n_leaves = draw(st.integers(1, 4))
    values = st.one_of(st.integers(-6, 6).map(float), st.sampled_from([0.5, -1.5, np.inf, np.nan]))
    params, masks = {}, {}
    for i in range(n_leaves):
        shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6))
        params[f"l{i}"] = {"kernel": draw(hnp.arrays(np.float32, shape, elements=values))}
        masks[f"l{i}"] = {"kernel": draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))}
    remaining = int(sum(m["kernel"].sum() for m in masks.values()))
    return params, masks, draw(st.integers(0, remaining))


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(lamp_case())
def test_lamp_host_and_device_match_the_definition(case):
    params, masks, k = case
    params = jax.tree.map(jnp.asarray, params)
    expected = prune_by_scores(lamp_definition(params, masks), k)
    host = jaxprune.prune(params, masks, k, score="lamp")
    with mock.patch.object(selection, "_all_on_cpu", lambda arrays: False):
        device = jaxprune.prune(params, masks, k, score="lamp")
    np.testing.assert_array_equal(flat_masks(params, host), expected)
    np.testing.assert_array_equal(flat_masks(params, device), expected)


def test_lamp_host_kernel_on_trained_like_weights():
    # Gaussian leaves of very different scales and sizes, half pruned already:
    # the candidate bands of the host kernel are then non-trivial everywhere.
    rng = np.random.default_rng(0)
    params = {
        "c1": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 16, 32)) * 0.05, jnp.float32)},
        "c2": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 32, 64)), jnp.float32)},
        "d": {"kernel": jnp.asarray(rng.laplace(size=(64, 10)) * 7, jnp.float32)},
    }
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5, method="random", key=jax.random.key(0))
    definition = lamp_definition(params, masks)
    remaining = int((~np.isnan(definition)).sum())
    for amount in (0.01, 0.1, 0.5, 0.9, 0.999):
        k = round(amount * remaining)
        got = flat_masks(params, jaxprune.prune(params, masks, amount, score="lamp"))
        np.testing.assert_array_equal(got, prune_by_scores(definition, k))


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(lamp_case(), st.integers(-30, 30), st.integers(0, 3), st.sampled_from(["numpy", "jax"]))
def test_lamp_is_invariant_to_rescaling_a_leaf(case, exponent, which, impl_name):
    params, masks, k = case
    name = sorted(params)[which % len(params)]
    scaled = {n: {"kernel": p["kernel"] * np.float32(2.0**exponent) if n == name else p["kernel"]} for n, p in params.items()}
    with mock.patch.object(selection, "_all_on_cpu", lambda arrays: impl_name == "numpy"):
        a = jaxprune.prune(jax.tree.map(jnp.asarray, params), masks, k, score="lamp")
        b = jaxprune.prune(jax.tree.map(jnp.asarray, scaled), masks, k, score="lamp")
    np.testing.assert_array_equal(flat_masks(params, a), flat_masks(params, b))


def test_lamp_scores_are_scale_free_and_bounded():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((50, 20)), jnp.float32)
    m = jnp.asarray(rng.random((50, 20)) < 0.7)
    s = np.asarray(scores.lamp(w, m))
    for c in (3.7, 1e-3, 1e5):  # any factor, up to float32 rounding
        np.testing.assert_allclose(np.asarray(scores.lamp(w * c, m))[np.asarray(m)], s[np.asarray(m)], rtol=2e-5)
    kept = s[np.asarray(m)]
    assert kept.max() == 1.0 and kept.min() > 0  # the largest kept weight scores exactly 1


def test_lamp_full_size_round_is_exact(resnet18_gaussian_params):
    params = resnet18_gaussian_params
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    new = jaxprune.prune_global(params, masks, 0.1, method="lamp")
    before, after = jaxprune.sparsity_report(masks).total.kept, jaxprune.sparsity_report(new).total.kept
    assert before - after == round(0.1 * before)
    for b, a in zip(jax.tree.leaves(masks), jax.tree.leaves(new)):
        assert not np.any(np.asarray(a) & ~np.asarray(b))  # monotone
    # Within a leaf LAMP prunes by magnitude: every newly pruned weight is no
    # larger than any weight the leaf keeps.
    for (p, m0), (_, m1) in zip(prunable_leaves(params, masks), prunable_leaves(params, new)):
        gone = m0 & ~m1
        if gone.any() and m1.any():
            assert np.abs(p[gone]).max() <= np.abs(p[m1]).min()


# ---------------------------------------------------------------- registry and your own


def test_lamp_and_the_builtins_are_methods():
    assert {"magnitude", "random", "lamp"} <= set(jaxprune.METHODS)
    assert jaxprune.METHODS is jaxprune.SCORES


def test_your_own_score_with_extra_pytrees(impl):
    rng = np.random.default_rng(2)
    params = {"a": {"kernel": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32), "bias": jnp.ones(5)},
              "b": {"kernel": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32), "bias": jnp.ones(4)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)

    def saliency(w, mask, grads):
        return jnp.abs(w * grads)

    masks = jaxprune.prune(params, jaxprune.init_masks(params), 0.4, score=saliency, score_args={"grads": grads})
    keys_of = dict(zip(("a", "b"), (np.abs(np.asarray(params[n]["kernel"]) * np.asarray(grads[n]["kernel"])) for n in "ab")))
    init = jaxprune.init_masks(params)
    expected = reference_prune(params, init, round(0.4 * 50), lambda p: keys_of["a"] if p.shape == (6, 5) else keys_of["b"])
    np.testing.assert_array_equal(flat_masks(params, masks), expected)


def test_registered_score_works_by_name():
    name = "test-negated-magnitude"
    try:
        jaxprune.register_score(name, lambda w, mask: 1.0 / (1.0 + jnp.abs(w)))
        assert name in jaxprune.METHODS
        params = {"d": {"kernel": jnp.asarray([[1.0, 5.0, 2.0, 4.0]])}}
        masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 2, method=name)
        assert np.asarray(masks["d"]["kernel"]).tolist() == [[True, False, True, False]]  # largest go first
        with pytest.raises(ValueError, match="already registered"):
            jaxprune.register_score(name, scores.magnitude)
    finally:
        jaxprune.SCORES.pop(name, None)


def test_score_args_must_mirror_params():
    params = {"d": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match=r"score_args\['grads'\] does not mirror params"):
        jaxprune.prune(params, jaxprune.init_masks(params), 1, score=lambda w, m, grads: w, score_args={"grads": {"x": 1}})
