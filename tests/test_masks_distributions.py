"""Distributions (global, uniform, erk), exact quotas, monotone rounds, exclusions, `prune`'s two arguments."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxprune
from jaxprune.masks import layer_targets
from tests.test_masks import TOTAL, impl, prunable_leaves  # noqa: F401 (impl: fixture)

shapes_st = st.lists(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9), min_size=1, max_size=6)


def kernel_shapes(tree):
    return [tuple(s.shape) for s, f in zip(jax.tree.leaves(tree), jax.tree.leaves(jaxprune.prunable(tree))) if f]


def rigl_erk_kept(shapes, sparsity):
    """RigL's get_sparsities_erdos_renyi (include_kernel=True), as real kept counts.

    Transcribed from google-research/rigl sparse_utils.py, with one change: the
    per-layer budget is the exact (1 - s) * n instead of n - floor(s * n).
    """
    dense = set()  # the leaves held dense, returned too
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            if i in dense:
                rhs -= sparsity * n
            else:
                rhs += (1 - sparsity) * n
                raw[i] = sum(shape) / n
                divisor += raw[i] * n
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps > 1:
            dense |= {i for i, r in raw.items() if r == top}
        else:
            break
    return [math.prod(s) if i in dense else eps * raw[i] * math.prod(s) for i, s in enumerate(shapes)], dense


# ---------------------------------------------------------------- quotas


@settings(max_examples=100, deadline=None)
@given(shapes_st, st.sampled_from(["erk", "uniform"]), st.data())
def test_quotas_meet_the_target_exactly(shapes, distribution, data):
    sizes = [math.prod(s) for s in shapes]
    kept = [data.draw(st.integers(0, n)) for n in sizes]
    target = data.draw(st.integers(0, sum(kept)))
    counts = layer_targets(shapes, target, distribution=distribution, kept=kept)
    assert sum(counts) == target
    assert all(0 <= c <= k for c, k in zip(counts, kept))
    # Each count is within 1 of its real quota min(kept, eps * weight), for
    # the one eps that makes those sum to the target.
    weight = jaxprune.DISTRIBUTIONS[distribution]
    lo, hi = Fraction(0), Fraction(max(kept) + 1)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(min(Fraction(k), mid * weight(s)) for s, k in zip(shapes, kept)) < target:
            lo = mid
        else:
            hi = mid
    for s, k, c in zip(shapes, kept, counts):
        assert abs(c - min(k, hi * weight(s))) < 1 + Fraction(1, 10**9)


def test_erk_matches_rigl_on_resnet18(resnet18_shapes):
    shapes = kernel_shapes(resnet18_shapes["params"])
    assert sum(math.prod(s) for s in shapes) == TOTAL
    for sparsity in (0.5, 0.8, 0.9, 0.95, 0.99):
        target = TOTAL - round(sparsity * TOTAL)
        ours = layer_targets(shapes, target, distribution="erk")
        theirs, held = rigl_erk_kept(shapes, sparsity)
        assert sum(ours) == target
        assert all(abs(a - b) < 1 for a, b in zip(ours, theirs)), sparsity
        assert {i for i, (c, s) in enumerate(zip(ours, shapes)) if c == math.prod(s)} == held
        if sparsity == 0.9:  # the stem, the head and two 1x1 shortcuts stay dense
            assert sorted(shapes[i] for i in held) == [(1, 1, 64, 128), (1, 1, 128, 256), (3, 3, 3, 64), (512, 10)]


def test_uniform_from_dense_gives_every_leaf_the_same_sparsity(resnet18_shapes):
    shapes = kernel_shapes(resnet18_shapes["params"])
    for sparsity in (0.1, 0.5, 0.9, 0.999):
        target = TOTAL - round(sparsity * TOTAL)
        counts = layer_targets(shapes, target, distribution="uniform")
        assert sum(counts) == target
        for c, s in zip(counts, shapes):
            assert abs(c - target * math.prod(s) / TOTAL) < 1


def test_largest_remainder_is_deterministic():
    # Four equal leaves of 3 keeping 2 in all: each deserves 0.5; the earlier ones get them.
    assert layer_targets([(1, 3)] * 4, 2, distribution="uniform") == [1, 1, 0, 0]


def test_quota_errors():
    with pytest.raises(ValueError, match="outside"):
        layer_targets([(2, 2)], 5, distribution="erk")
    with pytest.raises(ValueError, match="no per-leaf quotas"):
        layer_targets([(2, 2)], 1, distribution="global")
    with pytest.raises(ValueError, match="unknown distribution 'er'"):
        layer_targets([(2, 2)], 1, distribution="er")


# ---------------------------------------------------------------- prune with a distribution


def small_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "stem_conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 3, 8)), jnp.float32)},
        "block": {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 8, 16)) * 0.1, jnp.float32)}},
        "head": {"kernel": jnp.asarray(rng.standard_normal((16, 10)) * 3, jnp.float32), "bias": jnp.zeros(10)},
    }


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("score", ["magnitude", "lamp", "random"])
def test_prune_follows_the_quotas(impl, distribution, score):
    params = small_params()
    masks = jaxprune.init_masks(params)
    key = jax.random.key(3)
    masks = jaxprune.prune(params, masks, 0.7, distribution=distribution, score=score, key=key)
    report = jaxprune.sparsity_report(masks)
    total = report.total.total
    assert report.total.kept == total - round(0.7 * total)
    expected = layer_targets([r.shape for r in report.rows], report.total.kept, distribution=distribution)
    assert [r.kept for r in report.rows] == expected
    if score == "magnitude":  # within each leaf, the smallest went
        for p, m in prunable_leaves(params, masks):
            if (~m).any() and m.any():
                assert np.abs(p[~m]).max() <= np.abs(p[m]).min()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["global", "uniform", "erk"]), st.sampled_from(["magnitude", "lamp", "random"]),
                       st.one_of(st.floats(0, 1), st.integers(0, 50))), min_size=1, max_size=5),
    st.integers(0, 1000),
)
def test_every_distribution_is_monotone_over_rounds(rounds, seed):
    params = small_params(seed)
    masks = jaxprune.init_masks(params)
    for i, (distribution, score, amount) in enumerate(rounds):
        before = jax.tree.map(np.asarray, masks)
        remaining = jaxprune.sparsity_report(masks).total.kept
        amount = min(amount, remaining) if isinstance(amount, int) else amount
        masks = jaxprune.prune(params, masks, amount, distribution=distribution, score=score, key=jax.random.key(i))
        k = amount if isinstance(amount, int) else round(amount * remaining)
        assert jaxprune.sparsity_report(masks).total.kept == remaining - k
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(masks)):
            assert not np.any(np.asarray(a) & ~b)


def test_iterative_rounds_of_ten_percent_with_erk(resnet18_gaussian_params):
    # A study's loop: 10% of what remains per round. The totals are the torch
    # counts whatever the distribution; each leaf only loses weights.
    from tests.conftest import TORCH_KEPT_22_ROUNDS

    params = resnet18_gaussian_params
    masks = jaxprune.init_masks(params)
    for rnd in range(6):
        before = [r.kept for r in jaxprune.sparsity_report(masks).rows]
        masks = jaxprune.prune(params, masks, 0.1, distribution="erk")
        report = jaxprune.sparsity_report(masks)
        assert report.total.kept == TORCH_KEPT_22_ROUNDS[rnd]
        assert all(r.kept <= b for r, b in zip(report.rows, before))
        assert [r.kept for r in report.rows] == layer_targets(
            [r.shape for r in report.rows], report.total.kept, distribution="erk", kept=before
        )


def test_sparsity_target_is_exact_and_never_unprunes(impl):
    params = small_params()
    masks = jaxprune.init_masks(params)
    total = jaxprune.sparsity_report(masks).total.total
    for s in (0.3, 0.55, 0.55, 0.2, 0.9):
        masks = jaxprune.prune(params, masks, sparsity=s, distribution="erk")
        pruned = total - jaxprune.sparsity_report(masks).total.kept
        assert pruned == max(round(s * total), round(0.55 * total) if s == 0.2 else 0)
    assert jaxprune.masks.pruned_count(0.5, 5) == 2 and jaxprune.masks.pruned_count(0.5, 7) == 4  # half to even


def test_prune_argument_errors():
    params = small_params()
    masks = jaxprune.init_masks(params)
    with pytest.raises(TypeError, match="exactly one of amount"):
        jaxprune.prune(params, masks)
    with pytest.raises(TypeError, match="exactly one of amount"):
        jaxprune.prune(params, masks, 0.1, sparsity=0.5)
    with pytest.raises(ValueError, match="sparsity 1.5 is outside"):
        jaxprune.prune(params, masks, sparsity=1.5)
    with pytest.raises(ValueError, match="unknown distribution 'ERK'"):
        jaxprune.prune(params, masks, 0.1, distribution="ERK")


# ---------------------------------------------------------------- exclusions


def test_exclude_by_components_and_globs():
    params = small_params()
    params["multihead"] = {"kernel": jnp.ones((4, 4))}
    flags = jaxprune.prunable(params, jaxprune.exclude("stem_conv", "head"))
    assert flags == {
        "stem_conv": {"kernel": False},
        "block": {"conv": {"kernel": True}},
        "head": {"kernel": False, "bias": False},
        "multihead": {"kernel": True},  # a whole component, not a substring
    }
    flags = jaxprune.prunable(params, jaxprune.exclude("*head/*", "block/conv"))
    assert not flags["head"]["kernel"] and not flags["multihead"]["kernel"] and not flags["block"]["conv"]["kernel"]
    assert flags["stem_conv"]["kernel"]
    with pytest.raises(ValueError, match="at least one"):
        jaxprune.exclude()


def test_excluded_leaves_are_not_counted_or_pruned(impl):
    params = small_params()
    keep = jaxprune.exclude("stem_conv", "head")
    # Built in: excluded leaves are not prunable at all.
    masks = jaxprune.init_masks(params, keep)
    assert [r.path for r in jaxprune.sparsity_report(masks).rows] == ["block/conv/kernel"]
    masks = jaxprune.prune(params, masks, sparsity=0.5, distribution="erk")
    assert jaxprune.sparsity(masks) == 0.5
    # Per call: the other leaves keep their masks and stay out of the counts.
    masks = jaxprune.prune(params, jaxprune.init_masks(params), 0.5, distribution="uniform", filter=keep)
    report = {r.path: r for r in jaxprune.sparsity_report(masks).rows}
    assert report["stem_conv/kernel"].kept == 216 and report["head/kernel"].kept == 160
    assert report["block/conv/kernel"].kept == 1152 - 576


def test_report_prints_exact_counts():
    params = small_params()
    masks = jaxprune.prune(params, jaxprune.init_masks(params), sparsity=0.9, distribution="erk")
    text = str(jaxprune.sparsity_report(masks))
    for r in jaxprune.sparsity_report(masks).rows:
        assert f"{r.kept:,}" in text and f"{r.total:,}" in text
