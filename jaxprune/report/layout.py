"""What the tables and figures show of one results frame (`_Layout`: the phases, the seeds, the
variant columns that vary, the titles' subject) and how a cell reads ("mean ± std (n=k)",
percents, schedule names): shared by the accuracy tables, the figures and report.md.
"""

from __future__ import annotations

import pandas as pd

from jaxprune.report.results import SCHEDULE_NAMES, VARIANT, _ordered, phase_stats


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


def _max_label(s: pd.DataFrame, several: bool) -> str:
    """'max 92.78%' or 'max 92.00 ± 2.00% (n=3)' from across_seeds output with one max_test row."""
    return f"max {_cells(s[s['measure'] == 'max_test'], several, '%').iloc[0]}"
