"""Paired differences across seeds: the interval scipy's paired t-test gives, the verdict line,
and the seeds a gap needs at 80% power."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxprune.report import paired

ONESHOT = [92.10, 91.85, 92.40, 92.05]  # a fixed table: max test accuracy (%) per seed
ITERATIVE = [92.60, 92.15, 92.70, 92.55]


def test_the_interval_is_scipys_paired_t_interval():
    d = paired.difference(ONESHOT, ITERATIVE)
    ci = stats.ttest_rel(ITERATIVE, ONESHOT).confidence_interval(0.95)
    assert d.n == 4 and d.mean == pytest.approx(np.mean(np.subtract(ITERATIVE, ONESHOT)), abs=1e-12)
    assert (d.low, d.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert d.sd == pytest.approx(np.std(np.subtract(ITERATIVE, ONESHOT), ddof=1), abs=1e-12)
    assert d.excludes_zero
    assert d.verdict("iterative − one-shot at 90%") == "iterative − one-shot at 90%: +0.40 pp [0.22, 0.58], n=4"  # t(3) = 3.182, sd 0.115


def test_one_seed_has_no_interval_and_identical_arms_a_point():
    one = paired.difference([92.0], [92.5])
    assert one.n == 1 and math.isnan(one.low) and one.verdict("x") == "x: +0.50 pp, n=1" and not one.excludes_zero
    same = paired.difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert (same.mean, same.low, same.high, same.sd) == (0.5, 0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired.difference([1.0, 2.0], [1.0])


def test_power_and_the_seeds_a_gap_needs():
    # Power grows with n, and matches a direct noncentral-t computation.
    assert paired.power(3, 0.2, 0.4) < paired.power(5, 0.2, 0.4) < paired.power(8, 0.2, 0.4)
    n, sd, gap = 5, 0.2, 0.3
    crit = stats.t.ppf(0.975, n - 1)
    nc = gap / (sd / math.sqrt(n))
    assert paired.power(n, sd, gap) == pytest.approx(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))
    needed = paired.seeds_needed(0.2, 0.2)
    assert paired.power(needed, 0.2, 0.2) >= 0.8 > paired.power(needed - 1, 0.2, 0.2)
    assert needed == 10  # a gap the size of the noise: ten paired seeds
    assert paired.seeds_needed(0.2, -0.2) == needed  # the sign does not matter
    assert paired.seeds_needed(0.0, 0.2) is None and paired.seeds_needed(0.2, 0.0) is None
    assert paired.seeds_needed(1.0, 1e-4, most=1000) is None


def _final(rows):
    """A report.final_results-shaped frame: (seed, schedule, method, distribution, target, max_test %)."""
    import pandas as pd

    return pd.DataFrame([
        {"seed": s, "retrain": "retrain", "distribution": d, "schedule": sch, "method": m, "target": t,
         "round": 1, "sparsity": t, "max_test": acc / 100}
        for s, sch, m, d, t, acc in rows
    ])


def test_the_reports_comparisons_pair_arms_seed_by_seed():
    from jaxprune.report import comparisons as report_paired

    rows = [(s, "oneshot", "magnitude", "global", 0.9, a) for s, a in enumerate(ONESHOT)]
    rows += [(s, "iterative", "magnitude", "global", 0.9, a) for s, a in enumerate(ITERATIVE)]
    rows += [(s, "oneshot", "magnitude", "global", 0.5, 93.0 + s) for s in range(3)]
    rows += [(s, "oneshot", "magnitude", "2:4", 0.5, 92.5 + s + 0.1 * s * s) for s in range(3)]
    rows += [(3, "oneshot", "magnitude", "2:4", 0.5, 50.0)]  # no unstructured twin for seed 3: not paired
    c = report_paired.comparisons(_final(rows)).set_index("label")
    it = c.loc["iterative − one-shot at 90%"]
    ci = stats.ttest_rel(ITERATIVE, ONESHOT).confidence_interval(0.95)
    assert it["n"] == 4 and (it["ci95_low"], it["ci95_high"]) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))
    assert it["verdict"] == "iterative − one-shot at 90%: +0.40 pp [0.22, 0.58], n=4"
    assert it["seeds_for_0.2pp"] == paired.seeds_needed(it["sd"], 0.2)
    nm = c.loc["2:4 − unstructured at 50%"]
    diffs = [-0.5, -0.4, -0.1]  # 92.5 + s + 0.1 s^2 - (93 + s)
    assert nm["n"] == 3 and nm["mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
    ci = stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
    assert (nm["ci95_low"], nm["ci95_high"]) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))
    assert len(c) == 2  # nothing else has both arms


def test_the_paired_and_pattern_tables_are_written(tmp_path):
    from jaxprune.report import comparisons as report_paired

    rows = [(s, "oneshot", m, d, 0.5, 90.0 + s + (d == "2:4") * 0.5 * s) for s in range(3)
            for m in ("magnitude", "random") for d in ("global", "2:4")]
    final = _final(rows)
    compared = report_paired.comparisons(final)
    text = report_paired.paired_section(compared, tmp_path, 8)
    assert "- 2:4 − unstructured at 50% (magnitude): +0.50 pp [-0.74, 1.74], n=3" in text, text
    assert "| 2:4 − unstructured at 50% (random) | 0.50 |" in text  # sd of (0, 0.5, 1)
    table = report_paired.pattern_section(final, compared, tmp_path, 9)
    assert "| magnitude | unstructured (global) | 50 | 50.00 | 91.00 ± 1.00 (n=3) |" in table, table
    assert "| magnitude | 2:4 | 50 | 50.00 | 91.50 ± 1.50 (n=3) |" in table, table
    assert (tmp_path / "table8_paired.csv").is_file() and (tmp_path / "table9_pattern.csv").is_file()
    plain = final[final["distribution"] == "global"]
    assert report_paired.pattern_section(plain, report_paired.comparisons(plain), tmp_path, 9) == ""
