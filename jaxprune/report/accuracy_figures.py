"""The figures (PNG): 1 the baseline's curve; 2 one-shot curves; 3-5 iterative curves per target
with round boundaries; summary.png, best accuracy against sparsity; equal_compute.png, accuracy
against epochs spent. Shaded bands are ±1 std across seeds. matplotlib draws into files only
(the Agg backend, set here).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from jaxprune.runtime.faults import fault_point
from jaxprune.report.layout import _Layout, _max_label
from jaxprune.report.results import (
    PHASE, SCHEDULE_NAMES, VARIANT, _select, across_seeds, equal_compute, final_results, iterative_chain,
    iterative_targets,
)

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _band(ax, x, mean, std, **kw) -> None:
    """A line of mean accuracy (percents) with a ±1 std band where std is known (several seeds)."""
    x, mean, std = (np.asarray(v, float) for v in (x, mean, std))
    if len(x) == 1:
        kw.setdefault("marker", "o")  # a line of one point draws nothing
    (line,) = ax.plot(x, mean, **kw)
    if np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def _curves(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per `by` and epoch: mean and std of test accuracy (percent) across seeds."""
    return (100 * rows["test_acc"]).groupby([rows[c] for c in [*by, "epoch"]], observed=True).agg(["mean", "std"]).reset_index()


def _finish(fig, axes, title: str, path: Path, ylabel: str = "test accuracy (%)") -> Path:
    for ax in axes:
        ax.set_xlabel(ax.get_xlabel() or "epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fault_point("report-file")
    plt.close(fig)
    return path


def figures(lay: _Layout, outdir: Path) -> list[Path]:
    """Writes every figure the data has into outdir; returns their paths."""
    df, phases, made = lay.df, lay.phases, []
    base = df[df["schedule"] == "baseline"]
    if len(base):
        c = _curves(base, [])
        s = across_seeds(phases[phases["schedule"] == "baseline"], ["schedule"])
        fig, ax = plt.subplots(figsize=(6, 4))
        _band(ax, c["epoch"], c["mean"], c["std"], label=f"baseline ({_max_label(s, lay.several)})")
        made.append(_finish(fig, [ax], f"Figure 1: unpruned model, test accuracy per epoch{lay.suffix}",
                            outdir / "figure1_baseline.png"))
    if (df["schedule"] == "oneshot").any():
        made.append(_oneshot_figure(lay, outdir))
    made += _iterative_figures(lay, outdir)
    made.append(_summary_figure(lay, outdir))
    if len(lay.pruned):
        made.append(_equal_compute_figure(lay, outdir))
    return made


def _oneshot_figure(lay: _Layout, outdir: Path) -> Path:
    """Figure 2: one subplot per method (across) and mode (down), one curve per target sparsity."""
    one = lay.df[lay.df["schedule"] == "oneshot"]
    c = _curves(one, [*VARIANT, "target"])
    s = across_seeds(lay.phases[lay.phases["schedule"] == "oneshot"], [*VARIANT, "target"])
    methods = sorted(one["method"].unique())
    modes = one[["retrain", "distribution"]].drop_duplicates().sort_values(["retrain", "distribution"])
    fig, axes = plt.subplots(len(modes), len(methods), figsize=(6 * len(methods), 4 * len(modes)), squeeze=False)
    for row, mode in zip(axes, modes.to_dict("records")):
        for ax, m in zip(row, methods):
            if _select(c, method=m, **mode).empty:
                ax.set_visible(False)  # this method was not run in this mode
                continue
            for t, curve in _select(c, method=m, **mode).groupby("target", observed=True):
                label = _max_label(_select(s, method=m, target=t, **mode), lay.several)
                _band(ax, curve["epoch"], curve["mean"], curve["std"], label=f"sparsity {100 * t:g}% ({label})")
            ax.set_title(", ".join([f"{m} pruning", *(str(mode[v]) for v in lay.varying)]))
    return _finish(fig, axes.ravel(), f"Figure 2: one-shot pruning, then retraining{lay.suffix}",
                   outdir / "figure2_oneshot.png")


def _iterative_figures(lay: _Layout, outdir: Path) -> list[Path]:
    """Figures 3-5: per target, the serving chain's curve over all its rounds; one subplot per
    method, one line per mode, round boundaries dashed."""
    made = []
    chains = iterative_chain(lay.phases)
    for i, t in enumerate(iterative_targets(lay.phases), start=3):
        served = chains.loc[chains["for_target"] == t, PHASE]
        if served.empty:
            continue
        c = _curves(lay.df.merge(served, on=PHASE), [*VARIANT, "round"])
        # x: the epochs of all earlier rounds (the longest seed's) plus this round's epoch.
        length = c.groupby([*VARIANT, "round"], observed=True)["epoch"].max().rename("length")
        ends = length.to_frame().assign(end=length.groupby(VARIANT, observed=True).cumsum()).reset_index()
        c = c.merge(ends, on=[*VARIANT, "round"]).assign(x=lambda d: d["end"] - d["length"] + d["epoch"])
        methods = sorted(c["method"].unique())
        fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4), squeeze=False)
        for ax, m in zip(axes[0], methods):
            for key, line in _select(c, method=m).groupby(VARIANT, observed=True):
                mode = ", ".join(str(dict(zip(VARIANT, key))[v]) for v in lay.varying)
                n = int(line["round"].max())
                label = f"{mode + ', ' if mode else ''}{n} round{'s' * (n > 1)}"
                _band(ax, line["x"], line["mean"], line["std"], label=label)
            for j, b in enumerate(sorted(set(_select(ends, method=m)["end"]))[:-1]):
                ax.axvline(b + 0.5, color="grey", lw=0.6, ls="--", label="round boundary" if j == 0 else None)
            ax.set_xlabel("epochs of retraining, all rounds")
            ax.set_title(f"{m} pruning")
        made.append(_finish(
            fig, axes[0], f"Figure {i}: iterative pruning to {100 * t:g}% sparsity, retraining each round{lay.suffix}",
            outdir / f"figure{i}_iterative_{t:.2f}.png",
        ))
    return made


