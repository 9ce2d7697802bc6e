"""Paired differences across seeds: the interval scipy's paired t-test gives, the verdict line,
and the seeds a gap needs at 80% power."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxprune import paired

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
