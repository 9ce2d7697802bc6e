"""Retraining modes, controls, replicates and a validation split: each asserts what it means."""

import csv
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxprune.training import checkpoint, rundir, train
from jaxprune import cli, config
from jaxprune.study import driver as study
from jaxprune.models import init_variables

MODES = ["retrain", "finetune", "lr-rewind", "weight-rewind", "reinit", "shuffle"]
ARGS = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--retrain", *MODES, "--rewind-epoch", "1", "--methods", "magnitude",
        "--schedules", "oneshot", "--targets", "0.5", "--baseline-epochs", "2", "--seeds", "0", "1",
        "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def modes_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("modes") / "study"
    assert cli.main([*ARGS, "--workdir", str(workdir)]) == 0
    cfg = cli.study_config(cli.build_parser().parse_args(ARGS))
    recorded = study.recorded_phases(workdir)
    assert sum(p.schedule == "baseline" for p in recorded) == 2
    return cfg, workdir, {(p.seed, p.retrain): p for p in recorded if p.schedule != "baseline"}


def model_at(workdir, phase, cfg, epoch=None):
    folder = workdir / phase.name / "checkpoints"
    with checkpoint.RunCheckpoints(folder, read_only=True) as ck:
        epoch = epoch or ck.latest()
        model, meta = ck.restore_model(epoch, checkpoint.abstract_model(train.abstract_state(study.phase_config(cfg, phase))))
    return model, meta


def prunable_masks(masks):
    return [np.asarray(m) for m in jax.tree.leaves(masks) if np.ndim(m)]


@pytest.mark.slow
def test_every_mode_and_seed_trains_and_is_recorded(modes_study):
    cfg, workdir, phases = modes_study
    assert len(phases) == 2 * len(MODES)  # per seed: one phase per mode (besides its baseline)
    assert (workdir / "seed-1" / "baseline").is_dir() and (workdir / "oneshot-magnitude-0.50-finetune").is_dir()
    with open(workdir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(study.RESULT_FIELDS)
    assert {(r["seed"], r["retrain"]) for r in rows if r["schedule"] == "oneshot"} == {
        (s, m) for s in ("0", "1") for m in MODES}
    # Each seed has its own baseline.
    curves = [[r["test_acc"] for r in rundir.read_metrics(workdir / home / "baseline")] for home in ("", "seed-1")]
    assert curves[0] != curves[1]


@pytest.mark.slow
def test_finetune_holds_the_parents_last_lr(modes_study):
    cfg, workdir, phases = modes_study
    base_lr = rundir.read_metrics(workdir / "baseline")[-1]["lr"]
    lrs = [r["lr"] for r in rundir.read_metrics(workdir / phases[0, "finetune"].name)]
    assert lrs == [base_lr] * cfg.round_epochs and base_lr < cfg.train.lr
    assert rundir.read_metrics(workdir / phases[0, "retrain"].name)[0]["lr"] == cfg.train.lr  # a fresh schedule


@pytest.mark.slow
def test_lr_rewind_replays_the_baselines_last_epochs(modes_study):
    cfg, workdir, phases = modes_study
    base = [r["lr"] for r in rundir.read_metrics(workdir / "baseline")]
    rewound = [r["lr"] for r in rundir.read_metrics(workdir / phases[0, "lr-rewind"].name)]
    assert rewound == base[-cfg.round_epochs:]


@pytest.mark.slow
def test_weight_rewind_starts_from_the_baselines_epoch_k_under_the_mask(modes_study):
    cfg, workdir, phases = modes_study
    phase = phases[0, "weight-rewind"]
    with checkpoint.RunCheckpoints(workdir / "baseline" / "checkpoints", read_only=True) as ck:
        assert 1 in ck.epochs()  # the baseline kept its rewind epoch
    base_cfg = study.phase_config(cfg, study.Phase("baseline", "", 0.0, 0, 0, 0.0, None))
    with checkpoint.RunCheckpoints(workdir / "baseline" / "checkpoints", read_only=True) as ck:
        rewind, _ = ck.restore_model(1, checkpoint.abstract_model(train.abstract_state(base_cfg)))
        final, _ = ck.restore_model(ck.latest(), checkpoint.abstract_model(train.abstract_state(base_cfg)))
    parent = study.Final(final["params"], final["batch_stats"], final["masks"], 0.1)
    spec = study.phase_spec(cfg, workdir, phase, parent)
    for a, b in zip(jax.tree.leaves(spec.start["params"]), jax.tree.leaves(rewind["params"])):
        np.testing.assert_array_equal(a, b)
    # The masks are the parent's final weights pruned (as its retrain twin's), not the epoch-1 weights'.
    twin, _ = model_at(workdir, phases[0, "retrain"], cfg)
    for a, b in zip(prunable_masks(spec.masks), prunable_masks(twin["masks"])):
        np.testing.assert_array_equal(a, b)
    # Training starts under the mask: the state's params are the rewound weights with pruned ones at 0.
    tx = train.make_optimizer(spec.cfg, 32)
    state = train.create_train_state(spec.start, tx, spec.cfg.seed, spec.masks)
    for p, r, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(rewind["params"]), jax.tree.leaves(spec.masks)):
        p, r, m = np.asarray(p), np.asarray(r), np.asarray(m)
        assert (p == np.where(m, r, 0)).all()


