"""results.csv -> the write-up's figures and tables, across seeds, retraining modes and distributions.

Each phase (one seed's baseline, one-shot run or iterative round) is reduced to
three accuracy figures, all fractions of the test set in the data and percents
in the tables:

- ``max_test``: the best test accuracy over the phase's epochs, the write-up's
  figure ("max test accuracy over the 90 epochs"); it picks the epoch on the
  test set, so it is optimistic.
- ``best_val_test``: the test accuracy at the epoch of the best validation
  accuracy (the first such epoch on ties): honest model selection. Only when
  the study held out a validation split.
- ``last_test``: the test accuracy after the phase's last epoch: no selection.

Across seeds each figure is given as mean, std (ddof=1), n and a 95%
t-interval (mean ± t_{0.975,n-1}·std/√n; NaN for n=1).

Tables (markdown, and CSV in long form with one row per group and figure):
1 one-shot per sparsity; 2-4 iterative per round, one per target; 5 one-shot
against iterative; 6 retraining modes against schedule × sparsity (Renda et
al.'s layout); 7 accuracy against the epochs spent after the baseline.
Figures (PNG): 1 the baseline's curve; 2 one-shot curves; 3-5 iterative
curves per target with round boundaries; summary.png, best accuracy against
sparsity; equal_compute.png, accuracy against epochs spent. Shaded bands are
±1 std across seeds. ``report.md`` gathers them all.

Iterative results for a target come from the chain run for it or, with a
shared chain, from the prefix of the longest chain that first reaches it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats

from jaxprune.runtime import interrupt
from jaxprune.study import modes
from jaxprune.runtime.errors import UserError
from jaxprune.runtime.faults import fault_point

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


class ReportError(UserError):
    """No usable results.csv."""


# results.csv's columns, in order, and their types.
COLUMNS = {
    "model": str, "data": str, "seed": int, "retrain": str, "distribution": str, "schedule": str, "method": str, "target": float,
    "round": int, "sparsity": float, "epoch": int, "test_acc": float, "val_acc": float,
    "train_loss": float, "train_acc": float, "seconds": float, "diverged": int,
}
# Columns files written before replicates lack, with the values those files meant (baseline rows: "").
DEFAULTS = {"seed": 0, "retrain": "retrain", "distribution": "global", "val_acc": np.nan}
LATER = ("model", "data", "diverged")  # columns added later still, filled in by `_typed`
PHASE = ["seed", "retrain", "distribution", "schedule", "method", "target", "round"]
VARIANT = ["method", "retrain", "distribution"]  # what one table column or figure line stands for
MEASURES = {"max_test": "max test", "best_val_test": "test at best val", "last_test": "test at last epoch"}
# Display order; values not listed come after, alphabetically.
ORDER = {
    "retrain": tuple(modes.RETRAINING),
    "distribution": ("global", "uniform", "erk"),
    "schedule": ("baseline", *modes.SCHEDULES),
}
SCHEDULE_NAMES = {"oneshot": "one-shot"}
STATS = ["mean", "std", "n", "ci95_low", "ci95_high"]
NON_FINITE = ["nan", "inf", "-inf", "+inf", "infinity", "-infinity"]  # as Python writes them
EPS = 1e-12  # sparsities are exact counts over the total; this only absorbs float rounding


# ---------------------------------------------------------------- reading


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame in results.csv's schema: old layouts get DEFAULTS; ValueError if a row is damaged."""
    missing = [c for c in COLUMNS if c not in df.columns and c not in DEFAULTS and c not in LATER]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    df = df.reset_index(drop=True)
    baseline = df["schedule"].astype(str) == "baseline"
    df = df.assign(**{
        c: (np.where(baseline, "", v) if isinstance(v, str) else v) for c, v in DEFAULTS.items() if c not in df
    })
    # Files from before the model registry: the write-up's network; the data set unrecorded.
    df = df.assign(**{c: v for c, v in (("model", "resnet18"), ("data", "")) if c not in df})
    if "diverged" not in df:  # files from before the column: a non-finite training loss is the mark
        loss = pd.to_numeric(df["train_loss"], errors="coerce")
        df = df.assign(diverged=(df["train_loss"].astype(str).str.strip().str.lower().isin(NON_FINITE)
                                 | np.isinf(loss)).astype(int))
    numeric = [c for c, t in COLUMNS.items() if t is not str]
    values = df[numeric].apply(pd.to_numeric, errors="coerce")
    # val_acc may be empty (no validation split), and a diverged epoch's loss NaN;
    # anything else unreadable means a torn or damaged row.
    # (pandas 3 keeps a missing value missing through astype(str); pandas 2 writes "nan")
    written = df[numeric].astype(str).fillna("").apply(lambda c: c.str.strip().str.lower())
    no_val = written["val_acc"].isin(["", "none", *NON_FINITE])
    bad = (values.isna() & ~written.isin(NON_FINITE)).drop(columns="val_acc").any(axis=1) | (
        values["val_acc"].isna() & ~no_val)
    if bad.any():
        raise ValueError(f"row {int(bad.idxmax()) + 2} is incomplete")
    text = [c for c, t in COLUMNS.items() if t is str]
    return pd.concat([df[text].astype(str), values], axis=1)[list(COLUMNS)].astype(COLUMNS)


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """A study's results.csv (or the one in a directory) as a typed frame in COLUMNS' schema.

    Files in the layout before replicates are read with DEFAULTS. A results.csv
    that a kill left torn (a row cut mid-append) or otherwise damaged is rebuilt
    from the phases' own metric logs, which the study directory lists in its
    config.json, and rewritten when no study holds the directory.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise ReportError(f"no results.csv at {path}; run `jaxprune study` there first")
    try:
        df = _typed(pd.read_csv(path, dtype=str, keep_default_na=False))
    except (ValueError, pd.errors.ParserError) as e:
        df = _rebuilt(path.parent, f"{path} is damaged ({' '.join(str(e).split())})")  # one line
    if df.empty:
        raise ReportError(f"{path} has no rows yet")
    return df


def _rebuilt(workdir: Path, why: str) -> pd.DataFrame:
    from jaxprune.training import rundir  # only on this rare path: they bring JAX
    from jaxprune.study import driver as study

    phases = study.recorded_phases(workdir)
    if not phases:
        raise ReportError(f"{why}, and {workdir} lists no phases to rebuild it from")
    print(f"jaxprune: {why}; rebuilt it from the phases' metric logs", file=sys.stderr)
    try:
        with rundir.locked(workdir):
            study.rebuild_results(workdir, phases)
    except rundir.RunDirError:
        pass  # a study is running there and will rewrite it; use the rebuilt rows without writing
    return _typed(pd.DataFrame(study.result_rows(workdir, phases), columns=list(study.RESULT_FIELDS)))


# ---------------------------------------------------------------- reductions


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """String keys as ordered categoricals, so groupby, pivot and sort follow ORDER."""
    def dtype(col: str) -> pd.CategoricalDtype:
        present = set(df[col].astype(str))
        known = [v for v in ("", *ORDER[col]) if v in present]  # "": the baseline's, first
        return pd.CategoricalDtype([*known, *sorted(present - set(known))], ordered=True)
    return df.astype({c: dtype(c) for c in ORDER if c in df})


def phase_stats(df: pd.DataFrame) -> pd.DataFrame:
    """One row per phase (PHASE keys): ``sparsity`` at its last epoch, ``epochs`` (its last epoch
    number), ``max_test``, ``best_val_test`` and ``best_val_epoch`` (NaN without val_acc), ``last_test``."""
    df = _ordered(df).sort_values([*PHASE, "epoch"], kind="stable")
    out = df.groupby(PHASE, observed=True).agg(
        sparsity=("sparsity", "last"), epochs=("epoch", "max"),
        max_test=("test_acc", "max"), last_test=("test_acc", "last"),
    )
    val = df.dropna(subset=["val_acc"])
    # idxmax gives the first row of the maximum; rows are in epoch order, so the first epoch on ties.
    best = val.loc[val.groupby(PHASE, observed=True)["val_acc"].idxmax(), [*PHASE, "epoch", "test_acc"]]
    best = best.rename(columns={"epoch": "best_val_epoch", "test_acc": "best_val_test"}).set_index(PHASE)
    return out.join(best).reset_index()


def iterative_targets(phases: pd.DataFrame) -> list[float]:
    """Targets the study asked for: the chains' own, plus (shared chain) the one-shot targets up to the longest."""
    chains = phases.loc[phases["schedule"] == "iterative", "target"]
    asked = phases.loc[phases["schedule"] == "oneshot", "target"]
    top = chains.max() if len(chains) else 0.0
    return sorted(set(chains) | set(asked[asked <= top]))


