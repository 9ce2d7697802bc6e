"""The study: plans from exact counts, the smoke study end to end, kill-and-resume, bad input."""

import csv
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxprune import cli, config, export, models
from jaxprune.models import cost as model_cost
from jaxprune.training import evaluation
from jaxprune.study import driver as study
from tests.conftest import TORCH_KEPT_22_ROUNDS

TOTAL = 11_164_352


def test_seed_plan_is_the_write_up(resnet18_shapes):
    cfg = config.study_preset("seed")
    assert study.prunable_total(cfg.train) == TOTAL
    phases = study.plan(cfg, TOTAL)
    per_method = {m: [p for p in phases if p.method == m] for m in cfg.methods}
    for m, ps in per_method.items():
        oneshot = [p for p in ps if p.schedule == "oneshot"]
        assert [(p.target, p.count, p.parent) for p in oneshot] == [
            (t, round(t * TOTAL), "baseline") for t in (0.5, 0.75, 0.9)
        ]
        chains = {t: [p for p in ps if p.schedule == "iterative" and p.target == t] for t in (0.5, 0.75, 0.9)}
        assert [len(c) for c in chains.values()] == [7, 14, 22]
        # Exact sparsities, matching torch's counts, every round.
        assert [p.sparsity for p in chains[0.9]] == [1 - k / TOTAL for k in TORCH_KEPT_22_ROUNDS]
        assert chains[0.9][3].parent == "iterative-%s-0.90/round-03" % m
        assert chains[0.9][3].name == "iterative-%s-0.90/round-04" % m
    epochs = sum(study.phase_config(cfg, p).epochs for p in phases)
    assert epochs == 90 + 2 * (3 + 7 + 14 + 22) * 90  # 4,230 per method, baseline shared
    shared = study.plan(config.study_preset("seed", shared_chain=True), TOTAL)
    assert sum(p.schedule == "iterative" for p in shared) == 2 * 22


