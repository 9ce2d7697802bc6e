"""Studies are forever: a study directory made by an earlier release resumes and grows."""

import csv
import shutil
from pathlib import Path

from jaxprune import cli, rundir

FIXTURES = Path(__file__).parent / "fixtures"
ARGS = ["study", "--preset", "smoke", "--width", "2", "--data", "synthetic:128,32", "--batch-size", "32",
        "--methods", "magnitude", "--baseline-epochs", "1", "--no-progress"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
    assert [{k: v for k, v in r.items() if k != "diverged"} for r in new_rows] == old_rows
    assert [r["diverged"] for r in new_rows] == ["0"] * 3  # the column the old layout lacked, filled in
    assert "data_fingerprint" not in rundir.read_record(w / "baseline")  # finished: not opened, not changed

    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--workdir", str(w)]) == 0  # grows: only new phases train
    out = capsys.readouterr().out
    assert "(2 finished)" in out and "baseline:" not in out and "oneshot-magnitude-0.50" not in out
    assert "oneshot-magnitude-0.75/round-01" in out
    assert {p: rundir.read_metrics(w / p) for p in old_metrics} == old_metrics
    assert rundir.read_record(w / "oneshot-magnitude-0.75" / "round-01")["data_fingerprint"].startswith("128+32 ")
    assert (w / "report" / "report.md").is_file()
