"""Divergence: a non-finite loss stops its phase in one line, is marked in results.csv and
the report, the phases that don't descend from it go on, and the study exits 1."""

import csv

import pytest

from jaxprune import cli
from jaxprune.training import rundir

pytestmark = pytest.mark.slow  # every test here trains or starts processes that import jax

DATA = ["--data", "synthetic:256,64", "--no-progress"]
STUDY = ["study", "--preset", "tiny", *DATA, "--methods", "magnitude", "--targets", "0.5", "0.75"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_diverged_study_names_its_phases_reports_them_and_exits_1(tmp_path, capsys):
    base = tmp_path / "base"
    assert cli.main(["train", "--preset", "tiny", *DATA, "--epochs", "2", "--workdir", str(base)]) == 0
    w = tmp_path / "study"
    args = [*STUDY, "--baseline", str(base), "--lr", "1e30", "--workdir", str(w)]
    capsys.readouterr()
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    # Phases that don't descend from a diverged one still train: both one-shot targets and round 1.
    assert "oneshot-magnitude-0.50/round-01: diverged at epoch 1" in out
    assert "oneshot-magnitude-0.75/round-01: diverged at epoch 1" in out
    assert "iterative-magnitude-0.75/round-01: diverged at epoch 1" in out
    assert ("[not trained] iterative-magnitude-0.75/round-02: it descends from "
            "iterative-magnitude-0.75/round-01, which diverged") in out
    assert "report: " in out and "Traceback" not in err
    lines = err.strip().splitlines()
    assert sum("diverged at epoch 1 (training loss nan); stopped it there" in line for line in lines) == 3
    assert lines[-1].startswith("jaxprune study: 3 phases diverged") and "1 descending from them" in lines[-1]
    got = rows(w / "results.csv")
    assert [(r["schedule"], r["target"], r["round"], r["diverged"]) for r in got if r["schedule"] != "baseline"] == [
        ("oneshot", "0.5", "1", "1"), ("oneshot", "0.75", "1", "1"), ("iterative", "0.75", "1", "1")]
    assert all(r["train_loss"] == "nan" for r in got if r["diverged"] == "1")
    report = (w / "report" / "report.md").read_text()
    assert "**Diverged:** 3 phases" in report and "iterative magnitude 75% round 1" in report
    # The report alone runs on it too, and a rerun trains nothing and says the same.
    assert cli.main(["report", str(w)]) == 0
    capsys.readouterr()
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert "4 phases (3 finished), 1 of 4 epochs to train" in out
    assert "[not trained] iterative-magnitude-0.75/round-02" in out
    assert rows(w / "results.csv") == got


def test_a_diverged_training_run_stops_in_one_line_unless_told_to_continue(tmp_path, capsys):
    run = ["train", "--preset", "tiny", *DATA, "--epochs", "4", "--lr", "1e30"]
    assert cli.main([*run, "--workdir", str(tmp_path / "stop")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "diverged at epoch 1" in err[0] and err[1].startswith("jaxprune train: ")
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "stop")] == [1]
    assert cli.main([*run, "--workdir", str(tmp_path / "stop")]) == 1  # stays stopped: nothing trained
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "stop")] == [1]
    capsys.readouterr()
    assert cli.main([*run, "--on-divergence", "continue", "--workdir", str(tmp_path / "on")]) == 0
    assert capsys.readouterr().err == ""
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "on")] == [1, 2, 3, 4]