@pytest.mark.slow
def test_reinit_takes_the_twins_mask_with_fresh_masked_weights(modes_study):
    cfg, workdir, phases = modes_study
    twin, _ = model_at(workdir, phases[0, "retrain"], cfg)
    reinit, _ = model_at(workdir, phases[0, "reinit"], cfg)
    for a, b in zip(prunable_masks(reinit["masks"]), prunable_masks(twin["masks"])):
        np.testing.assert_array_equal(a, b)
    for p, m in zip(jax.tree.leaves(reinit["params"]), jax.tree.leaves(reinit["masks"])):
        if np.ndim(m):
            assert (np.asarray(p)[~np.asarray(m)] == 0).all()
    base_cfg = study.phase_config(cfg, study.Phase("baseline", "", 0.0, 0, 0, 0.0, None))
    with checkpoint.RunCheckpoints(workdir / "baseline" / "checkpoints", read_only=True) as ck:
        final, _ = ck.restore_model(ck.latest(), checkpoint.abstract_model(train.abstract_state(base_cfg)))
    spec = study.phase_spec(cfg, workdir, phases[0, "reinit"], study.Final(final["params"], final["batch_stats"], final["masks"]))
    moved = [np.mean(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(spec.start["params"]), jax.tree.leaves(final["params"])) if np.ndim(a) >= 2]
    assert min(moved) > 0.99  # fresh weights, not the parent's


@pytest.mark.slow
def test_shuffle_keeps_each_layers_count_and_moves_its_positions(modes_study):
    cfg, workdir, phases = modes_study
    twin, _ = model_at(workdir, phases[0, "retrain"], cfg)
    shuffled, _ = model_at(workdir, phases[0, "shuffle"], cfg)
    changed = []
    for a, b in zip(prunable_masks(shuffled["masks"]), prunable_masks(twin["masks"])):
        assert a.sum() == b.sum()  # the same count per layer
        changed.append(np.mean(a != b))
    assert max(changed) > 0.1 and sum(c > 0 for c in changed) >= len(changed) // 2


@pytest.mark.slow
def test_a_validation_split_chooses_the_best_epoch(tmp_path):
    w = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--epochs", "2", "--val-split", "256", "--workdir", str(w),
                     "--no-progress"]) == 0
    rows = rundir.read_metrics(w)
    assert all(r["val_acc"] is not None and 0 <= r["val_acc"] <= 1 for r in rows)
    best_val = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -i)) + 1
    folder, epoch = checkpoint.locate(w, "best")
    assert epoch == best_val
    ds = config.TrainConfig(data="synthetic:2048,512", val_split=256)
    from jaxprune.data import sources as data
    prepared = data.load(ds.data).prepared(ds)
    assert len(prepared.train_labels) == 2048 - 256 and len(prepared.val_labels) == 256
    assert prepared.prepared(ds) is prepared  # idempotent: not split twice


@pytest.fixture
def table():
    from jaxprune.study import modes

    before = dict(modes.RETRAINING)
    yield modes
    modes.RETRAINING.clear()
    modes.RETRAINING.update(before)  # the test's entry goes with it


def test_a_mode_added_by_one_table_entry_is_planned_named_configured_and_started(table):
    """Adding a retraining mode is one entry: the plan, names, phase configs and starting
    points and validation all read the table."""
    modes = table
    modes.register_retraining(modes.Retraining(
        "half-lr", "the parent's weights, half the learning rate",
        suffix=lambda k: "-half-lr",
        config=lambda c: {"lr": c.train.lr / 2},
        start=lambda s, src: dataclasses.replace(s, variables=jax.tree.map(lambda x: x * 0, s.variables)),
        check=lambda c: "half-lr needs --round-epochs 1" if c.round_epochs != 1 else None,
    ))
    with pytest.raises(ValueError, match="already registered"):
        modes.register_retraining(modes.Retraining("half-lr", "again"))
    cfg = config.study_preset("tiny", retrain=("retrain", "half-lr"), methods=("magnitude",),
                              schedules=("oneshot",), targets=(0.5,))
    cfg.validate()
    with pytest.raises(config.ConfigError, match="half-lr needs --round-epochs 1"):
        dataclasses.replace(cfg, round_epochs=2).validate()
    total = study.prunable_total(cfg.train)
    names = [p.name for p in study.plan(cfg, total)]
    assert names == ["baseline", "oneshot-magnitude-0.50/round-01", "oneshot-magnitude-0.50-half-lr/round-01"]
    phase = study.plan(cfg, total)[-1]
    assert study.phase_config(cfg, phase).lr == cfg.train.lr / 2
    assert study.phase_config(cfg, study.plan(cfg, total)[1]).lr == cfg.train.lr
    variables = init_variables(train.build_model(cfg.train), 0)
    masks = train.create_train_state(variables, train.make_optimizer(cfg.train, 1), 0).masks
    parent = study.Final(variables["params"], variables["batch_stats"], masks, last_lr=0.01)
    spec = study.phase_spec(cfg, Path("/nonexistent"), phase, parent)
    assert all(float(abs(x).max()) == 0 for x in jax.tree.leaves(spec.start["params"]))
    assert spec.cfg.lr == cfg.train.lr / 2 and spec.workdir.name == "round-01"
    # Pruned by the plan's count from the parent, as every chain mode is.
    kept = sum(int(np.sum(m)) for m in prunable_masks(spec.masks))
    assert kept == total - phase.count
