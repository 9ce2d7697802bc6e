"""Gradual pruning (Zhu & Gupta 2017) inside the jitted training loop, and exclusions."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxprune import cli, config, masks as masks_lib
from jaxprune.data import sources as data
from jaxprune.training import loop, rundir, train
from jaxprune.study import driver as study
from jaxprune.models import init_variables

pytestmark = pytest.mark.slow  # every test here trains or starts processes that import jax


def tiny(**overrides):
    base = dict(data="synthetic:224,32", width=4, epochs=2, batch_size=32, eval_batch_size=32, progress=False,
                prune_to=0.8, prune_every=2, prune_end=0.75, schedule="cosine")
    return config.TrainConfig(**{**base, **overrides})


def kernels(tree, masks):
    return [(np.asarray(p), np.asarray(m)) for p, m in zip(jax.tree.leaves(tree), jax.tree.leaves(masks)) if np.ndim(m)]


def test_sparsity_follows_the_schedule_at_each_update_and_pruned_stay_zero():
    cfg = tiny()
    ds = data.load(cfg.data)
    n_steps = train.steps_per_epoch(cfg, len(ds.train_labels))  # 7 per epoch, 14 in all
    tx = train.make_optimizer(cfg, n_steps)
    fns = train.make_step_fns(train.build_model(cfg), tx, cfg, steps_per_epoch=n_steps)
    state = train.create_train_state(init_variables(train.build_model(cfg), 0), tx, 0)
    total = sum(m.size for _, m in kernels(state.params, state.masks))
    dt, n = 2, 6  # updates after steps 2, 4, ..., 12 (the first multiple of 2 at or past 0.75 * 14)
    seen, before = [0], None
    for t in range(1, 15):
        idx = np.arange(32 * (t - 1), 32 * t) % len(ds.train_labels)
        state, _ = fns.train_step(state, ds.train_images[idx], ds.train_labels[idx])
        pairs = kernels(state.params, state.masks)
        pruned = total - sum(int(m.sum()) for _, m in pairs)
        s_t = 0.8 + (0.0 - 0.8) * (1 - min(t, n * dt) / (n * dt)) ** 3
        if t % dt == 0 and t <= n * dt:
            # round(s_t * total), with s_t computed in float32 on the device: within one weight.
            assert abs(pruned - s_t * total) <= 1, (t, pruned, s_t * total)
        else:
            assert pruned == seen[-1], t  # unchanged between updates
        if before is not None:  # masks only lose weights
            assert all((m <= b).all() for (_, m), b in zip(pairs, before))
        assert all((p[~m] == 0).all() for p, m in pairs)  # pruned weights exactly 0 at every step
        before = [m for _, m in pairs]
        seen.append(pruned)
    assert seen[-1] == round(0.8 * total) and len(set(seen)) == n + 1


def test_a_gradual_run_resumes_bit_equal(tmp_path):
    cfg = tiny(epochs=3, prune_every=0)  # one update per epoch
    ds = data.load(cfg.data)
    whole = loop.train_and_evaluate(cfg, tmp_path / "whole", dataset=ds)

    class Crash(Exception):
        pass

    def crash(row):
        if row["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        loop.train_and_evaluate(cfg, tmp_path / "cut", dataset=ds, on_epoch=crash)
    resumed = loop.train_and_evaluate(cfg, tmp_path / "cut", dataset=ds)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    sparsities = [r["sparsity"] for r in resumed.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8, abs=1e-4)


def test_study_schedule_gradual_with_exclusions(tmp_path):
    w = tmp_path / "s"
    assert cli.main(["study", "--preset", "tiny", "--data", "synthetic:512,128", "--schedules", "gradual", "oneshot", "--methods", "magnitude",
                     "--targets", "0.75", "--round-epochs", "2", "--exclude", "conv1", "fc",
                     "--workdir", str(w), "--no-progress", "--no-report"]) == 0
    phase = "gradual-magnitude-0.75/round-01"
    rows = rundir.read_metrics(w / phase)
    assert rows[0]["sparsity"] < rows[1]["sparsity"] == pytest.approx(0.75, abs=1e-6)
    cfg = cli.study_config(cli.build_parser().parse_args(
        ["study", "--preset", "tiny", "--data", "synthetic:512,128", "--round-epochs", "2", "--exclude", "conv1", "fc"]))
    final = study.load_final(w / phase, study.phase_config(cfg, study.recorded_phases(w)[-1]))
    report = masks_lib.sparsity_report(final.masks)
    names = [r.path for r in report.rows]
    assert "conv1/kernel" not in names and "fc/kernel" not in names  # never prunable
    assert names == ["conv2/kernel"] and report.total.sparsity == pytest.approx(0.75, abs=1e-6)
