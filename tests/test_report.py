"""The report: old-layout files, aggregation across seeds and retraining modes, best-val selection,
the equal-compute table, the figures, and damaged files. Fixtures are CSVs with answers worked by hand."""

import csv
import math
from pathlib import Path

import pytest

from jaxprune import cli
from jaxprune.report import report

OLD_FIELDS = ("schedule", "method", "target", "round", "sparsity", "epoch", "test_acc", "train_loss", "train_acc",
              "seconds")  # results.csv before replicates, retraining modes and validation
FIELDS = ("seed", "retrain", "distribution", "schedule", "method", "target", "round", "sparsity", "epoch",
          "test_acc", "val_acc", "train_loss", "train_acc", "seconds")  # before the `diverged` column
PNG = b"\x89PNG\r\n\x1a\n"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results(folder, rows, fields=FIELDS):
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def phase(schedule, target, rnd, sparsity, test, val=None, seed=0, retrain="retrain", method="magnitude",
          distribution="global"):
    """One phase's rows, epochs 1.. (val_acc empty without `val`)."""
    if schedule == "baseline":
        retrain = distribution = method = ""
    return [dict(seed=seed, retrain=retrain, distribution=distribution, schedule=schedule, method=method,
                 target=target, round=rnd, sparsity=sparsity, epoch=e, test_acc=a,
                 val_acc="" if val is None else val[e - 1], train_loss=0.1, train_acc=0.9, seconds=1.0)
            for e, a in enumerate(test, start=1)]


def stats(rows, *keys, measure="max_test"):
    """{key values: (mean, std, n, ci95_low, ci95_high)} of one measure in a table CSV."""
    return {tuple(r[k] for k in keys): (r["mean"], r["std"], r["n"], r["ci95_low"], r["ci95_high"])
            for r in rows if r["measure"] == measure}


