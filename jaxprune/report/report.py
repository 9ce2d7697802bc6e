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

This module writes the report (`write_report`: made in a hidden folder, then put in place) and
assembles report.md. results.csv's reading and reductions are in `results`, Tables 1-7 in
`accuracy_tables`, the figures in `accuracy_figures`, what both show of the data in `layout`,
Tables 8-11 in `comparisons` and `masks`, Table 12 and buys.png (what pruning buys: size and
multiply-adds) in `cost`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from jaxprune.runtime import interrupt
from jaxprune.runtime.faults import fault_point
from jaxprune.report.layout import _Layout, _max_label
from jaxprune.report.results import ReportError, across_seeds, diverged_phases, final_results, read_results
# Looked up here as the report is written (so `report.tables` is what a test may patch).
from jaxprune.report.accuracy_tables import tables
from jaxprune.report.accuracy_figures import figures
from jaxprune.report.cost import cost_section
# The other names `jaxprune.report.report` has always served, from the modules that hold them now.
from jaxprune.report.results import (  # noqa: F401
    COLUMNS, DEFAULTS, EPS, LATER, MEASURES, NON_FINITE, ORDER, PHASE, SCHEDULE_NAMES, STATS, VARIANT,
    equal_compute, iterative_chain, iterative_targets, phase_stats,
)
from jaxprune.report.accuracy_figures import STYLES  # noqa: F401


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
    # Channel-pruned phases keep all of a smaller network's weights: their masks say nothing per layer.
    masked = final[final["structure"].astype(str) != "channel"]
    more, figs = report_masks.mask_sections(workdir, masked, outdir, (10, 11), f" ({lay.subject})" if lay.subject else "")
    return texts + more, made + figs


def _write_into(workdir: Path, df: pd.DataFrame, outdir: Path) -> None:
    (outdir / MARK).write_text("made by jaxprune report; `jaxprune report --out` replaces this folder whole\n")
    lay = _Layout(df)
    made = figures(lay, outdir)
    texts = tables(lay, outdir)
    texts, made = _explained(lay, workdir if workdir.is_dir() else workdir.parent, outdir, texts, made)
    buys, buys_fig = cost_section(lay, outdir, 12)
    texts, made = texts + ([buys] if buys else []), made + buys_fig
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
