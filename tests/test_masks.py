"""The public mask API: exact counts, ranking, ties, randomness, pytrees, errors."""

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
from tests.conftest import TORCH_KEPT_22_ROUNDS

TOTAL = 11_164_352


def prunable_leaves(tree, masks):
    """(param, mask) arrays for the prunable leaves, as numpy."""
    return [
        (np.asarray(p), np.asarray(m))
        for p, m in zip(jax.tree.leaves(tree), jax.tree.leaves(masks))
        if np.ndim(m) >= 1
    ]


def reference_prune(params, masks, k, keys_of):
    """The spec, written plainly: prune the k lowest keys among kept weights, earliest first."""
    pairs = prunable_leaves(params, masks)
    keys = np.concatenate([keys_of(p).reshape(-1) for p, _ in pairs])
    alive = np.concatenate([m.reshape(-1) for _, m in pairs])
    idx = np.flatnonzero(alive)
    order = idx[np.argsort(keys[idx], kind="stable")]
    new = alive.copy()
    new[order[:k]] = False
    return new


def flat_masks(params, masks):
    return np.concatenate([m.reshape(-1) for _, m in prunable_leaves(params, masks)])


@pytest.fixture(params=["numpy", "jax"])
def impl(request):
    """Runs a test with each selection kernel (the jax one is what GPUs use)."""
    if request.param == "numpy":
        yield "numpy"
    else:
        with mock.patch.object(selection, "_all_on_cpu", lambda arrays: False):
            yield "jax"


# ---------------------------------------------------------------- counts


def test_22_rounds_of_ten_percent_match_torch_counts(resnet18_gaussian_params):
    params = resnet18_gaussian_params
    masks = jaxprune.init_masks(params)
    expected_pct = [
        10.0, 19.0, 27.1, 34.39, 40.95, 46.86, 52.17, 56.95, 61.26, 65.13, 68.62,
        71.76, 74.58, 77.12, 79.41, 81.47, 83.32, 84.99, 86.49, 87.84, 89.06, 90.15,
    ]
    first_reached = {}
    for rnd in range(1, 23):
        before = jax.tree.map(np.asarray, masks)
        masks = jaxprune.prune_global(params, masks, 0.1)
        report = jaxprune.sparsity_report(masks)
        assert report.total.total == TOTAL
        assert report.total.kept == TORCH_KEPT_22_ROUNDS[rnd - 1]
        assert round(100 * jaxprune.sparsity(masks), 2) == expected_pct[rnd - 1]
        # Monotone: nothing pruned comes back.
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(masks)):
            assert not np.any(np.asarray(a) & ~b)
        for target in (0.5, 0.75, 0.9):
            if jaxprune.sparsity(masks) >= target:
                first_reached.setdefault(target, rnd)
    assert first_reached == {0.5: 7, 0.75: 14, 0.9: 22}
    assert abs(jaxprune.sparsity(masks) - (1 - 0.9**22)) * TOTAL < 22


def test_count_uses_exact_host_rounding():
    # Python float arithmetic, round half to even: 0.1 * 45 == 4.5 -> 4,
    # 0.5 * 5 -> 2, 0.5 * 7 -> 4 (rounding half up would give 5, 3, 4).
    for n, amount, expected in [(45, 0.1, 4), (5, 0.5, 2), (7, 0.5, 4), (3, 1.0, 3), (3, 0.0, 0)]:
        params = {"kernel": jnp.arange(1.0, n + 1).reshape(1, n)}
        masks = jaxprune.prune_global(params, jaxprune.init_masks(params), amount)
        assert int(np.sum(~np.asarray(masks["kernel"]))) == expected