def iterative_chain(phases: pd.DataFrame, targets: list[float] | None = None) -> pd.DataFrame:
    """The iterative phases serving each target (``for_target``), per seed and variant: the chain
    run to that target or, without one (a shared chain), the longest chain; its rounds up to the
    first one whose sparsity reaches the target, which alone has ``reached`` True."""
    it = phases[phases["schedule"] == "iterative"]
    targets = iterative_targets(phases) if targets is None else targets
    c = it.merge(pd.DataFrame({"for_target": targets}, dtype=float), how="cross")
    by = ["seed", *VARIANT, "for_target"]
    c["own"] = (c["target"] - c["for_target"]).abs() < EPS
    longest = c["target"] == c.groupby(by, observed=True)["target"].transform("max")
    c = c[c["own"] | (~c.groupby(by, observed=True)["own"].transform("any") & longest)].sort_values([*by, "round"])
    c["reached"] = c["sparsity"] >= c["for_target"] - EPS
    reached_before = c.groupby(by, observed=True)["reached"].cumsum() - c["reached"]
    return c[reached_before == 0].drop(columns="own")


def final_results(phases: pd.DataFrame, phase_target: bool = False) -> pd.DataFrame:
    """Per seed, variant, schedule and target, the phase that is the schedule's result there:
    one-shot's phase; the iterative round that reaches the target (none if the chain has not yet);
    other schedules' last round. `phase_target`: also a ``phase_target`` column, the phase's own
    (for an iterative round, its chain's), which with PHASE's other keys names the phase."""
    chains = iterative_chain(phases)
    reached = chains[chains["reached"]].assign(phase_target=lambda c: c["target"], target=lambda c: c["for_target"])
    others = phases[~phases["schedule"].isin(["baseline", "iterative"])].sort_values("round")
    last = others.groupby(["seed", *VARIANT, "schedule", "target"], observed=True).tail(1)
    last = last.assign(phase_target=last["target"])
    out = pd.concat([last, reached[last.columns]], ignore_index=True)
    return out if phase_target else out.drop(columns="phase_target")