def test_report_from_a_small_fixture(tmp_path):
    """Today's expectations, from a file in the layout before replicates (one seed, one mode)."""
    rows = []
    def add(schedule, method, target, rnd, sparsity, accs):
        for e, a in enumerate(accs, start=1):
            rows.append(dict(zip(OLD_FIELDS, (schedule, method, target, rnd, sparsity, e, a, 0.1, 0.9, 1.0))))
    add("baseline", "", 0.0, 0, 0.0, [0.5, 0.9, 0.93])
    add("oneshot", "magnitude", 0.5, 1, 0.5, [0.91, 0.92])
    add("oneshot", "magnitude", 0.9, 1, 0.9, [0.80, 0.85])
    add("iterative", "magnitude", 0.5, 1, 0.3, [0.92, 0.925])
    add("iterative", "magnitude", 0.5, 2, 0.51, [0.93, 0.935])
    add("iterative", "magnitude", 0.9, 1, 0.3, [0.90, 0.91])
    add("iterative", "magnitude", 0.9, 2, 0.51, [0.90, 0.92])
    add("iterative", "magnitude", 0.9, 3, 0.91, [0.89, 0.88])
    write_results(tmp_path, rows, OLD_FIELDS)
    df = report.read_results(tmp_path)
    cost = ["params", "params_nz", "compression", "flops", "flops_nz", "speedup"]
    assert list(df.columns) == ["model", "data", *FIELDS[:3], "structure", *FIELDS[3:8], *cost, *FIELDS[8:],
                                "diverged"] and set(df["seed"]) == {0}
    # Newer columns: pruned phases removed single weights; sizes were not counted then (no Table 12).
    assert set(zip(df["schedule"], df["structure"])) == {("baseline", ""), ("oneshot", "unstructured"),
                                                         ("iterative", "unstructured")}
    assert df[cost].isna().all().all()
    assert df["val_acc"].isna().all() and set(df["model"]) == {"resnet18"} and set(df["data"]) == {""}
    assert (df["diverged"] == 0).all()  # derived from the finite losses: the column is newer than the file
    assert set(zip(df["schedule"], df["retrain"], df["distribution"])) == {
        ("baseline", "", ""), ("oneshot", "retrain", "global"), ("iterative", "retrain", "global")}
    assert cli.main(["report", str(tmp_path)]) == 0
    out = tmp_path / "report"
    assert not (out / "table12_cost.md").exists() and not (out / "buys.png").exists()
    t1 = read_rows(out / "table1_oneshot.csv")
    assert stats(t1, "sparsity (%)", "method") == {("50", "magnitude"): ("92.00", "", "1", "", ""),
                                                   ("90", "magnitude"): ("85.00", "", "1", "", "")}
    # The write-up's look: one column per method, plain percents.
    assert (out / "table1_oneshot.md").read_text().splitlines()[2:] == [
        "| sparsity (%) | magnitude |", "|---|---|", "| 50 | 92.00 |", "| 90 | 85.00 |"]
    t2 = read_rows(out / "table2_iterative_0.50.csv")
    assert [(r["round"], r["global sparsity (%)"], r["mean"]) for r in t2 if r["measure"] == "max_test"] == [
        ("1", "30.00", "92.50"), ("2", "51.00", "93.50")]
    t5 = read_rows(out / "table5_summary.csv")
    assert {k: v[0] for k, v in stats(t5, "target (%)", "schedule").items()} == {
        ("50", "oneshot"): "92.00", ("50", "iterative"): "93.50", ("90", "oneshot"): "85.00", ("90", "iterative"): "89.00"}
    # The chain's round reaching a target passes it (51%, 91%): the rows say so, as Table 4 and the figure do.
    assert (out / "table5_summary.md").read_text().splitlines()[2:] == [
        "| target (%) | magnitude one-shot | magnitude iterative |", "|---|---|---|",
        "| 50 (iterative: 51.00) | 92.00 | 93.50 |", "| 90 (iterative: 91.00) | 85.00 | 89.00 |"]
    assert {(r["target (%)"], r["schedule"]): r["reached (%)"] for r in t5} == {
        ("50", "oneshot"): "50.00", ("50", "iterative"): "51.00", ("90", "oneshot"): "90.00", ("90", "iterative"): "91.00"}
    assert stats(t5, "target (%)", "schedule", measure="last_test")[("90", "iterative")][0] == "88.00"
    assert (out / "table6_retrain.md").read_text().splitlines()[2] == (
        "| retrain | measure | one-shot 50% | one-shot 90% | iterative 50% (reached 51.00%) | iterative 90% (reached 91.00%) |")
    # A chain of its own to 50%: no note in the title (see the shared chain's test).
    assert (out / "table2_iterative_0.50.md").read_text().splitlines()[0] == (
        "**Table 2: iterative pruning to 50% sparsity, max test accuracy per round (%)**")
    for name in ("figure1_baseline.png", "figure2_oneshot.png", "figure3_iterative_0.50.png", "figure4_iterative_0.90.png", "summary.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "Table 5" in text and "1 seed (0)" in text and "no validation split" in text and "±" not in text


def test_report_without_results_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_report_into_a_place_it_cannot_write_is_a_one_line_error(tmp_path, capsys):
    write_results(tmp_path, [dict(zip(OLD_FIELDS, ("baseline", "", 0.0, 0, 0.0, 1, 0.5, 0.1, 0.9, 1.0)))],
                  OLD_FIELDS)
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", Path("/proc/jaxprune-report")):
        assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"cannot write the report into {out}" in err[0], err
    assert (tmp_path / "afile").read_text() == ""


def aggregation_rows():
    """3 seeds, retraining modes `retrain` (all seeds) and `lr-rewind` (seeds 0-1 at 50%, seed 0 at 90%)."""
    rows = []
    for seed, (base, r50, r90, chain) in enumerate([
        (0.93, [0.90, 0.89], [0.80], [0.93, 0.92]),
        (0.94, [0.92, 0.91], [0.82], [0.94, 0.93]),
        (0.95, [0.94, 0.93], [0.84], [0.95, 0.94]),
    ]):
        rows += phase("baseline", 0.0, 0, 0.0, [0.5, base], seed=seed)
        rows += phase("oneshot", 0.5, 1, 0.5, r50, seed=seed)
        rows += phase("oneshot", 0.9, 1, 0.9, r90, seed=seed)
        rows += phase("iterative", 0.5, 1, 0.3, [chain[0]], seed=seed)
        rows += phase("iterative", 0.5, 2, 0.5, [chain[1]], seed=seed)
    rows += phase("oneshot", 0.5, 1, 0.5, [0.91, 0.90], seed=0, retrain="lr-rewind")
    rows += phase("oneshot", 0.5, 1, 0.5, [0.93, 0.92], seed=1, retrain="lr-rewind")
    rows += phase("oneshot", 0.9, 1, 0.9, [0.85], seed=0, retrain="lr-rewind")
    return rows


def test_mean_std_and_t_interval_across_seeds_and_modes(tmp_path):
    write_results(tmp_path, aggregation_rows())
    out = report.write_report(tmp_path).parent
    t1 = read_rows(out / "table1_oneshot.csv")
    # max 90, 92, 94: mean 92, std 2, 92 ± t(0.975, 2)·2/√3 = 92 ± 4.3027·1.1547 = [87.03, 96.97].
    # max 91, 93: std √2 = 1.41, 92 ± t(0.975, 1)·√2/√2 = 92 ± 12.7062. One seed: no std, no interval.
    assert stats(t1, "sparsity (%)", "retrain") == {
        ("50", "retrain"): ("92.00", "2.00", "3", "87.03", "96.97"),
        ("50", "lr-rewind"): ("92.00", "1.41", "2", "79.29", "104.71"),
        ("90", "retrain"): ("82.00", "2.00", "3", "77.03", "86.97"),
        ("90", "lr-rewind"): ("85.00", "", "1", "", ""),
    }
    # last epoch 89, 91, 93 and 90, 92.
    assert stats(t1, "sparsity (%)", "retrain", measure="last_test")[("50", "retrain")] == (
        "91.00", "2.00", "3", "86.03", "95.97")
    assert stats(t1, "sparsity (%)", "retrain", measure="last_test")[("50", "lr-rewind")][:3] == ("91.00", "1.41", "2")
    assert not stats(t1, "sparsity (%)", "retrain", measure="best_val_test")  # no validation split
    assert (out / "table1_oneshot.md").read_text().splitlines()[2:] == [
        "| sparsity (%) | magnitude, retrain | magnitude, lr-rewind |", "|---|---|---|",
        "| 50 | 92.00 ± 2.00 (n=3) | 92.00 ± 1.41 (n=2) |",
        "| 90 | 82.00 ± 2.00 (n=3) | 85.00 (n=1) |",
    ]
    # Renda's layout: rows mode × figure, columns schedule × sparsity; the chain's round 2 is 92, 93, 94.
    assert (out / "table6_retrain.md").read_text().splitlines()[2:] == [
        "| retrain | measure | one-shot 50% | one-shot 90% | iterative 50% |", "|---|---|---|---|---|",
        "| retrain | max test | 92.00 ± 2.00 (n=3) | 82.00 ± 2.00 (n=3) | 93.00 ± 1.00 (n=3) |",
        "| retrain | test at last epoch | 91.00 ± 2.00 (n=3) | 82.00 ± 2.00 (n=3) | 93.00 ± 1.00 (n=3) |",
        "| lr-rewind | max test | 92.00 ± 1.41 (n=2) | 85.00 (n=1) |  |",
        "| lr-rewind | test at last epoch | 91.00 ± 1.41 (n=2) | 85.00 (n=1) |  |",
    ]
    t2 = read_rows(out / "table2_iterative_0.50.csv")
    assert stats(t2, "round", "global sparsity (%)", "retrain") == {
        ("1", "30.00", "retrain"): ("94.00", "1.00", "3", "91.52", "96.48"),  # 94 ± 4.3027/√3
        ("2", "50.00", "retrain"): ("93.00", "1.00", "3", "90.52", "95.48"),
    }
    text = (out / "report.md").read_text()
    assert "3 seeds (0, 1, 2); retraining: retrain, lr-rewind" in text
    assert "Baseline: max test accuracy 94.00 ± 1.00% (n=3) over 2 epochs." in text


def test_t_interval_matches_scipy():
    """The hand-written constants above are scipy's t quantiles."""
    from scipy.stats import t
    assert t.ppf(0.975, 2) == pytest.approx(4.3027, abs=1e-4) and t.ppf(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert 92 - 4.3027 * 2 / math.sqrt(3) == pytest.approx(87.03, abs=0.005)


def test_best_val_picks_the_first_epoch_of_the_best_validation_accuracy(tmp_path):
    rows = phase("baseline", 0.0, 0, 0.0, [0.5, 0.93], val=[0.4, 0.9])
    # val ties at epochs 2 and 3: epoch 2's test accuracy (85) counts, not the max (90) or the last (88).
    rows += phase("oneshot", 0.5, 1, 0.5, [0.80, 0.85, 0.83, 0.90, 0.88], val=[0.70, 0.75, 0.75, 0.72, 0.74])
    rows += phase("oneshot", 0.9, 1, 0.9, [0.70, 0.72, 0.75], val=[0.60, 0.66, 0.65])
    write_results(tmp_path, rows)
    phases = report.phase_stats(report.read_results(tmp_path)).set_index("target")
    assert phases["best_val_epoch"].tolist() == [2, 2, 2]
    assert phases["best_val_test"].tolist() == [0.93, 0.85, 0.72]
    assert phases["max_test"].tolist() == [0.93, 0.90, 0.75] and phases["last_test"].tolist() == [0.93, 0.88, 0.75]
    out = report.write_report(tmp_path).parent
    assert (out / "table1_oneshot.md").read_text().splitlines()[2:] == [
        "| sparsity (%) | magnitude | magnitude (best val) |", "|---|---|---|",
        "| 50 | 90.00 | 85.00 |", "| 90 | 75.00 | 72.00 |"]
    assert stats(read_rows(out / "table1_oneshot.csv"), "sparsity (%)", measure="best_val_test") == {
        ("50",): ("85.00", "", "1", "", ""), ("90",): ("72.00", "", "1", "", "")}
    assert "not available" not in (out / "report.md").read_text()


def test_equal_compute_counts_the_epochs_of_the_chain_so_far(tmp_path):
    rows = phase("baseline", 0.0, 0, 0.0, [0.9] * 5)
    rows += phase("oneshot", 0.9, 1, 0.9, [0.80, 0.81, 0.82, 0.83])
    rows += phase("iterative", 0.9, 1, 0.5, [0.90, 0.91])
    rows += phase("iterative", 0.9, 2, 0.75, [0.89, 0.90, 0.88])
    rows += phase("iterative", 0.9, 3, 0.9, [0.86, 0.87])
    write_results(tmp_path, rows)
    out = report.write_report(tmp_path).parent
    t7 = read_rows(out / "table7_equal_compute.csv")
    assert [(r["schedule"], r["round"], r["sparsity (%)"], r["epochs"], r["mean"]) for r in t7
            if r["measure"] == "max_test"] == [
        ("oneshot", "1", "90.00", "4", "83.00"),
        ("iterative", "1", "50.00", "2", "91.00"),
        ("iterative", "2", "75.00", "5", "90.00"),
        ("iterative", "3", "90.00", "7", "87.00"),
    ]
    md = (out / "table7_equal_compute.md").read_text().splitlines()[2:]
    assert md[0] == "| epochs after baseline | schedule | target (%) | round | sparsity (%) | magnitude |"
    assert [line.split(" | ")[0] for line in md[2:]] == ["| 2", "| 4", "| 5", "| 7"]


def test_a_shared_chain_serves_the_smaller_targets(tmp_path):
    rows = phase("baseline", 0.0, 0, 0.0, [0.93])
    rows += phase("oneshot", 0.5, 1, 0.5, [0.92]) + phase("oneshot", 0.9, 1, 0.9, [0.85])
    for rnd, (sp, acc) in enumerate([(0.3, 0.93), (0.51, 0.94), (0.7, 0.92), (0.91, 0.90)], start=1):
        rows += phase("iterative", 0.9, rnd, sp, [acc])
    write_results(tmp_path, rows)
    out = report.write_report(tmp_path).parent
    t2 = read_rows(out / "table2_iterative_0.50.csv")
    assert [(r["round"], r["mean"]) for r in t2 if r["measure"] == "max_test"] == [("1", "93.00"), ("2", "94.00")]
    assert (out / "table5_summary.md").read_text().splitlines()[4:] == [
        "| 50 (iterative: 51.00) | 92.00 | 94.00 |", "| 90 (iterative: 91.00) | 85.00 | 90.00 |"]
    # The 50% table is the first rounds of the one chain to 90%, and says so.
    assert (out / "table2_iterative_0.50.md").read_text().splitlines()[0] == (
        "**Table 2: iterative pruning to 50% sparsity (the first rounds of the shared chain to 90%), "
        "max test accuracy per round (%)**")


def test_every_figure_is_a_png(tmp_path):
    rows = aggregation_rows()
    rows += phase("oneshot", 0.5, 1, 0.5, [0.88, 0.89], method="random", distribution="erk")
    rows += phase("iterative", 0.5, 1, 0.3, [0.90], method="random", distribution="erk", retrain="lr-rewind")
    gradual = phase("gradual", 0.5, 1, 0.0, [0.85, 0.87, 0.86])
    for row, sparsity in zip(gradual, (0.2, 0.4, 0.5)):  # a gradual phase's sparsity changes per epoch
        row["sparsity"] = sparsity
    write_results(tmp_path, rows + gradual)
    out = report.write_report(tmp_path).parent
    names = ["figure1_baseline.png", "figure2_oneshot.png", "figure3_iterative_0.50.png", "summary.png",
             "equal_compute.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG, name
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    text = (out / "report.md").read_text()
    assert all(f"]({name})" in text for name in names)
    # Methods, modes and distributions all differ here, so each column names all three.
    assert "| magnitude, retrain, global | magnitude, lr-rewind, global | random, retrain, erk |" in (
        out / "table1_oneshot.md").read_text()
    # The gradual phase counts at its final sparsity, with its own column.
    t5 = stats(read_rows(out / "table5_summary.csv"), "target (%)", "schedule", "retrain")
    assert t5[("50", "gradual", "retrain")] == ("87.00", "", "1", "", "")
    t7 = read_rows(out / "table7_equal_compute.csv")
    assert [(r["sparsity (%)"], r["epochs"]) for r in t7 if r["schedule"] == "gradual"] == [("50.00", "3")] * 2


def test_a_torn_row_without_phases_to_rebuild_from_is_a_one_line_error(tmp_path, capsys):
    write_results(tmp_path, aggregation_rows())
    whole = (tmp_path / "results.csv").read_bytes()
    (tmp_path / "results.csv").write_bytes(whole[:-20])  # the last row cut mid-append
    with pytest.raises(report.ReportError, match="is damaged .*lists no phases to rebuild it from"):
        report.read_results(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.csv is damaged (row" in err[0] and "lists no phases" in err[0]
    assert not (tmp_path / "report").exists()


def test_a_torn_row_is_rebuilt_from_the_phases_logs(tmp_path, monkeypatch, capsys):
    """The rebuild path types the study's rows, old layout or new, like a file (the study is stubbed)."""
    from jaxprune.study import driver as study
    old = [dict(zip(OLD_FIELDS, ("baseline", "", 0.0, 0, 0.0, e, a, 0.1, 0.9, 1.0))) for e, a in ((1, 0.5), (2, 0.9))]
    written = []
    monkeypatch.setattr(study, "recorded_phases", lambda workdir: ["baseline"])
    monkeypatch.setattr(study, "result_rows", lambda workdir, phases: old)
    monkeypatch.setattr(study, "rebuild_results", lambda workdir, phases: written.append(workdir))
    monkeypatch.setattr(study, "RESULT_FIELDS", OLD_FIELDS)
    write_results(tmp_path, phase("baseline", 0.0, 0, 0.0, [0.5, 0.9]))
    (tmp_path / "results.csv").write_bytes((tmp_path / "results.csv").read_bytes()[:-12])
    df = report.read_results(tmp_path)
    assert written == [tmp_path] and "is damaged (row 3 is incomplete); rebuilt it" in capsys.readouterr().err
    assert df["test_acc"].tolist() == [0.5, 0.9] and df["seed"].tolist() == [0, 0] and df["retrain"].tolist() == ["", ""]


def _nan_loss(rows, epoch):
    for r in rows:
        if r["epoch"] == epoch:
            r["train_loss"] = "nan"
    return rows


def test_a_study_with_nothing_to_compare_writes_what_it_has(tmp_path):
    # The baseline diverged at epoch 2, so no pruned phase was trained: the paired, N:M and
    # mask sections have no rows to read. (Before, the report died with KeyError 'distribution'.)
    write_results(tmp_path, _nan_loss(phase("baseline", 0.0, 0, 0.0, [0.1, 0.1]), 2))
    assert cli.main(["report", str(tmp_path)]) == 0
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    assert "**Diverged:** 1 phase" in md and "baseline, epoch 2" in md
    assert md.count("**Not compared:** no pruned phase has a result") == 1
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".md")) == ["report.md"]
    assert (out / "figure1_baseline.png").read_bytes().startswith(PNG)


def test_arms_missing_and_one_seed_are_said_in_one_line(tmp_path):
    # One-shot reached 50% and 75%; the iterative chain's second round was not trained (it
    # descends from a diverged phase, or the study was stopped), so it has 50% only. Table 8
    # compares what it can (n=1: no interval), and names what it cannot.
    rows = [*phase("baseline", 0.0, 0, 0.0, [0.5, 0.9]),
            *phase("oneshot", 0.5, 1, 0.5, [0.91]), *phase("oneshot", 0.75, 1, 0.75, [0.88]),
            *phase("iterative", 0.75, 1, 0.5, [0.92])]
    write_results(tmp_path, rows)
    assert cli.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    lines = [l for l in md.splitlines() if l.startswith("**Not compared:**")]
    assert lines == ["**Not compared:** iterative − one-shot at 75% (magnitude, retrain, global): no iterative result."]
    paired = read_rows(tmp_path / "report" / "table8_paired.csv")
    assert [(r["label"], r["n"], r["mean"], r["ci95_low"]) for r in paired] == [
        ("iterative − one-shot at 50%", "1", "1.0000", "")]
    assert "With one seed there is no interval" in md


@pytest.mark.parametrize("drop", ["seed", "schedule", "method", "retrain", "distribution", "target", "max_test",
                                  "sparsity", "round", "phase_target"])
def test_each_explaining_section_without_a_column_it_reads_is_left_out(tmp_path, drop):
    from jaxprune.report import masks as report_masks, comparisons as report_paired

    rows = [*phase("baseline", 0.0, 0, 0.0, [0.9]), *phase("oneshot", 0.5, 1, 0.5, [0.91]),
            *phase("oneshot", 0.5, 1, 0.5, [0.89], distribution="2:4"), *phase("iterative", 0.5, 1, 0.5, [0.92])]
    write_results(tmp_path, rows)
    final = report.final_results(report.phase_stats(report.read_results(tmp_path)), phase_target=True)
    assert len(final) == 3
    final = final.drop(columns=drop)
    compared = report_paired.comparisons(final)
    assert compared.empty == (drop in report_paired.PAIRED_COLUMNS)
    assert isinstance(report_paired.not_compared(final), list)
    report_paired.paired_section(compared, tmp_path, 8)
    assert (report_paired.pattern_section(final, compared, tmp_path, 9) == "") == (drop in report_paired.PATTERN_COLUMNS)
    texts, figs = report_masks.mask_sections(tmp_path, final, tmp_path, (10, 11))
    assert figs == []  # no masks on disk here, whichever column is there