def test_int_amount_is_an_exact_count(impl):
    params = {"a": {"kernel": jnp.arange(24.0).reshape(4, 6)}, "b": {"kernel": -jnp.ones((3, 3))}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 10)
    kept = jaxprune.sparsity_report(masks).total.kept
    assert kept == 33 - 10
    # The 9 weights of magnitude 1 in "b" tie with a/kernel[0,1] (=1.0); the
    # zero goes first, then ties by position: "a" comes before "b".
    a = np.asarray(masks["a"]["kernel"]).reshape(-1)
    assert not a[0] and not a[1] and a[2:].all()
    assert np.asarray(masks["b"]["kernel"]).sum() == 9 - 8


# ---------------------------------------------------------------- ranking


def test_magnitude_prunes_smallest_first(impl):
    rng = np.random.default_rng(1)
    params = {
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)},
        "dense": {"kernel": jnp.asarray(rng.standard_normal((16, 10)) * 0.1, jnp.float32), "bias": jnp.ones(10)},
    }
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.3)
    pairs = prunable_leaves(params, masks)
    pruned = np.concatenate([np.abs(p)[~m] for p, m in pairs])
    kept = np.concatenate([np.abs(p)[m] for p, m in pairs])
    assert len(pruned) == round(0.3 * (288 + 160))
    assert pruned.max() <= kept.min()
    assert np.asarray(masks["dense"]["bias"]).shape == ()  # not prunable


def test_ties_keep_the_exact_count(impl):
    # Only three distinct magnitudes, so the threshold falls inside a tie.
    params = {"l": {"kernel": jnp.asarray(np.tile([0.0, 1.0, -1.0, 2.0], 25).reshape(10, 10), jnp.float32)}}
    for amount in (0.1, 0.3, 0.6, 0.9, 37):
        masks = jaxprune.prune_global(params, jaxprune.init_masks(params), amount)
        k = amount if isinstance(amount, int) else round(amount * 100)
        assert int(np.sum(~np.asarray(masks["l"]["kernel"]))) == k
        expected = reference_prune(params, jaxprune.init_masks(params), k, np.abs)
        np.testing.assert_array_equal(flat_masks(params, masks), expected)


