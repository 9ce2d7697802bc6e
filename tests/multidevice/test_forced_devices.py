"""Tests that need several devices, run in one pytest session of their own with
4 forced CPU devices (tests/test_parallel.py starts it: XLA_FLAGS must be set before
JAX starts, so these cannot share the main session's single device).

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m pytest tests/multidevice
"""

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import cli, config
from jaxprune.data import sources as data
from jaxprune.training import devices, loop, train
from jaxprune.models import Tiny, init_variables


def test_four_forced_devices_are_present():
    assert jax.device_count() == 4, jax.devices()
    assert devices.layout(0, 4, 32) == (4, 1) and devices.layout(0, 2, 32) == (2, 2)
    assert devices.layout(0, 3, 32) == (3, 1) and devices.layout(0, 1, 32) == (1, 4)


def test_masks_stay_on_the_params_device():
    """On a device other than the default one (with one device this could not fail)."""
    other = jax.devices()[1]
    assert other != jax.devices()[0]
    params = {"k": {"kernel": jax.device_put(jnp.ones((4, 4)), other)}}
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    assert masks["k"]["kernel"].devices() == {other}


def test_data_parallel_over_two_devices_matches_one(tmp_path):
    # Compared in float64 for the params: in float32 a ReLU kink crossed by
    # rounding makes 1 vs 2 devices differ by ~1e-2 (jax 0.6).
    try:
        cfg = config.TrainConfig(data="synthetic:128,40", model="tiny", width=4, epochs=1, batch_size=32,
                                 eval_batch_size=16, progress=False)
        ds = data.load(cfg.data)
        v = init_variables(train.build_model(cfg), 0)

        def run(n, dtype, steps):
            c = dataclasses.replace(cfg, devices=n)
            tx = train.make_optimizer(c, 100)
            fns = train.make_step_fns(Tiny(data.NUM_CLASSES, c.width, dtype), tx, c)
            st = train.create_train_state(jax.tree.map(lambda a: jnp.asarray(a, dtype), v), tx, 0, None, devices.mesh(n))
            x, y = devices.put_replicated((ds.train_images[:32], ds.train_labels[:32]), devices.mesh(n))
            for _ in range(steps):
                st, m = fns.train_step(st, x, y)
            ev = fns.evaluate(st.params, st.batch_stats, st.masks, *devices.put_replicated((ds.test_images, ds.test_labels), devices.mesh(n)))
            assert len(st.params["fc"]["kernel"].sharding.device_set) == n
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
        with pytest.raises(config.ConfigError, match="does not split evenly over 2 devices"):
            dataclasses.replace(cfg, batch_size=33, devices=2).validate()
        # A whole run, checkpointed and evaluated, on two devices (float32).
        from jaxprune.training import loop
        r = loop.train_and_evaluate(dataclasses.replace(cfg, devices=2), tmp_path / "dp", dataset=ds)
        assert r.history[-1]["epoch"] == 1
    finally:
        jax.config.update("jax_enable_x64", False)


def test_runs_sharded_over_four_devices_match_one(tmp_path):
    try:

        # float64, two masked steps: 4 runs sharded 4 ways (4 x 1), and 2 runs over a
        # 2 x 2 mesh (each run's batch split over 2 devices), against each run alone
        # on one device. Equal to float64 rounding (seen: ~1e-15).
        jax.config.update("jax_enable_x64", True)
        cfg = config.TrainConfig(data="synthetic:128,40", model="tiny", width=4, epochs=1, batch_size=32, eval_batch_size=16,
                                 progress=False, devices=1)
        ds = data.load(cfg.data)
        x, y = ds.train_images[:32], ds.train_labels[:32]
        model = Tiny(data.NUM_CLASSES, cfg.width, jnp.float64)
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
            kernel = st.params["fc"]["kernel"]
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
        small = ["--data", "synthetic:256,64", "--no-progress"]
        assert cli.main(["train", "--preset", "tiny", "--epochs", "1", "--devices", "1", "--workdir", f"{tmp_path}/base", *small]) == 0
        common = ["study", "--preset", "tiny", "--baseline", f"{tmp_path}/base", "--methods", "magnitude", "--targets",
                  "0.5", "0.75", "0.875", "0.9", "--schedules", "oneshot", "--no-report", *small]
        assert cli.main([*common, "--devices", "1", "--workdir", f"{tmp_path}/one"]) == 0
        assert cli.main([*common, "--parallel-runs", "4", "--devices", "4", "--workdir", f"{tmp_path}/four"]) == 0
        rows = {n: list(csv.DictReader(open(f"{tmp_path}/{n}/results.csv"))) for n in ("one", "four")}
        assert len(rows["one"]) == len(rows["four"]) == 5
        for a, b in zip(rows["one"], rows["four"]):
            assert (a["target"], a["epoch"], a["sparsity"]) == (b["target"], b["epoch"], b["sparsity"])
            print(a["target"], a["train_loss"], b["train_loss"], a["test_acc"], b["test_acc"])
            assert abs(float(a["train_loss"]) - float(b["train_loss"])) <= 0.01 * float(a["train_loss"])
            assert abs(float(a["test_acc"]) - float(b["test_acc"])) <= 0.06
        # Each phase's checkpoint restores on one device (the CLI's evaluate).
        assert cli.main(["evaluate", f"{tmp_path}/four/oneshot-magnitude-0.875/round-01"]) == 0
    finally:
        jax.config.update("jax_enable_x64", False)