def test_separate_chains_draw_independent_random_masks():
    cfg = config.study_preset("seed")
    phases = [p for p in study.plan(cfg, TOTAL) if p.method == "random" and p.round == 1 and p.schedule == "iterative"]
    keys = {str(study.pruning_key(cfg, p)) for p in phases}
    seeds = {study.phase_config(cfg, p).seed for p in phases}
    assert len(phases) == 3 and len(keys) == 3 and len(seeds) == 3


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "study"
    # The preset's magnitude half (CI's first command runs the whole preset) on a quarter of its
    # data: the plan, counts, checkpoints and report depend on neither.
    assert cli.main(["study", "--preset", "smoke", "--methods", "magnitude", "--data", "synthetic:512,128",
                     "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[1/8\] baseline: sparsity 0.00%, best test accuracy [\d.]+%; 7 epochs left, about [\d.]+ (s|min|h)$",
                     out, re.M), out  # the time left at the pace measured so far
    assert re.search(r"^\[8/8\] .*%$", out, re.M), out  # nothing left: no estimate
    rows = read_rows(workdir / "results.csv")
    assert list(rows[0]) == list(study.RESULT_FIELDS)
    cfg = config.study_preset("smoke", methods=("magnitude",))
    got = sorted({(r["schedule"], r["method"], float(r["target"]), int(r["round"]), float(r["sparsity"])) for r in rows})
    expected = [("baseline", "", 0.0, 0, 0.0)]
    expected += [("oneshot", "magnitude", t, 1, t) for t in (0.5, 0.75, 0.9)]
    expected += [("iterative", "magnitude", 0.9, r, s) for r, s in ((1, 0.5), (2, 0.75), (3, 0.875), (4, 0.9375))]
    assert len(got) == len(expected) == 8
    total = study.prunable_total(cfg.train)
    for g, e in zip(got, sorted(expected)):
        assert g[:4] == e[:4] and abs(g[4] - e[4]) <= 1 / total  # exact counts, to the weight
    assert len(rows) == cfg.baseline_epochs + 7 * cfg.round_epochs
    # The whole preset plans both methods' 14 phases after the baseline (CI trains them all).
    assert len(study.plan(config.study_preset("smoke"), total)) == 15
    # Every phase's checkpoint restores to the sparsity recorded for it.
    for phase in study.plan(cfg, study.prunable_total(cfg.train)):
        result = evaluation.evaluate_checkpoint(workdir / phase.name)
        assert result.sparsity.total.sparsity == pytest.approx(phase.sparsity, abs=1e-12)
        recorded = [r for r in rows if (r["schedule"], r["method"], r["round"]) == (phase.schedule, phase.method, str(phase.round))
                    and float(r["target"]) == phase.target]
        assert float(recorded[-1]["test_acc"]) == pytest.approx(result.test_acc, abs=1e-6)
        # Size and multiply-adds: the row's counts are those of the checkpoint's masked weights,
        # and the non-zero entries of the PyTorch twin's state_dict (parameters, not statistics).
        params, batch_stats, masks, _, _ = export.load_for_export(workdir / phase.name)
        counted = model_cost.cost(models.get("resnet18").build(10, 4), {"params": params, "batch_stats": batch_stats}, masks)
        sd = export.to_torch_state_dict(params, batch_stats, masks)
        twin_nz = sum(int(np.count_nonzero(x)) for k, x in sd.items() if k.endswith((".weight", ".bias")))
        last = recorded[-1]
        assert int(last["params_nz"]) == counted.params_nz == twin_nz, phase.name
        assert (int(last["params"]), int(last["flops"])) == (counted.params, counted.flops)
        assert int(last["flops_nz"]) == round(counted.flops_nz), phase.name
        assert float(last["compression"]) == round(counted.params / counted.params_nz, 4)
        assert float(last["speedup"]) == round(counted.flops / counted.flops_nz, 4)
        assert last["structure"] == ("" if phase.schedule == "baseline" else "unstructured")
    report = workdir / "report"
    for name in ("figure1_baseline.png", "figure2_oneshot.png", "figure3_iterative_0.50.png",
                 "figure4_iterative_0.75.png", "figure5_iterative_0.90.png", "summary.png", "report.md", "buys.png",
                 *[f"{stem}.{ext}" for stem in ("table1_oneshot", "table2_iterative_0.50", "table3_iterative_0.75",
                                                "table4_iterative_0.90", "table5_summary", "table12_cost") for ext in ("md", "csv")]):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    assert (report / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A finished study keeps no optimizer state: every phase's kept epochs are model-only.
    assert list(workdir.glob("**/checkpoints/*/model")) and not list(workdir.glob("**/checkpoints/*/train"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--targets", "0.5", "1.0"], "--targets must each be in (0, 1)"),
        (["--targets", "0"], "--targets must each be in (0, 1)"),
        (["--step", "1.5"], "--step must be in (0, 1)"),
        (["--step", "0"], "--step must be in (0, 1)"),
        (["--methods", "l1"], "unknown method 'l1'"),
    ],
)
def test_bad_study_input(tmp_path, capsys, args, words):
    code = cli.main(["study", "--preset", "tiny", "--workdir", str(tmp_path / "w"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_mismatched_baseline_and_foreign_workdir_are_refused(tmp_path, capsys, small_study):
    base = small_study / "baseline"  # a finished 1-epoch tiny run at width 8, read only
    tiny = ["--data", "synthetic:256,64"]
    capsys.readouterr()
    code = cli.main(["study", "--preset", "tiny", *tiny, "--width", "4", "--baseline", str(base),
                     "--workdir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "width-8" in err and "don't match" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    # A study dir holding another study's results is refused and left as it was.
    s = tmp_path / "s2"
    small = ["study", "--preset", "tiny", *tiny, "--baseline", str(base), "--methods", "magnitude", "--schedules",
             "oneshot", "--targets", "0.5", "--no-progress", "--no-report", "--workdir", str(s)]
    assert cli.main(small) == 0
    before = (s / "results.csv").read_bytes()
    capsys.readouterr()
    assert cli.main([*small, "--round-epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and "round_epochs: 1 there, 2 now" in err
    assert (s / "results.csv").read_bytes() == before
    # With a given baseline, its recorded curve is part of the results.
    rows = read_rows(s / "results.csv")
    assert [r["schedule"] for r in rows] == ["baseline", "oneshot"]


@pytest.mark.slow
def test_vmapped_phases_complete_and_match_one_at_a_time(tmp_path):
    """--parallel-runs 3 trains the three one-shot phases as one vmapped group (run axis 3);
    XLA batches their convolutions into grouped ones, which round differently in the last
    bits, so results agree with --parallel-runs 1 within a tolerance, not bit for bit."""
    base = tmp_path / "base"
    assert cli.main(["train", "--preset", "tiny", "--epochs", "1", "--workdir", str(base), "--no-progress"]) == 0
    common = ["study", "--preset", "tiny", "--baseline", str(base), "--methods", "magnitude",
              "--schedules", "oneshot", "--no-progress", "--no-report"]
    assert cli.main([*common, "--workdir", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--parallel-runs", "3", "--workdir", str(tmp_path / "three")]) == 0
    one, three = read_rows(tmp_path / "one" / "results.csv"), read_rows(tmp_path / "three" / "results.csv")
    key = lambda r: (r["schedule"], r["target"], r["epoch"])  # noqa: E731
    assert [key(r) for r in one] == [key(r) for r in three] and len(one) == 1 + 3
    for a, b in zip(one, three):
        assert float(a["sparsity"]) == float(b["sparsity"])
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=0.005)  # seen: 0.05%
        # Seen: 0.4 points at 11cbdbb's CI; 2.15 (11 of 512 test images, one phase; train loss
        # within 0.1%) with the dependencies pip resolved on 2026-12-07 (flax 0.12.8, optax 0.2.8,
        # numpy 2.4.6, jax 0.10.2): one epoch from a one-epoch baseline sits on a steep slope.
        assert float(a["test_acc"]) == pytest.approx(float(b["test_acc"]), abs=0.03)


def test_parallel_groups_are_ready_phases_of_one_recipe_in_plan_order():
    """What --parallel-runs trains together (the local driver's groups, and the Ray executor's tasks)."""
    from jaxprune.study import phases as phase_lib, planning

    cfg = config.study_preset("tiny", targets=(0.5, 0.75), methods=("magnitude",), parallel_runs=2,
                              retrain=("retrain", "finetune"))
    cfg.validate()
    plan = planning.plan(cfg, planning.prunable_total(cfg.train))
    names = lambda gs: [[p.name for p in g] for g in gs]  # noqa: E731
    one, it = "oneshot-magnitude-{}/round-01", "iterative-magnitude-0.75{}/round-0{}"
    # Up to 2 ready phases sharing the first one's recipe; finetune's is another (its own lr schedule).
    assert names(phase_lib.groups(cfg, plan, set())) == [
        ["baseline"], [one.format("0.50"), one.format("0.75")], [it.format("", 1)], [it.format("", 2)],
        [one.format("0.50-finetune"), one.format("0.75-finetune")], [it.format("-finetune", 1)],
        [it.format("-finetune", 2)],
    ]
    # Finished phases are not planned again; what they parent is ready at once.
    done = {"baseline", one.format("0.50"), it.format("", 1)}
    assert names(phase_lib.groups(cfg, [p for p in plan if p.name not in done], done)) == [
        [one.format("0.75"), it.format("", 2)], [one.format("0.50-finetune"), one.format("0.75-finetune")],
        [it.format("-finetune", 1)], [it.format("-finetune", 2)],
    ]
    with pytest.raises(study.StudyError, match="baseline is not in the plan"):
        phase_lib.groups(cfg, [p for p in plan if p.parent == "baseline"], set())