def test_pruned_weights_stay_pruned_even_when_they_grow(impl):
    rng = np.random.default_rng(2)
    params = {"k": {"kernel": jnp.asarray(rng.standard_normal((20, 20)), jnp.float32)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    grown = {"k": {"kernel": jnp.where(masks["k"]["kernel"], 0.01, 100.0)}}
    after = jaxprune.prune_global(grown, masks, 0.5)
    old, new = np.asarray(masks["k"]["kernel"]), np.asarray(after["k"]["kernel"])
    assert not np.any(new & ~old)
    assert new.sum() == old.sum() - round(0.5 * old.sum())


def test_all_zero_params_prune_by_position(impl):
    params = {"a": {"kernel": jnp.zeros((4, 4))}, "b": {"kernel": jnp.zeros((2, 2))}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    flat = flat_masks(params, masks)
    np.testing.assert_array_equal(flat, np.arange(20) >= 10)


def test_nan_weights_rank_last():
    params = {"l": {"kernel": jnp.asarray([[np.nan, 3.0, np.inf, 1.0]], jnp.float32)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 3)
    np.testing.assert_array_equal(np.asarray(masks["l"]["kernel"]), [[True, False, False, False]])


def test_layerwise_prunes_each_leaf_by_the_same_fraction(impl):
    rng = np.random.default_rng(3)
    params = {
        "a": {"kernel": jnp.asarray(rng.standard_normal((10, 10)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.standard_normal((5, 7)) * 100, jnp.float32)},
    }
    masks = jaxprune.prune_layerwise(params, jaxprune.init_masks(params), 0.4)
    for name, n in (("a", 100), ("b", 35)):
        p, m = np.abs(np.asarray(params[name]["kernel"])), np.asarray(masks[name]["kernel"])
        assert (~m).sum() == round(0.4 * n)
        assert p[~m].max() <= p[m].min()
    masks = jaxprune.prune_layerwise(params, masks, 3)
    assert [int((~np.asarray(masks[n]["kernel"])).sum()) for n in "ab"] == [43, 17]


def test_filter_restricts_ranking_to_chosen_leaves(impl):
    params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.full((4, 4), 0.1)}}
    only_a = lambda path, leaf: jaxprune.path_str(path).startswith("a/")  # noqa: E731
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5, filter=only_a)
    assert np.asarray(masks["b"]["kernel"]).all()
    assert (~np.asarray(masks["a"]["kernel"])).sum() == 8


# ---------------------------------------------------------------- random


def test_random_is_reproducible_and_keyed(impl):
    params = {f"l{i}": {"kernel": jnp.ones((8, 16))} for i in range(3)}
    init = jaxprune.init_masks(params)
    a = jaxprune.prune_global(params, init, 0.5, method="random", key=jax.random.key(0))
    b = jaxprune.prune_global(params, init, 0.5, method="random", key=jax.random.key(0))
    c = jaxprune.prune_global(params, init, 0.5, method="random", key=jax.random.key(1))
    assert jaxprune.sparsity_report(a).total.kept == 192
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_random_kernels_agree():
    params = {f"l{i}": {"kernel": jnp.ones((30, 40))} for i in range(3)}
    masks = jaxprune.init_masks(params)
    masks = jaxprune.prune_global(params, masks, 0.3, method="random", key=jax.random.key(5))
    with mock.patch.object(selection, "_all_on_cpu", lambda arrays: False):
        on_jax = jaxprune.prune_global(params, masks, 0.3, method="random", key=jax.random.key(6))
    on_np = jaxprune.prune_global(params, masks, 0.3, method="random", key=jax.random.key(6))
    for x, y in zip(jax.tree.leaves(on_jax), jax.tree.leaves(on_np)):
        np.testing.assert_array_equal(x, y)


def test_random_is_unbiased_across_layers(resnet18_gaussian_params):
    params = resnet18_gaussian_params
    masks = jaxprune.prune_global(
        params, jaxprune.init_masks(params), 0.75, method="random", key=jax.random.key(42)
    )
    report = jaxprune.sparsity_report(masks)
    assert report.total.kept == TOTAL - round(0.75 * TOTAL)
    for row in report.rows:
        # Binomial spread of a layer's sparsity around 0.75: 5 sigma.
        sigma = (0.75 * 0.25 / row.total) ** 0.5
        assert abs(row.sparsity - 0.75) < 5 * sigma + 1e-9, row


def test_random_ignores_magnitudes():
    rng = np.random.default_rng(4)
    params = {"l": {"kernel": jnp.asarray(rng.standard_normal((100, 100)), jnp.float32)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5, method="random", key=jax.random.key(0))
    m, p = np.asarray(masks["l"]["kernel"]), np.abs(np.asarray(params["l"]["kernel"]))
    # Magnitude pruning would make these means ~0.32 vs ~1.28.
    assert abs(p[m].mean() - p[~m].mean()) < 0.05


# ---------------------------------------------------------------- properties


@st.composite
def pytree_case(draw):
    n_leaves = draw(st.integers(1, 4))
    values = st.one_of(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0]),  # many ties
        st.floats(-1e3, 1e3, allow_nan=False, width=32),
    )
    params, masks = {}, {}
    for i in range(n_leaves):
        shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5))
        params[f"layer{i}"] = {
            "kernel": draw(hnp.arrays(np.float32, shape, elements=values)),
            "bias": np.zeros(shape[-1], np.float32),
        }
        masks[f"layer{i}"] = {
            "kernel": draw(hnp.arrays(np.bool_, shape, elements=st.booleans())),
            "bias": np.ones((), bool),
        }
    remaining = int(sum(m["kernel"].sum() for m in masks.values()))
    amount = draw(st.one_of(st.floats(0.0, 1.0), st.integers(0, remaining)))
    return params, masks, amount, remaining


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(pytree_case(), st.sampled_from(["numpy", "jax"]))
def test_prune_global_matches_the_spec(case, impl_name):
    params, masks, amount, remaining = case
    params = jax.tree.map(jnp.asarray, params)
    with mock.patch.object(selection, "_all_on_cpu", lambda arrays: impl_name == "numpy"):
        new = jaxprune.prune_global(params, masks, amount)
    k = amount if isinstance(amount, int) else round(amount * remaining)
    expected = reference_prune(params, masks, k, np.abs)
    got = flat_masks(params, new)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == remaining - k


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    st.lists(hnp.array_shapes(min_dims=1, max_dims=2, max_side=7), min_size=1, max_size=3),
    st.integers(0, 2**16),
    st.data(),
)
def test_selection_kernels_agree_with_sorting(shapes, seed, data):
    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, 6, s).astype(np.int32) for s in shapes]  # heavy ties
    for key in keys:
        key[rng.random(key.shape) < 0.3] = selection.DEAD
    alive = sum(int((k != selection.DEAD).sum()) for k in keys)
    k = data.draw(st.integers(0, alive))
    flat = np.concatenate([x.reshape(-1) for x in keys])
    expected = np.zeros(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:k]] = True
    for impl_name in ("numpy", "jax"):
        got = selection.select_lowest([jnp.asarray(x) for x in keys], k, impl=impl_name)
        np.testing.assert_array_equal(np.concatenate([np.asarray(g).reshape(-1) for g in got]), expected)


