"""Gradual pruning on the device: the schedule, exact counts in integer arithmetic, masks updated inside jit."""

from fractions import Fraction
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune
from jaxprune.masks import selection
from jaxprune.masks import count_for_sparsity, is_update_step, polynomial_sparsity, update_masks_on_device
from tests.test_masks import flat_masks

SCHEDULE = dict(initial=0.05, final=0.9, begin_step=10, n=6, delta_t=5)  # prunes at steps 10, 15, ..., 40


def zhu_gupta(t, initial, final, begin_step, n, delta_t, power=3):
    progress = min(max((t - begin_step) / (n * delta_t), 0.0), 1.0)
    return final + (initial - final) * (1 - progress) ** power


# ---------------------------------------------------------------- the schedule


def test_polynomial_sparsity_follows_the_formula_and_clamps():
    f = jax.jit(lambda t: polynomial_sparsity(t, **SCHEDULE))
    for t in [0, 9, 10, 11, 15, 22, 37, 40, 41, 1000]:
        assert float(f(t)) == pytest.approx(zhu_gupta(t, **SCHEDULE), abs=1e-6)
    assert float(f(0)) == pytest.approx(0.05) and float(f(40)) == pytest.approx(0.9)
    assert float(f(12345)) == pytest.approx(0.9)
    same = polynomial_sparsity(25, initial=0.05, final=0.9, begin_step=10, end_step=40)
    assert float(same) == float(f(25))
    assert float(polynomial_sparsity(25, initial=0.0, final=0.8, begin_step=10, end_step=40, power=1)) == pytest.approx(0.4)
    # Zero-length window: a step from initial to final.
    assert [float(polynomial_sparsity(t, initial=0.1, final=0.7, begin_step=5, end_step=5)) for t in (4, 5)] == [
        pytest.approx(0.1), pytest.approx(0.7)]


def exact_zhu_gupta(t, initial, final, begin_step, end_step, power=3):
    """The cubic schedule in exact rational arithmetic (the offset t - t0 exact for any size)."""
    progress = min(max(Fraction(t - begin_step, end_step - begin_step), Fraction(0)), Fraction(1))
    return Fraction(final) + (Fraction(initial) - Fraction(final)) * (1 - progress) ** power


@pytest.mark.parametrize("t0", [2**24 - 7, 2**31 - 2_000, 2**40, 2_000_000_000])
def test_polynomial_sparsity_is_exact_for_steps_far_past_float32(t0):
    # float32(t) - t0 froze at 0 (or jumped) once t passed 2**24; TF-MOT subtracts in integers.
    span = 1_000
    window = dict(initial=0.0, final=0.8, begin_step=t0, end_step=t0 + span)
    steps = [t0 - 1, t0, t0 + 1, t0 + 3, t0 + 250, t0 + 999, t0 + span, t0 + span + 5]
    want = [float(exact_zhu_gupta(t, **window)) for t in steps]
    got = [float(polynomial_sparsity(t, **window)) for t in steps]  # Python ints: any size
    assert got == pytest.approx(want, abs=1e-6)
    assert got[-2] == pytest.approx(0.8) and got[1] == 0.0 and 0 < got[2] < got[3] < got[4] < got[5]
    if t0 + span < 2**31:  # a traced int32 step, as in the training loop
        f = jax.jit(lambda t: polynomial_sparsity(t, **window))
        assert [float(f(jnp.int32(t))) for t in steps] == pytest.approx(got, abs=1e-6)
    jax.config.update("jax_enable_x64", True)  # a traced int64 step
    try:
        f = jax.jit(lambda t: polynomial_sparsity(t, **window))
        assert [float(f(jnp.asarray(t, jnp.int64))) for t in steps] == pytest.approx(want, abs=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_polynomial_sparsity_with_an_int32_step_never_reaching_the_window_stays_initial():
    window = dict(initial=0.1, final=0.8, begin_step=2**40, end_step=2**40 + 10)
    f = jax.jit(lambda t: polynomial_sparsity(t, **window))
    assert float(f(jnp.int32(2**31 - 1))) == pytest.approx(0.1)


def test_update_steps():
    due = jax.jit(lambda t: is_update_step(t, begin_step=10, n=6, delta_t=5))
    assert [t for t in range(60) if bool(due(t))] == [10, 15, 20, 25, 30, 35, 40]


def test_schedule_errors():
    with pytest.raises(TypeError, match="end_step, or n and delta_t"):
        polynomial_sparsity(0, initial=0.0, final=0.5, begin_step=0)
    with pytest.raises(ValueError, match="before begin_step"):
        polynomial_sparsity(0, initial=0.0, final=0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="outside"):
        polynomial_sparsity(0, initial=0.0, final=1.5, begin_step=0, end_step=5)


# ---------------------------------------------------------------- exact counts


def exact_count(s, total):
    return round(Fraction(float(np.float32(s))) * total)  # Python rounds a Fraction half to even


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1, width=32), st.integers(0, 2**31 - 1))
def test_count_for_sparsity_is_exact(s, total):
    assert int(count_for_sparsity(np.float32(s), total)) == exact_count(s, total)


