"""results.csv read and typed (its columns, their defaults for older layouts, the rebuild of a
damaged file), and reduced: a phase's accuracy figures (`phase_stats`), the iterative chain serving
each target, each schedule's result (`final_results`), the epochs spent (`equal_compute`), the
statistics across seeds (`across_seeds`) and the phases that diverged. What every part of the
report shares; it draws and writes nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from jaxprune.study import modes
from jaxprune.runtime.errors import UserError


class ReportError(UserError):
    """No usable results.csv."""


# results.csv's columns, in order, and their types.
COLUMNS = {
    "model": str, "data": str, "seed": int, "retrain": str, "distribution": str, "structure": str, "schedule": str,
    "method": str, "target": float, "round": int, "sparsity": float,
    "params": float, "params_nz": float, "compression": float, "flops": float, "flops_nz": float, "speedup": float,
    "epoch": int, "test_acc": float, "val_acc": float,
    "train_loss": float, "train_acc": float, "seconds": float, "diverged": int,
}
# Columns files written before replicates lack, with the values those files meant (baseline rows: "").
DEFAULTS = {"seed": 0, "retrain": "retrain", "distribution": "global", "val_acc": np.nan}
LATER = ("model", "data", "diverged", "structure")  # columns added later still, filled in by `_typed`
# Size and multiply-adds (jaxprune.models.cost): empty in rows logged before they were counted.
COST = ("params", "params_nz", "compression", "flops", "flops_nz", "speedup")
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
# How far under its target a channel chain's round may stop and still be its result (whole
# channels of a width-8 VGG land within 0.3%; full-size networks closer).
CHANNEL_SLACK = 0.02


# ---------------------------------------------------------------- reading


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame in results.csv's schema: old layouts get DEFAULTS; ValueError if a row is damaged."""
    missing = [c for c in COLUMNS if c not in df.columns and c not in DEFAULTS and c not in LATER and c not in COST]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    df = df.reset_index(drop=True)
    baseline = df["schedule"].astype(str) == "baseline"
    df = df.assign(**{
        c: (np.where(baseline, "", v) if isinstance(v, str) else v) for c, v in DEFAULTS.items() if c not in df
    })
    # Files from before the model registry: the write-up's network; the data set unrecorded.
    df = df.assign(**{c: v for c, v in (("model", "resnet18"), ("data", "")) if c not in df})
    if "structure" not in df:  # before channel pruning every pruned phase removed single weights
        df = df.assign(structure=np.where(baseline, "", "unstructured"))
    df = df.assign(**{c: "" for c in COST if c not in df})
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
    bad = (values.isna() & ~written.isin(NON_FINITE)).drop(columns=["val_acc", *COST]).any(axis=1) | (
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
        sparsity=("sparsity", "last"), epochs=("epoch", "max"), structure=("structure", "last"),
        **{c: (c, "last") for c in COST},
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
    # Whole channels stop a --structure channel chain as close to its target as they can,
    # maybe a little under it: within CHANNEL_SLACK, its own chain's round reaches the target.
    near = (c["distribution"].astype(str) == "channel") & c["own"] & (c["sparsity"] >= c["for_target"] - CHANNEL_SLACK)
    c["reached"] = (c["sparsity"] >= c["for_target"] - EPS) | near
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


def diverged_phases(df: pd.DataFrame) -> pd.DataFrame:
    """One row per phase that diverged: its keys and the first epoch whose training loss was not finite."""
    bad = df[df["diverged"] == 1]
    return bad.groupby(PHASE, observed=True, sort=False)["epoch"].min().reset_index()