# ---------------------------------------------------------------- pytrees


def test_init_masks_mirror_params():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)}, "scale": jnp.ones(())}
    masks = jaxprune.init_masks(params)
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    assert masks["conv"]["kernel"].dtype == jnp.bool_ and masks["conv"]["kernel"].shape == (3, 3, 2, 4)
    assert bool(np.all(masks["conv"]["kernel"]))
    assert masks["conv"]["bias"].shape == () and bool(masks["conv"]["bias"])
    prod = jax.tree.map(lambda p, m: p * m, params, masks)
    assert jax.tree.structure(prod) == jax.tree.structure(params)
    assert jaxprune.prunable(params) == {"conv": {"kernel": True, "bias": False}, "scale": False}


def test_apply_masks_zeroes_exactly_and_jits():
    params = {"d": {"kernel": -jnp.arange(1.0, 7.0).reshape(2, 3), "bias": jnp.ones(3)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 4)
    out = jax.jit(jaxprune.apply_masks)(params, masks)
    k = np.asarray(out["d"]["kernel"])
    np.testing.assert_array_equal(k, [[0.0, 0.0, 0.0], [0.0, -5.0, -6.0]])
    assert not np.signbit(k[0]).any()  # +0.0, not -0.0
    np.testing.assert_array_equal(out["d"]["bias"], params["d"]["bias"])


@pytest.mark.slow
def test_works_on_nnx_state():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.head = nnx.Linear(8, 4, rngs=rngs)

        def __call__(self, x):
            return self.head(self.conv(x).mean((1, 2)))

    model = Net(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    masks = jaxprune.init_masks(state)
    assert [r.path for r in jaxprune.sparsity_report(masks).rows] == ["conv/kernel", "head/kernel"]
    masks = jaxprune.prune_global(state, masks, 0.5)
    assert jaxprune.sparsity(masks) == pytest.approx(round(0.5 * 248) / 248)
    nnx.update(model, jaxprune.apply_masks(state, masks))
    assert int(jnp.sum(model.conv.kernel[...] == 0)) + int(jnp.sum(model.head.kernel[...] == 0)) == 124
    model(jnp.ones((1, 8, 8, 3)))


def test_sparsity_report_rows_and_table():
    params = {"a": {"kernel": jnp.arange(8.0).reshape(2, 4)}, "b": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 4)
    report = jaxprune.sparsity_report(masks)
    assert [(r.path, r.shape, r.kept, r.total) for r in report.rows] == [
        ("a/kernel", (2, 4), 6, 8),
        ("b/kernel", (2, 2), 2, 4),
    ]
    assert report.total.kept == 8 and report.total.sparsity == pytest.approx(1 / 3)
    text = str(report)
    assert "a/kernel" in text and "25.00%" in text and "33.33%" in text and "total" in text


# ---------------------------------------------------------------- errors


@pytest.fixture
def small():
    params = {"d": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    return params, jaxprune.init_masks(params)


@pytest.mark.parametrize(
    "amount, error, words",
    [
        (-0.1, ValueError, "outside [0, 1]"),
        (1.5, ValueError, "outside [0, 1]"),
        (float("nan"), ValueError, "outside [0, 1]"),
        (-3, ValueError, "negative"),
        (13, ValueError, "larger than the 12 weights still remaining"),
        (True, TypeError, "bool"),
        ("half", TypeError, "str"),
    ],
)
def test_bad_amounts(small, amount, error, words):
    params, masks = small
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        jaxprune.prune_global(params, masks, amount)


def test_int_amount_checked_against_what_remains(small):
    params, masks = small
    masks = jaxprune.prune_global(params, masks, 10)
    with pytest.raises(ValueError, match="larger than the 2 weights"):
        jaxprune.prune_global(params, masks, 3)


def test_unknown_method(small):
    with pytest.raises(ValueError, match="unknown pruning method 'l2'"):
        jaxprune.prune_global(*small, 0.1, method="l2")


def test_random_without_key(small):
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jaxprune.prune_global(*small, 0.1, method="random")


def test_mask_structure_mismatch(small):
    params, masks = small
    with pytest.raises(ValueError, match="do not mirror params.*'d/bias'"):
        jaxprune.prune_global(params, {"d": {"kernel": masks["d"]["kernel"]}}, 0.1)


def test_mask_shape_mismatch(small):
    params, masks = small
    bad = {"d": {"kernel": jnp.ones((4, 3), bool), "bias": masks["d"]["bias"]}}
    with pytest.raises(ValueError, match=r"'d/kernel' has shape \(4, 3\)"):
        jaxprune.apply_masks(params, bad)


def test_mask_not_bool(small):
    params, masks = small
    bad = {"d": {"kernel": jnp.ones((3, 4)), "bias": masks["d"]["bias"]}}
    with pytest.raises(TypeError, match="must be bool"):
        jaxprune.prune_global(params, bad, 0.1)
    with pytest.raises(TypeError, match="must be bool"):
        jaxprune.sparsity(bad)


def test_no_prunable_leaf():
    params = {"bias": jnp.ones(3)}
    with pytest.raises(ValueError, match="no prunable leaf"):
        jaxprune.init_masks(params)
    with pytest.raises(ValueError, match="no prunable leaf"):
        jaxprune.prune_global(params, {"bias": np.ones((), bool)}, 0.1)
    with pytest.raises(ValueError, match="no prunable leaf"):
        jaxprune.sparsity({"bias": np.ones((), bool)})


# ---------------------------------------------------------------- torch


def test_matches_torch_global_unstructured_weight_for_weight(resnet18_gaussian_params):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    params = resnet18_gaussian_params
    flags = jax.tree.leaves(jaxprune.prunable(params))
    kernels = [np.array(p) for p, f in zip(jax.tree.leaves(params), flags) if f]
    modules = []
    for k in kernels:
        m = torch.nn.Module()
        m.weight = torch.nn.Parameter(torch.from_numpy(k))
        modules.append(m)
    masks = jaxprune.init_masks(params)
    for amount in (0.1, 0.1, 0.5):
        prune.global_unstructured(
            [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount
        )
        masks = jaxprune.prune_global(params, masks, amount)
        ours = [np.asarray(m) for m, f in zip(jax.tree.leaves(masks), flags) if f]
        theirs = [m.weight_mask.numpy().astype(bool) for m in modules]
        assert sum(o.sum() for o in ours) == sum(t.sum() for t in theirs)
        # Same weights, except where torch broke a tie at the threshold otherwise.
        differ = np.concatenate([np.abs(k[o != t]) for k, o, t in zip(kernels, ours, theirs)])
        assert len(differ) <= 4 and len(np.unique(differ)) <= 1