def equal_compute(phases: pd.DataFrame) -> pd.DataFrame:
    """Every pruned phase with ``spent``: the training epochs after the baseline to get there
    (one-shot: its own epochs; iterative round r: the chain's epochs through round r)."""
    pruned = phases[phases["schedule"] != "baseline"].sort_values([*PHASE])
    chain = ["seed", *VARIANT, "schedule", "target"]
    return pruned.assign(spent=pruned.groupby(chain, observed=True)["epochs"].cumsum())


def across_seeds(frame: pd.DataFrame, by: list[str], carry: dict[str, str] | None = None) -> pd.DataFrame:
    """Long form: one row per `by` group and measure with mean, std (ddof=1), n and the 95%
    t-interval across seeds, in percent; measures no phase has (no validation split) left out.
    `carry`: other columns reduced per group alongside (column -> pandas reduction)."""
    long = frame.melt(id_vars=by, value_vars=list(MEASURES), var_name="measure", value_name="acc")
    long = long.dropna(subset=["acc"]).assign(
        acc=lambda d: 100 * d["acc"], measure=lambda d: pd.Categorical(d["measure"], list(MEASURES), ordered=True))
    s = long.groupby([*by, "measure"], observed=True)["acc"].agg(mean="mean", std="std", n="count").reset_index()
    half = stats.t.ppf(0.975, s["n"] - 1) * s["std"] / np.sqrt(s["n"])  # NaN for n=1 (df=0)
    s = s.assign(ci95_low=s["mean"] - half, ci95_high=s["mean"] + half)
    if carry:
        s = s.merge(frame.groupby(by, observed=True).agg(carry).reset_index(), on=by)
    return s


def _select(frame: pd.DataFrame, **values) -> pd.DataFrame:
    """The rows whose columns hold `values`."""
    return frame[(frame[list(values)] == pd.Series(values)).all(axis=1)]


# ---------------------------------------------------------------- tables


