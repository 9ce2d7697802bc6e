"""N:M masks: exact counts per group, the N largest by score kept with ties by position,
numpy and jitted device paths equal, ineligible leaves left dense and said so, and the
exported layout a PyTorch 2:4 check accepts."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxprune
from jaxprune.masks import nm, selection


def reference(w: np.ndarray, mask: np.ndarray, n: int, m: int) -> np.ndarray:
    """By hand: per group of m along axis -2, prune the m - n lowest by (pruned first, |w|, position)."""
    moved = np.moveaxis(w, -2, -1)
    alive = np.moveaxis(mask, -2, -1)
    out = alive.copy()
    for idx in np.ndindex(moved.shape[:-1]):
        for g in range(moved.shape[-1] // m):
            cols = range(g * m, (g + 1) * m)
            order = sorted(cols, key=lambda c: (bool(alive[idx][c]), float(np.float32(abs(moved[idx][c]))), c))
            for c in order[: m - n]:
                out[idx + (c,)] = False
    return np.moveaxis(out, -1, -2)


PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]


@st.composite
def kernels(draw):
    n, m = draw(st.sampled_from(PATTERNS))
    groups = draw(st.integers(1, 3))
    conv = draw(st.booleans())
    out = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), groups * m, out) if conv else (groups * m, out)
    # Few distinct magnitudes, both signs: many ties.
    values = draw(st.lists(st.sampled_from([0.0, -0.5, 0.5, 1.0, -1.0, 2.0]), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape))))
    w = np.asarray(values, np.float32).reshape(shape)
    pruned_before = draw(st.lists(st.booleans(), min_size=w.size, max_size=w.size))
    mask = ~np.asarray(pruned_before).reshape(shape) if draw(st.booleans()) else np.ones(shape, bool)
    return w, mask, n, m


@settings(max_examples=60, deadline=None)
@given(kernels())
def test_each_group_keeps_the_n_largest_with_ties_by_position(case):
    w, mask, n, m = case
    got = np.asarray(jaxprune.prune({"k": w}, {"k": mask}, pattern=f"{n}:{m}")["k"])
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, reference(w, mask, n, m))
    groups = np.moveaxis(got, -2, -1).reshape(-1, m).sum(-1)
    alive = np.moveaxis(mask, -2, -1).reshape(-1, m).sum(-1)
    np.testing.assert_array_equal(groups, np.minimum(alive, n))  # exactly n, unless fewer were left
    assert not (got & ~mask).any()  # nothing regrows


def device_keep(w, mask, n, m):
    keys = jaxprune.masks.float_keys(jnp.abs(jnp.asarray(w)), jnp.asarray(mask))
    return np.asarray(jax.jit(nm.keep, static_argnums=(2, 3, 4))(keys, jnp.asarray(mask), n, m, -2))


@settings(max_examples=12, deadline=None)
@given(kernels())
def test_the_jitted_device_path_gives_the_same_masks(case):
    w, mask, n, m = case
    host = jaxprune.prune({"k": w}, {"k": mask}, pattern=f"{n}:{m}")["k"]
    np.testing.assert_array_equal(device_keep(w, mask, n, m), host)


def test_counts_per_kernel_follow_the_formula_and_ineligible_leaves_stay_dense():
    rng = np.random.default_rng(0)
    params = {
        "stem": {"kernel": rng.normal(size=(3, 3, 3, 16)).astype(np.float32)},  # 3 inputs: not a multiple of 4
        "conv": {"kernel": rng.normal(size=(3, 3, 16, 32)).astype(np.float32), "bias": np.zeros(32, np.float32)},
        "head": {"kernel": rng.normal(size=(32, 10)).astype(np.float32)},
    }
    masks = jaxprune.prune(params, jaxprune.init_masks(params), pattern="2:4")
    assert masks["stem"]["kernel"].all()
    assert int(masks["conv"]["kernel"].sum()) == 3 * 3 * 16 * 32 // 2
    assert int(masks["head"]["kernel"].sum()) == 32 * 10 // 2
    report = jaxprune.sparsity_report(masks, pattern="2:4")
    notes = {r.path: r.note for r in report.rows}
    assert notes == {"conv/kernel": "2:4", "head/kernel": "2:4",
                     "stem/kernel": "dense: its input axis holds 3 weights, not a multiple of 4"}
    assert "dense: its input axis holds 3" in str(report)
    assert report.total.kept == 3 * 3 * 3 * 16 + (3 * 3 * 16 * 32 + 320) // 2
    # A second call changes nothing: each group already keeps 2 of 4.
    again = jaxprune.prune(params, masks, pattern="2:4")
    assert all((a == b).all() for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(masks)))
    # Then 1:4 from 2:4 keeps the larger of each group's two survivors.
    one = jaxprune.prune(params, masks, pattern="1:4")["head"]["kernel"]
    assert int(one.sum()) == 80 and not (one & ~masks["head"]["kernel"]).any()


def test_scores_random_and_your_own_and_other_axes():
    w = np.arange(1, 33, dtype=np.float32).reshape(8, 4)
    masks = {"k": np.ones((8, 4), bool)}
    key = jax.random.key(3)
    r1 = jaxprune.prune({"k": w}, masks, pattern="2:4", score="random", key=key)["k"]
    r2 = jaxprune.prune({"k": w}, masks, pattern="2:4", score="random", key=key)["k"]
    np.testing.assert_array_equal(r1, r2)
    assert (r1.reshape(2, 4, 4).sum(1) == 2).all()
    # Your own score: keep the smallest magnitudes instead.
    small = jaxprune.prune({"k": w}, masks, pattern="2:4", score=lambda p, m: 1 / jnp.abs(p))["k"]
    np.testing.assert_array_equal(small, np.tile([[1], [1], [0], [0]], (2, 4)).astype(bool))
    # Along the output axis (-1): groups of 4 columns in each row.
    rows = jaxprune.prune({"k": w}, masks, pattern="2:4", axis=-1)["k"]
    np.testing.assert_array_equal(rows, np.tile([False, False, True, True], (8, 1)))


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2", "a:b", "2:2"])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(ValueError, match="use N:M with 0 < N < M"):
        jaxprune.prune({"k": np.ones((4, 4), np.float32)}, {"k": np.ones((4, 4), bool)}, pattern=bad)


def test_pattern_with_an_amount_is_refused():
    with pytest.raises(TypeError, match="pattern= fixes how many are kept"):
        jaxprune.prune({"k": np.ones((4, 4), np.float32)}, {"k": np.ones((4, 4), bool)}, 0.5, pattern="2:4")


@pytest.mark.slow
def test_exported_masks_are_2_to_4_in_pytorchs_order():
    """In torch's layouts the groups run along dim 1 (in): consecutive for a linear weight
    (out, in), and for a conv weight once made channels-last (out, kh, kw, in)."""
    torch = pytest.importorskip("torch")
    from jaxprune import export
    from jaxprune.models import ResNet18, init_variables

    variables = init_variables(ResNet18(width=4), 0)
    params = variables["params"]
    masks = jaxprune.prune(params, jaxprune.init_masks(params), pattern="2:4")
    sd = export.to_torch_state_dict(params, variables["batch_stats"], masks)
    checked = 0
    for key, m in export.masks_state_dict(masks).items():
        weight = torch.from_numpy(sd[key])
        if m.shape[1] % 4:  # the stem (3 inputs): dense
            assert m.all(), key
            continue
        rows = weight if weight.ndim == 2 else weight.permute(0, 2, 3, 1)
        groups = (rows != 0).reshape(-1, 4).sum(-1)
        assert (groups == 2).all(), key
        checked += 1
    assert checked == 20  # 19 convs and the head; the stem left dense
    assert selection.on_cpu(next(iter(jax.tree.leaves(masks))))
