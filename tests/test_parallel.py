"""Several runs vmapped on one device, and data parallelism over several devices."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import config
from jaxprune.data import sources as data
from jaxprune.training import loop, train
from jaxprune.models import init_variables
from tests.conftest import run_session


def tiny(**overrides):
    base = dict(data="synthetic:128,40", model="tiny", width=4, epochs=2, batch_size=32, eval_batch_size=16, progress=False)
    return config.TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def three_states():
    cfg = tiny()
    tx = train.make_optimizer(cfg, 100)
    states = []
    for seed in range(3):
        v = init_variables(train.build_model(cfg), seed)
        masks = jaxprune.prune_global(v["params"], jaxprune.init_masks(v["params"]), 0.3 * seed)
        states.append(train.create_train_state(v, tx, seed, masks))
    return cfg, states, data.load(cfg.data)


def stack(states):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@pytest.mark.slow
def test_vmapped_runs_match_separate_runs(three_states):
    cfg, states, ds = three_states
    one = train.make_step_fns(train.build_model(cfg), train.make_optimizer(cfg, 100), cfg)
    many = train.make_step_fns(train.build_model(cfg), train.make_optimizer(cfg, 100), cfg, runs=True)
    x, y = ds.train_images[:32], ds.train_labels[:32]
    together, (loss, correct) = many.train_step(stack(states), x, y)
    for i, s in enumerate(states):
        alone, (l1, c1) = one.train_step(s, x, y)
        # Each run keeps its own key, masks and weights.
        assert int(together.step[i]) == 1 and np.array_equal(together.key[i], s.key)
        for a, b, m in zip(jax.tree.leaves(alone.params), jax.tree.leaves(together.params), jax.tree.leaves(s.masks)):
            b = np.asarray(b[i])
            # XLA batches the runs' convolutions as one grouped convolution,
            # which rounds differently in the last bits: equal within f32 noise.
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
            if np.ndim(m):
                assert (b[~np.asarray(m)] == 0).all()
        assert float(loss[i]) == pytest.approx(float(l1), rel=1e-5) and int(correct[i]) == int(c1)


@pytest.mark.slow
def test_a_run_does_not_depend_on_its_partners_or_position(three_states):
    cfg, states, ds = three_states
    many = train.make_step_fns(train.build_model(cfg), train.make_optimizer(cfg, 100), cfg, runs=True)
    x, y = ds.train_images[:32], ds.train_labels[:32]
    a, _ = many.train_step(stack([states[0], states[1]]), x, y)
    b, _ = many.train_step(stack([states[2], states[0]]), x, y)
    c, _ = many.train_step(stack([states[0], states[0]]), x, y)  # padding with a copy
    for la, lb, lc in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(np.asarray(la)[0], np.asarray(lb)[1])  # bit for bit
        np.testing.assert_array_equal(np.asarray(la)[0], np.asarray(lc)[1])


@pytest.mark.slow
def test_grouped_runs_write_their_own_dirs_and_resume_exactly(tmp_path):
    ds = data.load(tiny().data)
    specs = lambda root: [loop.RunSpec(tiny(seed=s), root / f"run{s}") for s in range(2)]  # noqa: E731
    whole = loop.train_runs(specs(tmp_path / "whole"), dataset=ds)

    class Crash(Exception):
        pass

    def crash(spec, row):  # dies after run0 recorded epoch 1 but before run1 did
        if row["epoch"] == 1 and spec.workdir.name == "run0":
            raise Crash

    with pytest.raises(Crash):
        loop.train_runs(specs(tmp_path / "cut"), dataset=ds, on_epoch=crash)
    resumed = loop.train_runs(specs(tmp_path / "cut"), dataset=ds)
    for w, r in zip(whole, resumed):
        assert [h["epoch"] for h in r.history] == [1, 2]
        for a, b in zip(jax.tree.leaves(w.state), jax.tree.leaves(r.state)):
            np.testing.assert_array_equal(a, b)
    for s in range(2):
        assert len((tmp_path / "cut" / f"run{s}" / "metrics.csv").read_text().splitlines()) == 3
    assert not np.array_equal(whole[0].state.params["fc"]["kernel"], whole[1].state.params["fc"]["kernel"])


def test_more_devices_than_present_is_refused():
    with pytest.raises(config.ConfigError, match=r"but only \d+ devices? (is|are) present"):
        tiny(devices=jax.device_count() + 1).validate()


@pytest.mark.slow
def test_the_forced_four_device_session_passes(tmp_path):
    """tests/multidevice in a pytest session of its own with 4 forced CPU devices:
    data parallelism, runs sharded over devices, masks on a non-default device.
    JAX_PLATFORMS=cpu: on a GPU machine the default backend would be its one GPU."""
    run_session("multidevice", tmp_path, {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
                passed=4, timeout=1200)


@pytest.mark.parametrize("devices_, runs, message", [
    (3, 2, "use a multiple of 2 devices, or one that divides it"),
    (2, 3, "use a device count that divides 3, or a multiple of it"),
])
def test_devices_and_parallel_runs_that_do_not_fit_are_refused(devices_, runs, message):
    from jaxprune.training import devices as devices_lib
    with pytest.raises(devices_lib.LayoutError, match=message):
        devices_lib.layout(devices_, runs, 64, available=4)
    assert devices_lib.layout(0, 3, 64, available=4) == (3, 1)  # auto takes what fits
    assert devices_lib.layout(0, 2, 64, available=8) == (2, 4)
    assert devices_lib.layout(6, 3, 64, available=8) == (3, 2)
    with pytest.raises(devices_lib.LayoutError, match="does not split evenly over 3 devices per run"):
        devices_lib.layout(6, 2, 64, available=8)