def _cells(s: pd.DataFrame, several: bool, unit: str = "") -> pd.Series:
    """Markdown cells: "mean ± std (n=k)" with several seeds ("mean (n=1)" where one); with one seed, the value."""
    mean = s["mean"].map("{:.2f}".format)
    if not several:
        return mean + unit
    spread = (" ± " + s["std"].map("{:.2f}".format)).where(s["n"] > 1, "")
    return mean + spread + unit + " (n=" + s["n"].astype(str) + ")"


def _pct_g(x: pd.Series) -> pd.Series:
    return (100 * x.astype(float)).map("{:g}".format)


def _pct2(x: pd.Series) -> pd.Series:
    return (100 * x.astype(float)).map("{:.2f}".format)


def _schedule(x: pd.Series) -> pd.Series:
    return x.astype(str).replace(SCHEDULE_NAMES)


class _Layout:
    """What the tables and figures show of one results frame."""

    def __init__(self, df: pd.DataFrame):
        self.df = _ordered(df)
        self.phases = phase_stats(df)
        self.pruned = self.phases[self.phases["schedule"] != "baseline"]
        self.seeds = sorted(df["seed"].unique())
        self.several = len(self.seeds) > 1
        # Only the variant columns that differ name a line or column, so a one-mode study reads as the write-up.
        self.varying = [c for c in ("retrain", "distribution") if self.pruned[c].nunique() > 1]
        self.has_val = bool(df["val_acc"].notna().any())
        self.shown = ["max_test", "best_val_test"] if self.has_val else ["max_test"]
        self.what = "max test accuracy" + (" (and test at best val)" if self.has_val else "")  # for titles
        # What was studied, for titles: "resnet18 on cifar10" (older files: the model alone).
        names = [", ".join(pd.unique(df[c].astype(str)[df[c].astype(str) != ""])) for c in ("model", "data")]
        self.subject = " on ".join(n for n in names if n)
        # For figure titles, on a line of its own: the titles are long.
        self.suffix = f" ({self.subject})" + (f"\n{len(self.seeds)} seeds: mean ± 1 std" if self.several else "")

    def label(self, s: pd.DataFrame) -> pd.Series:
        """'magnitude' or, when several modes or distributions are present, 'magnitude, lr-rewind, erk'."""
        out = s["method"].astype(str)
        for c in self.varying:
            out = out + ", " + s[c].astype(str)
        return out

    def wide(self, s: pd.DataFrame, index: list[str], column: pd.Series, order: list[str] | None = None,
             measures: list[str] | None = None) -> pd.DataFrame:
        """Markdown-ready pivot of `s` (across_seeds output): rows `index`, one column per `column`
        value (suffixed ' (best val)' for that measure unless measures are rows), ordered by `order`
        (default the variant)."""
        s = s[s["measure"].isin(measures or self.shown)]
        suffix = s["measure"].astype(str).map({"best_val_test": " (best val)"}).fillna("")
        if "measure" in index:
            suffix = ""
        s = s.assign(col=column.loc[s.index] + suffix, cell=_cells(s, self.several))
        columns = pd.unique(s.sort_values([*(order or VARIANT), "measure"], kind="stable")["col"])
        w = s.pivot_table(index=index, columns="col", values="cell", aggfunc="first", observed=True)
        return w.reindex(columns=columns).fillna("").reset_index().rename_axis(columns=None)


def _markdown(title: str, table: pd.DataFrame) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * table.shape[1]]
    lines += table.astype(str).apply(lambda r: "| " + " | ".join(r) + " |", axis=1).tolist()
    return "\n".join(lines) + "\n"


def _write(outdir: Path, stem: str, title: str, s: pd.DataFrame, keys: dict[str, pd.Series], md: pd.DataFrame) -> str:
    """Writes STEM.csv: `keys` (formatted), the variant, measure and STATS of across_seeds output `s`,
    percents to 0.01 (one test image in 10,000); and STEM.md; returns the markdown."""
    named = pd.DataFrame(keys, index=s.index)
    rest = s[[*VARIANT, "measure", *STATS]].astype({c: str for c in (*VARIANT, "measure")})
    pd.concat([named, rest], axis=1).to_csv(outdir / f"{stem}.csv", index=False, float_format="%.2f")
    text = _markdown(title, md)
    (outdir / f"{stem}.md").write_text(text)
    fault_point("report-file")
    return text