STYLES = {"oneshot": ("o", "-"), "iterative": ("s", "--")}  # marker, line style; other schedules ("^", ":")


def _lines(ax, lay: _Layout, s: pd.DataFrame, x: str, by: list[str]) -> None:
    """One max-test line with its band per `by` group (schedule first) of across_seeds output `s`,
    along column `x`: a colour per variant, a style per schedule, one legend entry for both."""
    s = s[s["measure"] == "max_test"].sort_values(x)
    colors = {v: f"C{i % 10}" for i, v in enumerate(pd.unique(lay.label(lay.pruned)))}
    named = set()
    for key, line in s.groupby(by, observed=True):
        variant = lay.label(line).iloc[0]
        name = f"{SCHEDULE_NAMES.get(str(key[0]), str(key[0]))}, {variant}"
        marker, style = STYLES.get(str(key[0]), ("^", ":"))
        _band(ax, line[x], line["mean"], line["std"], color=colors[variant], marker=marker, ls=style, ms=3,
              label=None if name in named else name)
        named.add(name)


def _summary_figure(lay: _Layout, outdir: Path) -> Path:
    """Best (max test) accuracy against sparsity: each schedule's results, and every round of the
    chain to the largest iterative target; one line per schedule and variant."""
    phases = lay.phases
    final = final_results(phases)
    points = final[final["schedule"] != "iterative"]
    targets = iterative_targets(phases)
    if targets:
        chain = iterative_chain(phases, [max(targets)])
        points = pd.concat([points, chain[points.columns]], ignore_index=True)
    s = across_seeds(points, ["schedule", *VARIANT, "round", "target"], {"sparsity": "mean"})
    s = s.assign(sparsity=100 * s["sparsity"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = phases[phases["schedule"] == "baseline"]
    if len(base):
        ax.axhline(100 * base["max_test"].mean(), color="black", lw=0.8, ls=":", label="baseline")
    _lines(ax, lay, s, "sparsity", ["schedule", *VARIANT])
    ax.set_xlabel("global sparsity (%)")
    return _finish(fig, [ax], f"Best test accuracy against sparsity{lay.suffix}", outdir / "summary.png",
                   "max test accuracy (%)")


def _equal_compute_figure(lay: _Layout, outdir: Path) -> Path:
    """Max test accuracy against the epochs spent after the baseline; one line per chain."""
    by = ["schedule", *VARIANT, "target"]
    s = across_seeds(equal_compute(lay.phases), [*by, "round"], {"spent": "max", "sparsity": "mean"})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _lines(ax, lay, s, "spent", by)  # a line per chain
    ends = s[s["measure"] == "max_test"].sort_values("round").groupby(by, observed=True).tail(1)
    for end in ends.itertuples():  # where each chain got to: one-shot's points all sit at one phase's epochs
        ax.annotate(f"{100 * end.sparsity:.0f}%", (end.spent, end.mean), fontsize=7, xytext=(3, -3),
                    textcoords="offset points")
    ax.set_xlabel("training epochs after the baseline")
    return _finish(fig, [ax], f"Accuracy against compute{lay.suffix}", outdir / "equal_compute.png",
                   "max test accuracy (%)")
