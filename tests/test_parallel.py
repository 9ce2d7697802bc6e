"""Several runs vmapped on one device, and data parallelism over several devices."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import config, data, loop, train
from jaxprune.models import init_variables


def tiny(**overrides):
    base = dict(data="synthetic:128,40", width=4, epochs=2, batch_size=32, eval_batch_size=16, progress=False)
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
    assert not np.array_equal(whole[0].state.params["head"]["kernel"], whole[1].state.params["head"]["kernel"])


DATA_PARALLEL = textwrap.dedent("""
    import dataclasses, jax, jax.numpy as jnp, numpy as np
    from jaxprune import config, data, devices, train
    from jaxprune.models import ResNet18, init_variables
    assert jax.device_count() == 2, jax.devices()
    cfg = config.TrainConfig(data="synthetic:128,40", width=4, epochs=1, batch_size=32,
                             eval_batch_size=16, progress=False)
    ds = data.load(cfg.data)
    v = init_variables(train.build_model(cfg), 0)

    def run(n, dtype, steps):
        c = dataclasses.replace(cfg, devices=n)
        tx = train.make_optimizer(c, 100)
        fns = train.make_step_fns(ResNet18(data.NUM_CLASSES, c.width, dtype), tx, c)
        st = train.create_train_state(jax.tree.map(lambda a: jnp.asarray(a, dtype), v), tx, 0, None, devices.mesh(n))
        x, y = devices.put_replicated((ds.train_images[:32], ds.train_labels[:32]), devices.mesh(n))
        for _ in range(steps):
            st, m = fns.train_step(st, x, y)
        ev = fns.evaluate(st.params, st.batch_stats, st.masks, *devices.put_replicated((ds.test_images, ds.test_labels), devices.mesh(n)))
        assert len(st.params["head"]["kernel"].sharding.device_set) == n
        return jax.tree.map(np.asarray, (st.params, st.batch_stats)), float(m[0]), float(ev["test_acc"])

    def maxdiff(a, b):
        return max(float(np.abs(p - q).max()) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # float32, one step: the forward quantities (the loss, BatchNorm statistics
    # over the global batch) are continuous in rounding, so they agree to f32
    # noise (seen: <= 4e-7); statistics per shard would differ by ~1e-3.
    (_, bs1), l1, _ = run(1, jnp.float32, 1)
    (_, bs2), l2, _ = run(2, jnp.float32, 1)
    print("f32 step 1: loss", l1, l2, "max_batch_stats_diff", maxdiff(bs1, bs2))
    assert abs(l1 - l2) <= 1e-5 * abs(l1) and maxdiff(bs1, bs2) < 1e-5
    # Gradients are not continuous in rounding: a pre-ReLU value within f32
    # rounding of 0 can fall on the other side of the kink on 2 devices (another
    # summation order) and change the gradient by a finite step. jax 0.6 flips
    # 4 such values here and the params differed by 1e-2 after two steps, as
    # much as real bugs would (per-shard BatchNorm: 4e-2). In float64 nothing
    # lies that close to 0, so two steps must agree to rounding (seen: 3e-15).
    jax.config.update("jax_enable_x64", True)
    out = {n: run(n, jnp.float64, 2) for n in (1, 2)}
    jax.config.update("jax_enable_x64", False)
    diff = maxdiff(out[1][0], out[2][0])
    print("f64 two steps: max_param_diff", diff, "loss", out[1][1], out[2][1], "acc", out[1][2], out[2][2])
    assert diff < 1e-9, diff
    assert abs(out[1][1] - out[2][1]) <= 1e-6 * abs(out[1][1]) and out[1][2] == out[2][2]
    try:
        dataclasses.replace(cfg, batch_size=33, devices=2).validate()
        raise SystemExit("batch 33 over 2 devices was accepted")
    except config.ConfigError as e:
        assert "does not split evenly over 2 devices" in str(e)
    # A whole run, checkpointed and evaluated, on two devices (float32).
    from jaxprune import loop
    r = loop.train_and_evaluate(dataclasses.replace(cfg, devices=2), "RUNDIR", dataset=ds)
    assert r.history[-1]["epoch"] == 1
    print("ok")
""")


def test_data_parallel_over_two_cpu_devices_matches_one(tmp_path):
    # Compared in float64 for the params (see the script): in float32 a ReLU
    # kink crossed by rounding makes 1 vs 2 devices differ by ~1e-2 (jax 0.6).
    # JAX_PLATFORMS=cpu: these are forced host devices; on a GPU machine the
    # default backend would otherwise be its one GPU.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = DATA_PARALLEL.replace("RUNDIR", str(tmp_path / "dp"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def test_more_devices_than_present_is_refused():
    with pytest.raises(config.ConfigError, match=r"but only \d+ devices? (is|are) present"):
        tiny(devices=jax.device_count() + 1).validate()


RUNS_OVER_DEVICES = textwrap.dedent("""
    import csv, dataclasses, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import jaxprune
    from jaxprune import cli, config, data, devices, loop, train
    from jaxprune.models import ResNet18, init_variables
    assert jax.device_count() == 4, jax.devices()
    assert devices.layout(0, 4, 32) == (4, 1) and devices.layout(0, 2, 32) == (2, 2)
    assert devices.layout(0, 3, 32) == (3, 1) and devices.layout(0, 1, 32) == (1, 4)

    # float64, two masked steps: 4 runs sharded 4 ways (4 x 1), and 2 runs over a
    # 2 x 2 mesh (each run's batch split over 2 devices), against each run alone
    # on one device. Equal to float64 rounding (seen: ~1e-15).
    jax.config.update("jax_enable_x64", True)
    cfg = config.TrainConfig(data="synthetic:128,40", width=4, epochs=1, batch_size=32, eval_batch_size=16,
                             progress=False, devices=1)
    ds = data.load(cfg.data)
    x, y = ds.train_images[:32], ds.train_labels[:32]
    model = ResNet18(data.NUM_CLASSES, cfg.width, jnp.float64)
    tx = train.make_optimizer(cfg, 100)
    alone_mesh = devices.mesh(1)
    states = []
    for seed in range(4):
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), init_variables(train.build_model(cfg), seed))
        masks = jaxprune.prune_global(v["params"], jaxprune.init_masks(v["params"]), 0.2 * seed)
        states.append(train.create_train_state(v, tx, seed, masks, alone_mesh))
    one = train.make_step_fns(model, tx, cfg, mesh=alone_mesh)
    alone = []
    for s in states:
        s = jax.tree.map(jnp.copy, s)
        for _ in range(2):
            s, _ = one.train_step(s, x, y)
        alone.append(s)
    for runs, shape in ((4, (4, 1)), (2, (2, 2))):
        mesh = devices.mesh(4, shape[0])
        many = train.make_step_fns(model, tx, cfg, runs=True, mesh=mesh)
        st = loop._stack([train.create_train_state(jax.tree.map(np.asarray, {"params": s.params, "batch_stats": s.batch_stats}),
                                                   tx, seed, s.masks, mesh) for seed, s in enumerate(states[:runs])], mesh)
        for _ in range(2):
            st, _ = many.train_step(st, x, y)
        kernel = st.params["head"]["kernel"]
        assert kernel.sharding.spec[0] == "runs" and len(kernel.sharding.device_set) == 4, kernel.sharding
        assert {sh.data.shape[0] for sh in kernel.addressable_shards} == {runs // shape[0]}
        ev = many.evaluate(st.params, st.batch_stats, st.masks, *devices.put_replicated((ds.test_images, ds.test_labels), mesh))
        for i in range(runs):
            diff = max(float(np.abs(np.asarray(a) - np.asarray(b)[i]).max())
                       for a, b in zip(jax.tree.leaves((alone[i].params, alone[i].batch_stats)),
                                       jax.tree.leaves((st.params, st.batch_stats))))
            print(f"runs {runs} mesh {shape}: run {i} max diff {diff:.2e}")
            assert diff < 1e-9, diff
            e1 = one.evaluate(alone[i].params, alone[i].batch_stats, alone[i].masks, ds.test_images, ds.test_labels)
            assert float(ev["test_acc"][i]) == float(e1["test_acc"])
    jax.config.update("jax_enable_x64", False)

    # A study whose 4 one-shot phases are one group, sharded 4 ways, against
    # --parallel-runs 1 on one device: the same rows, within float32 tolerance
    # (a batched convolution rounds differently, and training amplifies it).
    small = ["--data", "synthetic:1024,256", "--no-progress"]
    assert cli.main(["train", "--preset", "smoke", "--epochs", "1", "--devices", "1", "--workdir", "ROOT/base", *small]) == 0
    common = ["study", "--preset", "smoke", "--baseline", "ROOT/base", "--methods", "magnitude", "--targets",
              "0.5", "0.75", "0.875", "0.9", "--schedules", "oneshot", "--no-report", *small]
    assert cli.main([*common, "--devices", "1", "--workdir", "ROOT/one"]) == 0
    assert cli.main([*common, "--parallel-runs", "4", "--devices", "4", "--workdir", "ROOT/four"]) == 0
    rows = {n: list(csv.DictReader(open(f"ROOT/{n}/results.csv"))) for n in ("one", "four")}
    assert len(rows["one"]) == len(rows["four"]) == 5
    for a, b in zip(rows["one"], rows["four"]):
        assert (a["target"], a["epoch"], a["sparsity"]) == (b["target"], b["epoch"], b["sparsity"])
        print(a["target"], a["train_loss"], b["train_loss"], a["test_acc"], b["test_acc"])
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) <= 0.01 * float(a["train_loss"])
        assert abs(float(a["test_acc"]) - float(b["test_acc"])) <= 0.06
    # Each phase's checkpoint restores on one device (the CLI's evaluate).
    assert cli.main(["evaluate", "ROOT/four/oneshot-magnitude-0.875/round-01"]) == 0
    print("ok")
""")


def test_runs_sharded_over_four_cpu_devices_match_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    script = RUNS_OVER_DEVICES.replace("ROOT", str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@pytest.mark.parametrize("devices_, runs, message", [
    (3, 2, "use a multiple of 2 devices, or one that divides it"),
    (2, 3, "use a device count that divides 3, or a multiple of it"),
])
def test_devices_and_parallel_runs_that_do_not_fit_are_refused(devices_, runs, message):
    from jaxprune import devices as devices_lib
    with pytest.raises(devices_lib.LayoutError, match=message):
        devices_lib.layout(devices_, runs, 64, available=4)
    assert devices_lib.layout(0, 3, 64, available=4) == (3, 1)  # auto takes what fits
    assert devices_lib.layout(0, 2, 64, available=8) == (2, 4)
    assert devices_lib.layout(6, 3, 64, available=8) == (3, 2)
    with pytest.raises(devices_lib.LayoutError, match="does not split evenly over 3 devices per run"):
        devices_lib.layout(6, 2, 64, available=8)