def tables(lay: _Layout, outdir: Path) -> list[str]:
    """Writes Tables 1-7 (those the data has) into outdir; returns their markdown."""
    phases, out = lay.phases, []
    final = final_results(phases)
    one = across_seeds(final[final["schedule"] == "oneshot"], ["target", *VARIANT])
    if len(one):
        md = lay.wide(one, ["target"], lay.label(one)).assign(target=lambda d: _pct_g(d["target"]))
        out.append(_write(outdir, "table1_oneshot", f"Table 1: one-shot pruning, {lay.what} (%)",
                          one, {"sparsity (%)": _pct_g(one["target"])}, md.rename(columns={"target": "sparsity (%)"})))
    chains = iterative_chain(phases)
    for i, t in enumerate(iterative_targets(phases), start=2):
        s = across_seeds(chains[chains["for_target"] == t], ["round", *VARIANT], {"sparsity": "mean"})
        if s.empty:
            continue
        md = lay.wide(s, ["round"], lay.label(s))
        md.insert(1, "global sparsity (%)", _pct2(md["round"].map(s.groupby("round", observed=True)["sparsity"].mean())))
        # With a shared chain these rounds are the first ones of the chain to the largest target.
        mine = chains[chains["for_target"] == t]
        shared = "" if ((mine["target"] - t).abs() < EPS).all() else (
            f" (the first rounds of the shared chain to {100 * mine['target'].max():g}%)")
        out.append(_write(
            outdir, f"table{i}_iterative_{t:.2f}",
            f"Table {i}: iterative pruning to {100 * t:g}% sparsity{shared}, {lay.what} per round (%)",
            s, {"round": s["round"], "global sparsity (%)": _pct2(s["sparsity"])}, md,
        ))
    summary = across_seeds(final, ["target", *VARIANT, "schedule"], {"sparsity": "mean"})
    if len(summary):
        named = lay.label(summary) + " " + _schedule(summary["schedule"])
        md = lay.wide(summary, ["target"], named, order=[*VARIANT, "schedule"])
        # An iterative chain's round reaching a target may pass it (0.9 -> 90.15% in the write-up's,
        # 93.75% in the smoke study's): the row says what was reached, as Table 4, 7 and the figure do.
        md = md.assign(target=lambda d: d["target"].map(lambda t: _target_reached(summary, t)))
        md = md.rename(columns={"target": "target (%)"})
        keys = {"target (%)": _pct_g(summary["target"]), "reached (%)": _pct2(summary["sparsity"]),
                "schedule": summary["schedule"].astype(str)}
        out.append(_write(outdir, "table5_summary", f"Table 5: one-shot vs iterative, {lay.what} (%)",
                          summary, keys, md))
        out.append(_renda(lay, summary, keys, outdir))
    spent = equal_compute(phases)
    if len(spent):
        out.append(_equal_compute_table(lay, spent, outdir))
    return out


def _target_reached(summary: pd.DataFrame, target: float) -> str:
    """'90', or '90 (iterative: 93.75)' where a schedule's result passed the target."""
    rows = summary[(summary["target"] - target).abs() < EPS]
    off = rows[(rows["sparsity"] - target).abs() >= EPS].drop_duplicates("schedule")
    notes = ", ".join(f"{SCHEDULE_NAMES.get(str(r.schedule), str(r.schedule))}: {100 * r.sparsity:.2f}"
                      for r in off.itertuples())
    return f"{100 * target:g}" + (f" ({notes})" if notes else "")


def _renda(lay: _Layout, summary: pd.DataFrame, keys: dict[str, pd.Series], outdir: Path) -> str:
    """Table 6 (Renda et al.'s layout): one row per retraining mode (within method and distribution
    where several) and accuracy figure; one column per schedule × target sparsity."""
    rows = [*(["method"] if summary["method"].nunique() > 1 else []),
            *(["distribution"] if "distribution" in lay.varying else []), "retrain", "measure"]
    off = (summary["sparsity"] - summary["target"]).abs() >= EPS
    reached = (" (reached " + _pct2(summary["sparsity"]) + "%)").where(off, "")
    column = _schedule(summary["schedule"]) + " " + _pct_g(summary["target"]) + "%" + reached
    md = lay.wide(summary, rows, column, order=["schedule", "target"], measures=list(MEASURES))
    md["measure"] = md["measure"].astype(str).map(MEASURES)
    # The CSV holds Table 5's numbers, in this table's order.
    order = summary.sort_values([*rows, "schedule", "target"], kind="stable").index
    return _write(outdir, "table6_retrain", "Table 6: retraining modes, accuracy (%) per schedule and sparsity",
                  summary.loc[order], {k: v.loc[order] for k, v in keys.items()}, md)


