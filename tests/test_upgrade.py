"""Studies are forever: a study directory made by an earlier release resumes and grows."""

import csv
import shutil
from pathlib import Path

import pytest

from jaxprune import cli
from jaxprune.training import rundir

FIXTURES = Path(__file__).parent / "fixtures"
ARGS = ["study", "--preset", "smoke", "--width", "2", "--data", "synthetic:128,32", "--batch-size", "32",
        "--methods", "magnitude", "--baseline-epochs", "1", "--no-progress"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# results.csv's size and multiply-add columns (models.cost), newer than both fixtures.
COST = ("structure", "params", "params_nz", "compression", "flops", "flops_nz", "speedup")


def strip_costs(rs):
    return [{k: v for k, v in r.items() if k not in COST} for r in rs]


def assert_costs_of_old_rows(rs):
    """The dense counts of the fixtures' network (resnet18 at width 2), and nothing an old log did not count."""
    assert {(r["params"], r["flops"]) for r in rs} == {("11420", "596128")}
    assert all(r["params_nz"] == r["flops_nz"] == r["compression"] == r["speedup"] == "" for r in rs)
    assert [r["structure"] for r in rs] == ["" if r["schedule"] == "baseline" else "unstructured" for r in rs]


@pytest.mark.slow
def test_a_study_from_release_5ccc1bf_resumes_with_nothing_retrained_and_grows(tmp_path, capsys):
    w = tmp_path / "study"
    shutil.copytree(FIXTURES / "study-5ccc1bf", w)
    old_rows = rows(w / "results.csv")
    assert cli.main(["report", str(w)]) == 0  # its results.csv, as that release wrote it
    assert "**Diverged:**" not in (w / "report" / "report.md").read_text()
    assert rows(w / "results.csv") == old_rows  # read as it is, not rebuilt
    old_metrics = {p: rundir.read_metrics(w / p) for p in
                   ("baseline", "oneshot-magnitude-0.50/round-01", "iterative-magnitude-0.50/round-01")}
    assert cli.main([*ARGS, "--targets", "0.5", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    assert "3 phases (3 finished), 0 of 3 epochs to train" in out and "[1/" not in out
    assert {p: rundir.read_metrics(w / p) for p in old_metrics} == old_metrics  # nothing trained again
    new_rows = rows(w / "results.csv")
    newer = ("diverged", "model", "data", *COST)  # columns the old layout lacked, filled in by the rebuild
    assert [{k: v for k, v in r.items() if k not in newer} for r in new_rows] == old_rows
    assert [(r["diverged"], r["model"], r["data"]) for r in new_rows] == [("0", "resnet18", "synthetic")] * 3
    assert_costs_of_old_rows(new_rows)
    assert "data_fingerprint" not in rundir.read_record(w / "baseline")  # finished: not opened, not changed

    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--workdir", str(w)]) == 0  # grows: only new phases train
    out = capsys.readouterr().out
    assert "(2 finished)" in out and "baseline:" not in out and "oneshot-magnitude-0.50" not in out
    assert "oneshot-magnitude-0.75/round-01" in out
    assert {p: rundir.read_metrics(w / p) for p in old_metrics} == old_metrics
    assert rundir.read_record(w / "oneshot-magnitude-0.75" / "round-01")["data_fingerprint"].startswith("128+32 ")
    assert (w / "report" / "report.md").is_file()


# ---------------------------------------------------------------- fields added by a later release

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402


from jaxprune import config as config_lib  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _LaterTrainConfig(config_lib.TrainConfig):
    """TrainConfig as a later release might have it: one more identity field, with a
    default that reproduces today's behaviour."""

    label_smoothing: float = config_lib._field(0.0, "a field today's release does not have")


def test_a_field_added_later_at_its_default_changes_neither_the_hash_nor_the_identity_check(tmp_path):
    cfg = config_lib.TrainConfig(width=2, epochs=3)
    later = _LaterTrainConfig(width=2, epochs=3)
    assert config_lib.identity_hash(later) == config_lib.identity_hash(cfg)
    assert config_lib.identity_hash(_LaterTrainConfig(width=2, epochs=3, label_smoothing=0.1)) != config_lib.identity_hash(cfg)
    # Only fields off their defaults are hashed: the defaults' hash is that of no field at all.
    assert config_lib.identity_hash(config_lib.TrainConfig()) == hashlib.sha256(b"{}").hexdigest()[:6]
    assert config_lib.identity_hash(config_lib.TrainConfig(progress=False)) == config_lib.identity_hash(config_lib.TrainConfig())

    rundir.claim(tmp_path, cfg)  # today's release makes the directory
    rundir.claim(tmp_path, later)  # the later one resumes it: the missing field reads as its default
    with pytest.raises(rundir.RunDirError, match=r"label_smoothing: 0.0 there, 0.1 now"):
        rundir.claim(tmp_path, _LaterTrainConfig(width=2, epochs=3, label_smoothing=0.1))


def test_a_saved_record_missing_a_field_reads_it_as_the_default(tmp_path):
    cfg = config_lib.TrainConfig(width=2, epochs=3)
    rundir.claim(tmp_path, cfg)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["identity"]["config"]["val_split"]  # as a release before --val-split wrote it
    (tmp_path / "config.json").write_text(json.dumps(record))
    rundir.claim(tmp_path, cfg)
    with pytest.raises(rundir.RunDirError, match=r"val_split: 0 there, 500 now"):
        rundir.claim(tmp_path, dataclasses.replace(cfg, val_split=500))
    with pytest.raises(rundir.RunDirError, match=r"width: 2 there, 4 now"):
        rundir.claim(tmp_path, dataclasses.replace(cfg, width=4))


def test_the_default_directory_an_earlier_release_named_is_found_and_resumed(tmp_path, monkeypatch, capsys):
    """5ccc1bf hashed every identity field into a default --workdir's name; today only the
    fields off their defaults are hashed. The old directory is found by its contents."""
    saved = json.loads((FIXTURES / "study-5ccc1bf" / "config.json").read_text())["identity"]["config"]
    old_hash = hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:6]  # 5ccc1bf's _recipe_hash
    old = tmp_path / "runs" / f"study-synthetic-w2-b1-r1-float32-s0-{old_hash}"
    shutil.copytree(FIXTURES / "study-5ccc1bf", old)
    monkeypatch.chdir(tmp_path)
    cfg = cli.study_config(cli.build_parser().parse_args([*ARGS, "--targets", "0.5"]))
    assert config_lib.identity_hash(cfg) != old_hash
    assert cli.default_study_workdir(cfg) == Path("runs") / old.name
    # Another recipe gets a new directory, not the old one, named with the model since the model registry.
    other = cli.study_config(cli.build_parser().parse_args([*ARGS, "--targets", "0.5", "--lr", "0.05"]))
    assert cli.default_study_workdir(other).name == f"study-resnet18-synthetic-w2-b1-r1-float32-s0-{config_lib.identity_hash(other)}"
    before = rundir.read_metrics(old / "baseline")
    assert cli.main([*ARGS, "--targets", "0.5"]) == 0
    assert "3 phases (3 finished), 0 of 3 epochs to train" in capsys.readouterr().out
    assert rundir.read_metrics(old / "baseline") == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [old.name]


def test_evaluate_on_a_study_or_chain_folder_names_the_runs_under_it(tmp_path, capsys):
    w = FIXTURES / "study-5ccc1bf"
    assert cli.main(["evaluate", str(w)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxprune evaluate: error: {w} is a folder of runs, not one run: give one of baseline, "
                   "iterative-magnitude-0.50/round-01, oneshot-magnitude-0.50/round-01 (under it)"]
    assert cli.main(["evaluate", str(w / "oneshot-magnitude-0.50")]) == 2
    assert "give one of round-01 (under it)" in capsys.readouterr().err


def test_the_model_registry_changes_no_identity_or_name_of_a_resnet18_run():
    """The fields the model registry added (model, width 0 = the model's own, normalization,
    milestones, gamma, warmup_steps) leave every resnet18 run's identity and hash as the
    release before them (7525dde) saved and computed them."""
    before = {"data": "cifar10-bin:~/.cache/cifar10", "train_subset": 0, "width": 64, "dtype": "float32", "epochs": 90,
              "batch_size": 128, "drop_last": False, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005,
              "schedule": "epoch-cosine", "t_max": 200, "schedule_start": 0, "val_split": 0, "exclude": [],
              "prune_to": 0.0, "prune_from": 0.0, "prune_end": 0.75, "prune_every": 0, "prune_score": "magnitude",
              "augment": True, "eval_batch_size": 1000, "seed": 0, "steps_per_dispatch": 0, "devices": 0,
              "progress": True, "on_divergence": "stop", "deterministic": False}  # 7525dde's config.json
    now = config_lib.TrainConfig()
    assert now.width == 64 and now.model == "resnet18"
    assert config_lib.saved_identity(config_lib.TrainConfig, before) == config_lib.identity(now)
    # Six hex digits as 7525dde computed them for these configs.
    assert config_lib.identity_hash(now) == "44136f" and config_lib.identity_hash(config_lib.StudyConfig()) == "44136f"
    assert config_lib.identity_hash(config_lib.study_preset("smoke")) == "6a3712"
    assert config_lib.identity_hash(config_lib.TrainConfig(**config_lib.TRAIN_PRESETS["smoke"])) == "922479"
    # A width given explicitly is the same run as the default that resolves to it.
    assert config_lib.identity(config_lib.TrainConfig(width=64)) == config_lib.identity(now)
    other = config_lib.TrainConfig(model="cifar_resnet_20")
    assert other.width == 16 and config_lib.identity_hash(other) != "44136f"


@pytest.mark.slow
def test_a_study_from_release_11cbdbb_resumes_with_nothing_retrained_and_grows(tmp_path, capsys):
    # The release before the house moved into folders and metrics.csv gained images_per_s.
    w = tmp_path / "study"
    shutil.copytree(FIXTURES / "study-11cbdbb", w)
    old_rows = rows(w / "results.csv")
    phases = ("baseline", "oneshot-magnitude-0.50/round-01", "iterative-magnitude-0.50/round-01")
    old_metrics = {p: (w / p / "metrics.csv").read_bytes() for p in phases}
    assert b"images_per_s" not in old_metrics["baseline"]
    assert cli.main([*ARGS, "--targets", "0.5", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    assert "3 phases (3 finished), 0 of 3 epochs to train" in out and "[1/" not in out
    assert {p: (w / p / "metrics.csv").read_bytes() for p in phases} == old_metrics  # not trained, not rewritten
    assert strip_costs(rows(w / "results.csv")) == old_rows
    assert_costs_of_old_rows(rows(w / "results.csv"))

    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--workdir", str(w)]) == 0  # grows: only new phases train
    out = capsys.readouterr().out
    assert "oneshot-magnitude-0.75/round-01" in out and "oneshot-magnitude-0.50" not in out
    assert {p: (w / p / "metrics.csv").read_bytes() for p in phases} == old_metrics
    new = rows(w / "oneshot-magnitude-0.75" / "round-01" / "metrics.csv")
    assert new and all(float(r["images_per_s"]) > 0 for r in new)
    grown = rows(w / "results.csv")
    assert strip_costs(grown[: len(old_rows)]) == old_rows
    # The new phases log their size and multiply-adds; the old phases' rows leave them empty.
    new = grown[len(old_rows):]
    assert [(r["schedule"], r["round"], r["compression"], r["speedup"]) for r in new] == [  # seen: equal
        ("oneshot", "1", "3.6982", "2.1346"), ("iterative", "1", "1.9471", "1.5452"), ("iterative", "2", "3.6994", "2.1535")]
    assert (w / "report" / "report.md").is_file()
