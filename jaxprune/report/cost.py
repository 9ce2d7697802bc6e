"""What pruning buys: Table 12 (size and multiply-adds per target) and buys.png (accuracy
against compression and against theoretical speedup), from results.csv's ShrinkBench columns
(``params``, ``params_nz``, ``compression``, ``flops``, ``flops_nz``, ``speedup``; see
`jaxprune.models.cost`). Studies logged before those columns existed get neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jaxprune.report.accuracy_figures import _band, _finish, plt, STYLES
from jaxprune.report.accuracy_tables import _markdown
from jaxprune.report.layout import _Layout, _cells
from jaxprune.report.results import SCHEDULE_NAMES, VARIANT, across_seeds, final_results
from jaxprune.runtime.faults import fault_point

KEYS = ["schedule", *VARIANT, "structure", "target"]
# Where speedup is below this share of compression, the report says that FLOPs fell much less
# than parameters (global magnitude pruning empties the late layers: many weights, few MACs each).
LAGS = 0.5


def _counted(phases: pd.DataFrame) -> pd.DataFrame:
    """The final results (one per seed, variant, schedule and target) whose costs were logged."""
    final = final_results(phases)
    return final[final["params_nz"].notna() & final["flops_nz"].notna()]


def cost_table(phases: pd.DataFrame) -> pd.DataFrame:
    """Per schedule, variant, structure and target: params, params_nz, flops, flops_nz (means over
    seeds), compression and speedup (means of each seed's ratio), max test accuracy (mean, std, n)."""
    final = _counted(phases)
    if final.empty:
        return pd.DataFrame()
    acc = across_seeds(final, KEYS)
    acc = acc[acc["measure"] == "max_test"][[*KEYS, "mean", "std", "n"]]
    sizes = final.groupby(KEYS, observed=True)[["params", "params_nz", "flops", "flops_nz", "compression",
                                                  "speedup"]].mean().reset_index()
    return sizes.merge(acc, on=KEYS).sort_values(["target", *KEYS[:-1]], kind="stable").reset_index(drop=True)


def _variant(lay: _Layout, t: pd.DataFrame) -> pd.Series:
    """'magnitude, unstructured', 'magnitude, erk, unstructured', 'magnitude, channel' (with the
    retraining mode after the method when the study has several)."""
    out = t["method"].astype(str)
    if "retrain" in lay.varying:
        out = out + ", " + t["retrain"].astype(str)
    dist = t["distribution"].astype(str)
    shown = dist.where(~dist.isin(["global", "channel"]), "").map(lambda d: f"{d}, " if d else "")
    return out + ", " + shown + t["structure"].astype(str)


def cost_section(lay: _Layout, outdir: Path, number: int) -> tuple[str | None, list[Path]]:
    """Writes Table `number` (tableN_cost.md/.csv) and buys.png; returns the markdown and the figure paths."""
    t = cost_table(lay.phases)
    if t.empty:
        return None, []
    stem = f"table{number}_cost"
    t.assign(schedule=t["schedule"].astype(str)).to_csv(outdir / f"{stem}.csv", index=False, float_format="%.4f")
    md = pd.DataFrame({
        "target (%)": (100 * t["target"]).map("{:g}".format),
        "schedule": t["schedule"].astype(str).replace(SCHEDULE_NAMES),
        "variant": _variant(lay, t),
        "params (non-zero)": t["params_nz"].map("{:,.0f}".format),
        "MACs (non-zero)": t["flops_nz"].map("{:,.0f}".format),
        "compression": t["compression"].map("{:.2f}×".format),
        "speedup": t["speedup"].map("{:.2f}×".format),
        "max test (%)": _cells(t, lay.several),
    })
    dense = t.iloc[0]
    text = _markdown(
        f"Table {number}: what pruning buys, {lay.subject} (of {dense['params']:,.0f} params and "
        f"{dense['flops']:,.0f} multiply-adds per image dense; speedup is theoretical)", md)
    lag = t[t["speedup"] < LAGS * t["compression"]]
    if len(lag):
        worst = lag.loc[(lag["speedup"] / lag["compression"]).idxmin()]
        text += (f"\nMultiply-adds fell much less than parameters in {len(lag)} of {len(t)} results (speedup under "
                 f"{LAGS:g}× the compression), most at {100 * worst['target']:g}% "
                 f"{SCHEDULE_NAMES.get(str(worst['schedule']), str(worst['schedule']))} {worst['method']}: "
                 f"{worst['compression']:.2f}× fewer parameters but only {worst['speedup']:.2f}× fewer multiply-adds. "
                 "Global magnitude pruning empties the late layers first: they hold most weights, and each of "
                 "their weights is used at few positions.\n")
    (outdir / f"{stem}.md").write_text(text)
    fault_point("report-file")
    return text, [_buys_figure(lay, outdir)]


def _buys_figure(lay: _Layout, outdir: Path) -> Path:
    """Max test accuracy against compression and against speedup (log x), mean ± 1 std over seeds;
    a line per schedule, variant and structure; the baseline as a point at 1×."""
    final = _counted(lay.phases)
    by = ["schedule", *VARIANT, "structure"]
    s = across_seeds(final, [*by, "target"], {"compression": "mean", "speedup": "mean"})
    s = s[s["measure"] == "max_test"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    base = lay.phases[lay.phases["schedule"] == "baseline"]
    colors = {v: f"C{i % 10}" for i, v in enumerate(pd.unique(lay.label(lay.pruned)))}
    for ax, x, label in ((axes[0], "compression", "compression: params / non-zero params"),
                         (axes[1], "speedup", "theoretical speedup: MACs / non-zero MACs")):
        if len(base):
            ax.plot([1.0], [100 * base["max_test"].mean()], "k*", ms=8, label="baseline")
        for key, line in s.sort_values(x).groupby(by, observed=True):
            variant = lay.label(line).iloc[0]
            marker, style = STYLES.get(str(key[0]), ("^", ":"))
            name = f"{SCHEDULE_NAMES.get(str(key[0]), str(key[0]))}, {_variant(lay, line.head(1)).iloc[0]}"
            _band(ax, line[x], line["mean"], line["std"], color=colors.get(variant, "C0"), marker=marker, ls=style,
                  ms=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        for axis_set in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_set(plt.FuncFormatter(lambda v, _: f"{v:g}×"))
    xs = np.concatenate([s["compression"].to_numpy(), s["speedup"].to_numpy(), [1.0]])
    for ax in axes:
        ax.set_xlim(0.9, max(2.0, 1.1 * float(np.nanmax(xs))))
    return _finish(fig, list(axes), f"What pruning buys{lay.suffix}", outdir / "buys.png", "max test accuracy (%)")