def _equal_compute_table(lay: _Layout, spent: pd.DataFrame, outdir: Path) -> str:
    """Table 7: every pruned result against the epochs spent after the baseline to reach it."""
    point = ["schedule", "target", "round"]
    s = across_seeds(spent, [*point, *VARIANT], {"sparsity": "mean", "spent": "max"})
    # One row per point; variants that differ in sparsity or epochs (rare) show their mean and maximum.
    s = s.assign(sp=s.groupby(point, observed=True)["sparsity"].transform("mean"), epochs=s.groupby(point, observed=True)["spent"].transform("max"))
    md = lay.wide(s, ["epochs", *point, "sp"], lay.label(s)).sort_values(["epochs", *point])
    md = md.assign(schedule=_schedule(md["schedule"]), target=_pct_g(md["target"]), sp=_pct2(md["sp"]))
    md = md.rename(columns={"epochs": "epochs after baseline", "target": "target (%)", "sp": "sparsity (%)"})
    keys = {"schedule": s["schedule"].astype(str), "target (%)": _pct_g(s["target"]), "round": s["round"],
            "sparsity (%)": _pct2(s["sparsity"]), "epochs": s["spent"]}
    return _write(outdir, "table7_equal_compute",
                  f"Table 7: {lay.what} (%) against the training epochs spent after the baseline",
                  s, keys, md)


# ---------------------------------------------------------------- figures


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


def _max_label(s: pd.DataFrame, several: bool) -> str:
    """'max 92.78%' or 'max 92.00 ± 2.00% (n=3)' from across_seeds output with one max_test row."""
    return f"max {_cells(s[s['measure'] == 'max_test'], several, '%').iloc[0]}"


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


# ---------------------------------------------------------------- report


def diverged_phases(df: pd.DataFrame) -> pd.DataFrame:
    """One row per phase that diverged: its keys and the first epoch whose training loss was not finite."""
    bad = df[df["diverged"] == 1]
    return bad.groupby(PHASE, observed=True, sort=False)["epoch"].min().reset_index()


def _diverged_note(df: pd.DataFrame) -> list[str]:
    bad = diverged_phases(df)
    if bad.empty:
        return []
    names = [
        f"{r.schedule}" if r.schedule == "baseline" else
        f"{r.schedule} {r.method} {100 * r.target:g}% round {r.round} (seed {r.seed}, {r.retrain})"
        for r in bad.itertuples()
    ]
    return [
        f"**Diverged:** {len(bad)} phase{'s' * (len(bad) > 1)} reached a NaN or infinite training loss and "
        "stopped at that epoch; their accuracies below are those of a broken network, and the phases "
        "descending from them were not trained: "
        + "; ".join(f"{n}, epoch {r.epoch}" for n, r in zip(names, bad.itertuples())) + ".", "",
    ]


MARK = ".jaxprune-report"  # in every folder the report made: --out may replace only such a folder


