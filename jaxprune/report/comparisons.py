"""The report's paired comparisons: arms of one seed share its baseline (its initialisation and
data order), so their difference is taken seed by seed (`jaxprune.paired`).

Four kinds, wherever the study has both arms:

- iterative − one-shot at each target (per method, retraining mode and distribution);
- an N:M pattern − unstructured one-shot pruning at the pattern's target (--pattern);
- each retraining mode − retrain (per method, distribution, schedule and target);
- channel − unstructured pruning (--structure channel unstructured), at the same target (equal
  parameters, as closely as whole channels allow) and at equal multiply-adds (the unstructured
  arm's accuracy interpolated in log speedup to the channel result's).

Each gives the mean paired difference of max test accuracy in percentage points with its 95%
t-interval (scipy), the verdict line, and how many seeds a paired t-test would need for 80%
power against gaps of 0.2 pp (seed-to-seed noise on CIFAR ResNets, Renda et al.) and 0.5 pp,
from the comparison's own observed standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jaxprune.report import paired
from jaxprune.study.modes import is_pattern as _is_pattern
from jaxprune.report.results import SCHEDULE_NAMES

GAPS = (0.2, 0.5)  # percentage points
# The columns of report.final_results each section reads: without one, the section is not made.
PAIRED_COLUMNS = ("seed", "schedule", "method", "retrain", "distribution", "target", "max_test")
PATTERN_COLUMNS = (*PAIRED_COLUMNS, "sparsity")
ARMS = ("oneshot", "iterative")  # the schedules compared seed by seed


def _name(schedule) -> str:
    return SCHEDULE_NAMES.get(str(schedule), str(schedule))


def _patterned(frame: pd.DataFrame) -> pd.Series:
    """Which rows hold an N:M pattern's result (bool even for no rows: an empty object
    Series would select columns, not rows)."""
    return frame["distribution"].astype(str).map(_is_pattern).astype(bool)


def _acc(frame: pd.DataFrame) -> pd.Series:
    """Max test accuracy in percent, by seed."""
    return (100 * frame.set_index("seed")["max_test"]).groupby(level=0).first()


def comparisons(final: pd.DataFrame) -> pd.DataFrame:
    """One row per paired comparison of `final` (report.final_results): ``kind``, ``label``, ``target``,
    ``n`` (seeds with both arms), ``mean``, ``ci95_low``, ``ci95_high``, ``sd`` (pp), ``verdict``, and
    ``seeds_for_<gap>pp`` (None where the sd is unknown). No rows when nothing can be compared."""
    cols = ["kind", "label", "target", "n", "mean", "ci95_low", "ci95_high", "sd", "verdict",
            *(f"seeds_for_{g:g}pp" for g in GAPS)]
    if set(PAIRED_COLUMNS) - set(final.columns):
        return pd.DataFrame(columns=cols)
    f = final[final["schedule"] != "baseline"].copy()
    for c in ("method", "retrain", "distribution", "schedule"):
        f[c] = f[c].astype(str)
    # Only what varies names a comparison; a --pattern arm is not another distribution of the study's.
    plain = f[~_patterned(f)]
    several = {c: (plain if c == "distribution" else f)[c].nunique() > 1 for c in ("method", "retrain", "distribution")}
    rows = []

    def add(kind: str, text: str, target: float, a: pd.DataFrame, b: pd.DataFrame, keys: dict) -> None:
        sa, sb = _acc(a), _acc(b)
        seeds = sa.index.intersection(sb.index)
        if not len(seeds):
            return
        d = paired.difference(sa[seeds].to_numpy(), sb[seeds].to_numpy())
        shown = [str(v) for k, v in keys.items() if several.get(k)]
        label = f"{text} at {100 * target:g}%" + (f" ({', '.join(shown)})" if shown else "")
        rows.append({
            "kind": kind, "label": label, "target": target, "n": d.n, "mean": d.mean, "ci95_low": d.low,
            "ci95_high": d.high, "sd": d.sd, "verdict": d.verdict(label),
            **{f"seeds_for_{g:g}pp": paired.seeds_needed(d.sd, g) for g in GAPS},
        })

    for (method, retrain, dist, target), g in f.groupby(["method", "retrain", "distribution", "target"], sort=True):
        one, it = g[g["schedule"] == "oneshot"], g[g["schedule"] == "iterative"]
        if len(one) and len(it):
            add("schedule", "iterative − one-shot", target, one, it,
                {"method": method, "retrain": retrain, "distribution": dist})
    patterns = f[_patterned(f)]
    for (method, retrain, pattern, target), g in patterns.groupby(["method", "retrain", "distribution", "target"], sort=True):
        plain = f[(f["method"] == method) & (f["retrain"] == retrain) & (f["schedule"] == "oneshot")
                  & (f["target"] == target) & ~_patterned(f)]
        for dist, u in plain.groupby("distribution", sort=True):
            add("pattern", f"{pattern} − {dist if dist != 'global' else 'unstructured'}", target, u, g,
                {"method": method, "retrain": retrain})
    _structure_pairs(f, add)
    for (method, dist, schedule, target), g in f.groupby(["method", "distribution", "schedule", "target"], sort=True):
        base = g[g["retrain"] == "retrain"]
        for mode, other in g[g["retrain"] != "retrain"].groupby("retrain", sort=False):
            if len(base):
                add("retraining", f"{mode} − retrain, {_name(schedule)}", target, base, other,
                    {"method": method, "distribution": dist})
    return pd.DataFrame(rows, columns=cols)


def _at_equal_macs(unstructured: pd.DataFrame, channel: pd.DataFrame) -> pd.DataFrame:
    """Per seed of `channel`, the unstructured arm's max test accuracy at the channel result's
    theoretical speedup, interpolated linearly in log speedup between that seed's unstructured
    results (none outside their range: no extrapolation), as a frame like `channel`."""
    rows = []
    for r in channel.itertuples():
        u = unstructured[unstructured["seed"] == r.seed].dropna(subset=["speedup"]).sort_values("speedup")
        x = np.log(u["speedup"].to_numpy(float))
        if len(u) < 2 or not np.isfinite(r.speedup) or not x[0] <= np.log(r.speedup) <= x[-1]:
            continue
        rows.append({"seed": r.seed, "max_test": float(np.interp(np.log(r.speedup), x, u["max_test"].to_numpy(float)))})
    return pd.DataFrame(rows, columns=["seed", "max_test"])


def _structure_pairs(f: pd.DataFrame, add) -> None:
    """--structure channel against unstructured pruning, paired by seed: at the same target (equal
    parameters, as closely as whole channels allow) and at equal multiply-adds (the unstructured
    arm interpolated to the channel result's speedup)."""
    channel = f[f["distribution"] == "channel"]
    unstructured = f[(f["distribution"] != "channel") & ~_patterned(f)]
    for (method, retrain, schedule, target), g in channel.groupby(["method", "retrain", "schedule", "target"], sort=True):
        same = unstructured[(unstructured["method"] == method) & (unstructured["retrain"] == retrain)
                            & (unstructured["schedule"] == schedule)]
        for dist, u in same.groupby("distribution", sort=True):
            name = "unstructured" if dist == "global" else dist
            keys = {"method": method, "retrain": retrain}
            add("structure", f"channel − {name}, {_name(schedule)}", target, u[u["target"] == target], g, keys)
            if "speedup" in f.columns:
                add("structure", f"channel − {name} at equal MACs, {_name(schedule)}", target,
                    _at_equal_macs(u, g), g, keys)


def not_compared(final: pd.DataFrame) -> list[str]:
    """The iterative − one-shot comparisons the study plans but cannot make: a target where one
    schedule has a result and the other, which the study runs, has none (it diverged, descends
    from a phase that did, or has not reached the target yet)."""
    if set(PAIRED_COLUMNS) - set(final.columns):
        return []
    f = final[final["schedule"].astype(str).isin(ARMS)].astype({"schedule": str})
    if f["schedule"].nunique() < 2:
        return []
    out = []
    for (method, retrain, dist, target), g in f.groupby(["method", "retrain", "distribution", "target"],
                                                        sort=True, observed=True):
        for arm in sorted(set(ARMS) - set(g["schedule"])):
            out.append(f"iterative − one-shot at {100 * target:g}% ({method}, {retrain}, {dist}): no {_name(arm)} result")
    return out


def _seeds(x) -> str:
    return "" if x is None or pd.isna(x) else f"{int(x)}"


def paired_section(c: pd.DataFrame, outdir: Path, number: int) -> str:
    """Writes `comparisons`' table `c` as table<number>_paired.csv and .md; returns the markdown
    ("" without a comparison)."""
    if c.empty:
        return ""
    c.drop(columns="verdict").to_csv(outdir / f"table{number}_paired.csv", index=False, float_format="%.4f")
    gaps = " and ".join(f"{g:g} pp" for g in GAPS)
    lines = [f"**Table {number}: paired differences of max test accuracy (percentage points), seed by seed**", "",
             "Each seed's arms share its baseline, so the difference is taken within each seed: mean "
             "[95% t-interval], n seeds.", ""]
    lines += [f"- {v}" for v in c["verdict"]]
    known = c[c["n"] > 1]
    if len(known):
        lines += ["", f"Seeds a paired t-test needs to detect a gap of {gaps} at 80% power (two-sided, "
                  "α = 0.05), from each comparison's observed standard deviation of the differences:", "",
                  "| comparison | sd (pp) | " + " | ".join(f"seeds for {g:g} pp" for g in GAPS) + " |",
                  "|---|---|" + "---|" * len(GAPS)]
        lines += [f"| {r['label']} | {r['sd']:.2f} | " + " | ".join(_seeds(r[f'seeds_for_{g:g}pp']) or "more than 10,000"
                                                              for g in GAPS) + " |"
                  for _, r in known.iterrows()]
    else:
        lines += ["", "With one seed there is no interval and no power estimate: add seeds with --seeds."]
    text = "\n".join(lines) + "\n"
    (outdir / f"table{number}_paired.md").write_text(text)
    return text


def pattern_section(final: pd.DataFrame, compared: pd.DataFrame, outdir: Path, number: int) -> str:
    """Table <number>: each N:M pattern against unstructured one-shot pruning at its target, with the
    sparsity each reached (kernels that cannot hold the pattern stay dense), and `compared`'s (the
    `comparisons` of `final`) verdicts on them. "" without a pattern."""
    if set(PATTERN_COLUMNS) - set(final.columns):
        return ""
    f = final[final["schedule"] == "oneshot"].copy()
    f["distribution"] = f["distribution"].astype(str)
    pat = f[_patterned(f)]
    if pat.empty:
        return ""
    keys = ["method", "retrain", "distribution", "target"]
    arms = f[f["target"].isin(pat["target"])].assign(acc=lambda d: 100 * d["max_test"], sparsity=lambda d: 100 * d["sparsity"])
    s = arms.groupby(keys, observed=True).agg(sparsity=("sparsity", "mean"), mean=("acc", "mean"), std=("acc", "std"),
                                              n=("acc", "count")).reset_index()
    s.to_csv(outdir / f"table{number}_pattern.csv", index=False, float_format="%.4f")
    diffs = compared[compared["kind"] == "pattern"]
    several = s["n"].max() > 1
    rows = ["| method | arm | target (%) | reached (%) | max test (%) |", "|---|---|---|---|---|"]
    s = s.assign(is_pattern=s["distribution"].map(_is_pattern))
    for r in s.sort_values(["method", "retrain", "target", "is_pattern", "distribution"]).itertuples():
        arm = r.distribution if _is_pattern(r.distribution) else f"unstructured ({r.distribution})"
        cell = f"{r.mean:.2f}" + (f" ± {r.std:.2f} (n={r.n})" if several and r.n > 1 else "")
        method = r.method + (f", {r.retrain}" if s["retrain"].nunique() > 1 else "")
        rows.append(f"| {method} | {arm} | {100 * r.target:g} | {r.sparsity:.2f} | {cell} |")
    lines = [f"**Table {number}: N:M structured against unstructured one-shot pruning at the same target**", "",
             *rows, ""]
    lines += [f"- {v}" for v in diffs["verdict"]]
    text = "\n".join(lines) + "\n"
    (outdir / f"table{number}_pattern.md").write_text(text)
    return text
