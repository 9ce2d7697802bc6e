"""Paired comparisons across seeds: two arms trained from the same baseline per seed (same
initialisation and data order), compared seed by seed.

Seed-to-seed noise on CIFAR ResNets is about 0.2 percentage points, the size of the
write-up's whole one-shot/iterative gap at 50%; differences taken within a seed cancel
the noise the arms share, so they resolve such gaps with far fewer seeds than
comparing the arms' means would. scipy does the arithmetic.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``b - a`` over paired samples: mean, its confidence interval, the spread, and n.

    Units are those of the inputs (the report passes percentage points)."""

    mean: float
    low: float  # nan when n < 2
    high: float
    sd: float  # sample standard deviation of the differences (ddof 1); nan when n < 2
    n: int
    confidence: float = 0.95

    def verdict(self, label: str, unit: str = "pp") -> str:
        """'iterative − one-shot at 90%: +0.41 pp [0.12, 0.70], n=3' (no interval for n = 1)."""
        interval = f" [{self.low:.2f}, {self.high:.2f}]" if self.n > 1 else ""
        return f"{label}: {self.mean:+.2f} {unit}{interval}, n={self.n}"

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0."""
        return self.n > 1 and (self.low > 0 or self.high < 0)


def difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """The paired difference ``b - a`` with a Student-t interval, as ``scipy.stats.ttest_rel(b, a)``
    gives it. `a` and `b` are equal-length sequences, pair i being seed i in both arms."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired samples need equal, non-empty 1-d shapes, got {a.shape} and {b.shape}")
    d = b - a
    n = d.size
    if n < 2:
        return PairedDifference(float(d[0]), math.nan, math.nan, math.nan, 1, confidence)
    sd = float(d.std(ddof=1))
    low, high = stats.t.interval(confidence, n - 1, loc=d.mean(), scale=sd / math.sqrt(n)) if sd > 0 else (d.mean(),) * 2
    return PairedDifference(float(d.mean()), float(low), float(high), sd, n, confidence)


def power(n: int, sd: float, gap: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with `n` pairs to detect a true mean difference
    `gap` when the differences have standard deviation `sd` (noncentral t)."""
    if n < 2 or sd <= 0:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = gap / (sd / math.sqrt(n))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(sd: float, gap: float, target: float = 0.8, alpha: float = 0.05, most: int = 10_000) -> int | None:
    """The fewest seeds (pairs) whose paired t-test reaches `target` power for `gap`, or None
    when `sd` is unknown or more than `most` would be needed."""
    if not sd > 0 or gap == 0 or not math.isfinite(sd):
        return None
    ok = lambda n: power(n, sd, abs(gap), alpha) >= target  # noqa: E731 - power grows with n
    if ok(2):
        return 2
    hi = 4
    while not ok(hi):
        if hi > most:
            return None
        hi *= 2
    lo = hi // 2  # not enough; hi is
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi if hi <= most else None