def test_count_for_sparsity_edges_and_jit():
    f = jax.jit(count_for_sparsity, static_argnums=1)
    cases = [(0.0, 7), (1.0, 2**31 - 1), (0.5, 3), (0.5, 5), (0.5, 7), (0.25, 10), (0.75, 10), (2.0**-130, 2**31 - 1),
             (np.nextafter(np.float32(0.5), np.float32(1)), 2**31 - 1), (0.1, 11_164_352), (0.9, 11_164_352)]
    for s, total in cases:
        assert int(f(np.float32(s), total)) == exact_count(s, total), (s, total)
    assert int(f(np.float32(np.nan), 10)) == 0
    # float32 arithmetic would be off here: 0.7 * (2**31 - 1) lands between floats 128 apart.
    s = np.float32(0.7)
    assert int(f(s, 2**31 - 1)) != int(np.round(s * np.float32(2**31 - 1)))


# ---------------------------------------------------------------- masks inside jit


def drifting_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 16)), jnp.float32), "bias": jnp.zeros(16)},
        "dense": {"kernel": jnp.asarray(rng.standard_normal((64, 10)) * 0.3, jnp.float32)},
    }


@pytest.mark.slow
def test_gradual_pruning_inside_scan_follows_the_schedule_and_matches_the_host():
    params = drifting_params()
    masks = jaxprune.init_masks(params)
    total = 3 * 3 * 4 * 16 + 64 * 10
    noise = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)

    def step(carry, t):
        params, masks = carry
        # Stand-in for training: weights drift, pruned ones could grow back were they not masked.
        params = jax.tree.map(lambda p, n: p + 0.05 * jnp.sin(t + n), params, noise)
        s = polynomial_sparsity(t, **SCHEDULE)
        due = is_update_step(t, begin_step=10, n=6, delta_t=5)
        new = jax.lax.cond(due, lambda: update_masks_on_device(params, masks, s), lambda: masks)
        return (jaxprune.apply_masks(params, new), new), (params, masks, new)

    _, (seen_params, before, after) = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(50)))((params, masks))
    for t in range(50):
        p_t = jax.tree.map(lambda x: x[t], seen_params)
        m0, m1 = (jax.tree.map(lambda x: np.asarray(x[t]), m) for m in (before, after))
        kept0, kept1 = (int(flat_masks(p_t, m).sum()) for m in (m0, m1))
        assert not np.any(flat_masks(p_t, m1) & ~flat_masks(p_t, m0))  # pruned stay pruned
        if bool(is_update_step(t, begin_step=10, n=6, delta_t=5)):
            s = polynomial_sparsity(t, **SCHEDULE)
            assert total - kept1 == exact_count(s, total)
            assert abs((total - kept1) / total - zhu_gupta(t, **SCHEDULE)) <= 0.5 / total + 1e-6
            host = jaxprune.prune_global(p_t, m0, kept0 - kept1)  # the same count, on the host
            np.testing.assert_array_equal(flat_masks(p_t, host), flat_masks(p_t, m1))
        else:
            assert kept0 == kept1
    assert total - kept1 == exact_count(np.float32(0.9), total)


def test_device_update_never_unprunes_and_takes_a_count():
    params = drifting_params(1)
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.6)
    f = jax.jit(update_masks_on_device)
    same = f(params, masks, 0.3)  # below what is pruned already: nothing changes
    np.testing.assert_array_equal(flat_masks(params, same), flat_masks(params, masks))
    pruned = jax.jit(lambda p, m, n: update_masks_on_device(p, m, pruned=n))(params, masks, jnp.int32(900))
    assert int((~flat_masks(params, pruned)).sum()) == 900
    np.testing.assert_array_equal(
        flat_masks(params, pruned), flat_masks(params, jaxprune.prune_global(params, masks, 900 - int((~flat_masks(params, masks)).sum())))
    )
    with pytest.raises(TypeError, match="exactly one of sparsity and pruned"):
        update_masks_on_device(params, masks)


@pytest.mark.parametrize("score", ["magnitude", "lamp", "random"])
def test_device_update_equals_the_forced_jax_host_path(score):
    # Any score: the device update prunes what `prune` picks with the same count on the jax kernel.
    rng = np.random.default_rng(5)
    params = {f"l{i}": {"kernel": jnp.asarray(rng.integers(-9, 10, (8, 6)), jnp.float32)} for i in range(3)}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.3, method="random", key=jax.random.key(0))
    key = jax.random.key(7)
    dev = jax.jit(lambda p, m: update_masks_on_device(p, m, 0.6, score=score, key=key))(params, masks)
    k = exact_count(0.6, 144) - int((~flat_masks(params, masks)).sum())
    with mock.patch.object(selection, "_all_on_cpu", lambda arrays: False):
        host = jaxprune.prune(params, masks, k, score=score, key=key)
    np.testing.assert_array_equal(flat_masks(params, dev), flat_masks(params, host))