def write_report(workdir: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Writes every figure and table from WORKDIR/results.csv into OUTDIR (default WORKDIR/report);
    returns the path of report.md, which gathers them.

    The whole report is made in a hidden folder beside OUTDIR, then put in its
    place: a kill or an error leaves the previous report whole, and files an
    earlier plan made that this one does not are gone. An --out folder that
    holds files the report did not make is refused."""
    workdir = Path(workdir)
    df = read_results(workdir)
    default = (workdir if workdir.is_dir() else workdir.parent) / "report"
    outdir = Path(outdir) if outdir else default
    if outdir.exists() and not outdir.is_dir():
        raise ReportError(f"cannot write the report into {outdir} (a file is there); give a folder as --out")
    if outdir.is_dir() and outdir != default and any(outdir.iterdir()) and not (outdir / MARK).exists():
        raise ReportError(f"{outdir} holds files the report did not make; give a new or empty --out")
    staging = outdir.with_name(f".{outdir.name}.partial-{os.getpid()}")
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(outdir)
        staging.mkdir()
    except OSError as e:
        raise ReportError(f"cannot write the report into {outdir} ({e.strerror or e}); give a writable --out") from None
    try:
        _write_into(workdir, df, staging)
        interrupt.check()  # a stop swallowed on the way must not be followed by the report in place
        _replace_folder(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outdir / "report.md"


def _clean_leftovers(outdir: Path) -> None:
    """Removes what a killed report left beside OUTDIR; puts back a previous report
    that a kill caught between its two renames."""
    for p in outdir.parent.glob(f".{outdir.name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in sorted(outdir.parent.glob(f".{outdir.name}.old-*")):
        if not outdir.exists():
            p.rename(outdir)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _replace_folder(new: Path, outdir: Path) -> None:
    """Puts folder `new` where `outdir` is: two renames, the old one removed after."""
    old = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
    if outdir.exists():
        outdir.rename(old)
    new.rename(outdir)
    shutil.rmtree(old, ignore_errors=True)


def _explained(lay: _Layout, workdir: Path, outdir: Path, texts: list[str], made: list[Path]):
    """Tables 8-11 and their figures: paired differences, N:M against unstructured, and, from the
    phases' saved masks, the per-layer profile and the mask overlap (see report_paired, report_masks)."""
    from jaxprune.report import masks as report_masks, comparisons as report_paired  # the masks' reader imports JAX and Orbax

    final = final_results(lay.phases, phase_target=True)
    compared = report_paired.comparisons(final)
    if final.empty:
        texts = texts + ["**Not compared:** no pruned phase has a result, so there is nothing to compare "
                         "(Tables 8-11 are not made)."]
    elif gaps := report_paired.not_compared(final):
        texts = texts + [f"**Not compared:** {'; '.join(gaps)}."]
    texts = texts + [t for t in (report_paired.paired_section(compared, outdir, 8),
                                 report_paired.pattern_section(final, compared, outdir, 9)) if t]
    more, figs = report_masks.mask_sections(workdir, final, outdir, (10, 11), f" ({lay.subject})" if lay.subject else "")
    return texts + more, made + figs


def _write_into(workdir: Path, df: pd.DataFrame, outdir: Path) -> None:
    (outdir / MARK).write_text("made by jaxprune report; `jaxprune report --out` replaces this folder whole\n")
    lay = _Layout(df)
    made = figures(lay, outdir)
    texts = tables(lay, outdir)
    texts, made = _explained(lay, workdir if workdir.is_dir() else workdir.parent, outdir, texts, made)
    n = len(lay.seeds)
    modes = ", ".join(lay.pruned["retrain"].cat.remove_unused_categories().cat.categories)
    md = [
        f"# Pruning study report: {lay.subject}", "",
        f"From `{workdir}`: {len(df)} epochs recorded, {n} seed{'s' * (n > 1)} "
        f"({', '.join(map(str, lay.seeds))}){f'; retraining: {modes}' if modes else ''}.", "",
        "Accuracy figures, per phase (percent of the test set):", "",
        "- **max test** (the write-up's): the best test accuracy over the phase's epochs; "
        "it picks the epoch on the test set, so it is optimistic.",
        "- **test at best val**: the test accuracy at the epoch of best validation accuracy; honest model selection"
        + ("." if lay.has_val else " (not available: this study has no validation split)."),
        "- **test at last epoch**: the test accuracy after the phase's last epoch; no selection "
        "(in the CSVs and Table 6).",
        "",
    ]
    if lay.several:
        md += ["Cells are mean ± std (n seeds) across seeds; the CSVs add 95% t-intervals.", ""]
    base = across_seeds(lay.phases[lay.phases["schedule"] == "baseline"], ["schedule"])
    if len(base):
        md += [f"Baseline: {_max_label(base, lay.several).replace('max', 'max test accuracy', 1)} over "
               f"{int(lay.phases.loc[lay.phases['schedule'] == 'baseline', 'epochs'].max())} epochs.", ""]
    md += _diverged_note(lay.df)
    md += [t for text in texts for t in (text, "")]
    md += [f"![{p.stem}]({p.name})" for p in made]
    (outdir / "report.md").write_text("\n".join(md) + "\n")
    fault_point("report-file")
