"""Jaccard overlap of kept weights: 1 for identical masks, 0 for complementary ones, and a
hand-counted case; the packed form gives the same."""

import jax
import numpy as np
import pytest

import jaxprune
from jaxprune.masks import overlap


def test_identical_complementary_and_a_hand_made_case():
    rng = np.random.default_rng(0)
    a = {"conv": {"kernel": rng.random((3, 3, 4, 8)) < 0.5, "bias": np.ones((), bool)}, "head": {"kernel": rng.random((8, 10)) < 0.3}}
    assert overlap.jaccard(a, a) == 1.0
    flipped = {"conv": {"kernel": ~a["conv"]["kernel"], "bias": np.ones((), bool)}, "head": {"kernel": ~a["head"]["kernel"]}}
    assert overlap.jaccard(a, flipped) == 0.0
    # By hand: kept {0, 1, 2} and {1, 2, 3, 4} over 10 weights: 2 shared of 5 kept in either.
    x = {"k": np.isin(np.arange(10), [0, 1, 2])}
    y = {"k": np.isin(np.arange(10), [1, 2, 3, 4])}
    assert overlap.jaccard(x, y) == pytest.approx(2 / 5)
    assert overlap.jaccard(overlap.packed(x), overlap.packed(y)) == pytest.approx(2 / 5)
    none = {"k": np.zeros(10, bool)}
    assert overlap.jaccard(none, none) == 1.0 and overlap.jaccard(none, x) == 0.0


def test_magnitude_and_random_masks_overlap_as_chance_predicts():
    rng = np.random.default_rng(1)
    params = {"dense": {"kernel": rng.normal(size=(256, 256)).astype(np.float32)}}
    masks = jaxprune.init_masks(params)
    mag = jaxprune.prune(params, masks, sparsity=0.5)
    rnd = jaxprune.prune(params, masks, sparsity=0.5, score="random", key=jax.random.key(0))
    # Independent halves: |A ∩ B| ≈ n/4, |A ∪ B| ≈ 3n/4, so about 1/3.
    assert overlap.jaccard(mag, rnd) == pytest.approx(1 / 3, abs=0.01)


def test_different_leaves_are_refused():
    with pytest.raises(ValueError, match="do not cover the same prunable leaves"):
        overlap.jaccard({"k": np.ones(8, bool)}, {"k": np.ones(16, bool)})
