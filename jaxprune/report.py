"""results.csv -> the write-up's figures and tables. Reads nothing else.

Figures (PNG): 1 the baseline's test accuracy per epoch; 2 one-shot curves,
one per sparsity; 3-5 iterative curves, one figure per target, with round
boundaries marked; a summary of the best accuracy against sparsity. Tables
(markdown and CSV): 1 one-shot maxima; 2-4 iterative maxima per round; 5
one-shot against iterative. ``report.md`` gathers them all.

As in the write-up, a sparsity's accuracy is the best test accuracy over the
epochs of its (final) round. Iterative results for a target come from the
chain run for it or, with a shared chain, from the prefix of the chain to
the largest target that first reaches it.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


class ReportError(ValueError):
    """No usable results.csv."""


COLUMNS = {
    "schedule": str, "method": str, "target": float, "round": int, "sparsity": float, "epoch": int,
    "test_acc": float, "train_loss": float, "train_acc": float, "seconds": float,
}


def _parse(path: Path) -> pd.DataFrame:
    """results.csv as a typed frame; ValueError if a column, a value or a row is damaged."""
    df = pd.read_csv(path, dtype={"schedule": str, "method": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    numeric = [c for c, t in COLUMNS.items() if t is not str]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    if df[numeric].isna().any().any():
        raise ValueError(f"row {int(df[numeric].isna().any(axis=1).idxmax()) + 2} is incomplete")
    return df.astype(COLUMNS)


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a study's results.csv.

    A results.csv that a kill left torn (a row cut mid-append) or otherwise
    damaged is rebuilt from the phases' own metric logs, which the study
    directory lists in its config.json, and rewritten when no study holds
    the directory.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    workdir = path.parent
    if not path.is_file():
        raise ReportError(f"no results.csv at {path}; run `jaxprune study` there first")
    try:
        df = _parse(path)
    except (ValueError, pd.errors.ParserError) as e:
        df = _rebuilt(workdir, f"{path} is damaged ({e})")
    if df.empty:
        raise ReportError(f"{path} has no rows yet")
    return df.to_dict("records")


def _rebuilt(workdir: Path, why: str) -> pd.DataFrame:
    from jaxprune import rundir, study  # only on this rare path: they bring JAX

    phases = study.recorded_phases(workdir)
    if not phases:
        raise ReportError(f"{why}, and {workdir} lists no phases to rebuild it from")
    print(f"jaxprune: {why}; rebuilt it from the phases' metric logs", file=sys.stderr)
    try:
        with rundir.locked(workdir):
            study.rebuild_results(workdir, phases)
    except rundir.RunDirError:
        pass  # a study is running there and will rewrite it; use the rebuilt rows without writing
    return pd.DataFrame(study.result_rows(workdir, phases), columns=list(COLUMNS)).astype(COLUMNS)


# ---------------------------------------------------------------- reductions


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def methods(rows) -> list[str]:
    return sorted({r["method"] for r in rows if r["schedule"] != "baseline"})


def baseline_curve(rows) -> list[tuple[int, float]]:
    return sorted((r["epoch"], r["test_acc"]) for r in rows if r["schedule"] == "baseline")


def oneshot_curves(rows, method) -> dict[float, list[tuple[int, float]]]:
    out = defaultdict(list)
    for r in rows:
        if r["schedule"] == "oneshot" and r["method"] == method:
            out[r["target"]].append((r["epoch"], r["test_acc"]))
    return {t: sorted(v) for t, v in sorted(out.items())}


def iterative_targets(rows) -> list[float]:
    """Targets the study asked for: the chains' own, plus (shared chain) the one-shot targets."""
    chains = {r["target"] for r in rows if r["schedule"] == "iterative"}
    asked = {r["target"] for r in rows if r["schedule"] == "oneshot"}
    top = max(chains, default=0)
    return sorted(chains | {t for t in asked if t <= top})


def iterative_chain(rows, method, target) -> dict[int, list[dict]]:
    """Round -> rows of the chain that serves `target` (its own, or a longer chain's prefix)."""
    chains = sorted({r["target"] for r in rows if r["schedule"] == "iterative" and r["method"] == method})
    if not chains:
        return {}
    chosen = target if target in chains else max(chains)
    rounds = defaultdict(list)
    for r in rows:
        if r["schedule"] == "iterative" and r["method"] == method and r["target"] == chosen:
            rounds[r["round"]].append(r)
    out = {}
    for rnd in sorted(rounds):
        out[rnd] = sorted(rounds[rnd], key=lambda r: r["epoch"])
        if rounds[rnd][0]["sparsity"] >= target - 1e-12:
            break
    return out


# ---------------------------------------------------------------- tables


def _write_table(outdir: Path, stem: str, title: str, header: list[str], body: list[list[str]]) -> str:
    with open(outdir / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
    md = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    text = "\n".join(md) + "\n"
    (outdir / f"{stem}.md").write_text(text)
    return text


def tables(rows, outdir: Path) -> list[str]:
    ms = methods(rows)
    out = []
    targets = sorted({r["target"] for r in rows if r["schedule"] == "oneshot"})
    if targets:
        body = []
        for t in targets:
            cells = []
            for m in ms:
                curve = oneshot_curves(rows, m).get(t)
                cells.append(pct(max(a for _, a in curve)) if curve else "")
            body.append([f"{100 * t:g}", *cells])
        out.append(_write_table(outdir, "table1_oneshot", "Table 1: one-shot pruning, max test accuracy (%)",
                                ["sparsity (%)", *[f"{m}" for m in ms]], body))
    for i, t in enumerate(iterative_targets(rows), start=2):
        chains = {m: iterative_chain(rows, m, t) for m in ms}
        n = max((len(c) for c in chains.values()), default=0)
        if not n:
            continue
        body = []
        for rnd in range(1, n + 1):
            sp = next((c[rnd][0]["sparsity"] for c in chains.values() if rnd in c), None)
            cells = [pct(max(r["test_acc"] for r in c[rnd])) if rnd in c else "" for c in chains.values()]
            body.append([str(rnd), f"{100 * sp:.2f}", *cells])
        out.append(_write_table(
            outdir, f"table{i}_iterative_{t:.2f}",
            f"Table {i}: iterative pruning to {100 * t:g}% sparsity, max test accuracy per round (%)",
            ["round", "global sparsity (%)", *ms], body,
        ))
    summary = []
    for t in sorted(set(targets) | set(iterative_targets(rows))):
        cells = []
        for m in ms:
            curve = oneshot_curves(rows, m).get(t)
            chain = iterative_chain(rows, m, t)
            last = chain[max(chain)] if chain else None
            done = last and last[0]["sparsity"] >= t - 1e-12
            cells += [pct(max(a for _, a in curve)) if curve else "", pct(max(r["test_acc"] for r in last)) if done else ""]
        summary.append([f"{100 * t:g}", *cells])
    if summary:
        header = ["sparsity (%)"] + [f"{m} {s}" for m in ms for s in ("one-shot", "iterative")]
        out.append(_write_table(outdir, "table5_summary", "Table 5: one-shot vs iterative, max test accuracy (%)",
                                header, summary))
    return out


# ---------------------------------------------------------------- figures


def _finish(fig, ax_list, title: str, path: Path) -> None:
    for ax in ax_list:
        ax.set_xlabel(ax.get_xlabel() or "epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(rows, outdir: Path) -> list[Path]:
    ms = methods(rows)
    made = []
    base = baseline_curve(rows)
    if base:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([e for e, _ in base], [100 * a for _, a in base], label=f"baseline (max {pct(max(a for _, a in base))}%)")
        path = outdir / "figure1_baseline.png"
        _finish(fig, [ax], "Figure 1: unpruned ResNet18, test accuracy per epoch", path)
        made.append(path)
    if any(oneshot_curves(rows, m) for m in ms):
        fig, axes = plt.subplots(1, len(ms), figsize=(6 * len(ms), 4), squeeze=False)
        for ax, m in zip(axes[0], ms):
            for t, curve in oneshot_curves(rows, m).items():
                ax.plot([e for e, _ in curve], [100 * a for _, a in curve],
                        label=f"sparsity {100 * t:g}% (max {pct(max(a for _, a in curve))}%)")
            ax.set_title(f"{m} pruning")
        path = outdir / "figure2_oneshot.png"
        _finish(fig, axes[0], "Figure 2: one-shot pruning, then retraining", path)
        made.append(path)
    for i, t in enumerate(iterative_targets(rows), start=3):
        chains = {m: iterative_chain(rows, m, t) for m in ms}
        if not any(chains.values()):
            continue
        fig, axes = plt.subplots(1, len(ms), figsize=(6 * len(ms), 4), squeeze=False)
        for ax, (m, chain) in zip(axes[0], chains.items()):
            x, y, bounds, offset = [], [], [], 0
            for rnd, rs in chain.items():
                x += [offset + r["epoch"] for r in rs]
                y += [100 * r["test_acc"] for r in rs]
                offset += max(r["epoch"] for r in rs)
                bounds.append(offset)
            ax.plot(x, y, label=f"{m}, {len(chain)} rounds")
            for j, b in enumerate(bounds[:-1]):
                ax.axvline(b + 0.5, color="grey", lw=0.6, ls="--", label="round boundary" if j == 0 else None)
            ax.set_xlabel("epochs of retraining, all rounds")
            ax.set_title(f"{m} pruning")
        path = outdir / f"figure{i}_iterative_{t:.2f}.png"
        _finish(fig, axes[0], f"Figure {i}: iterative pruning to {100 * t:g}% sparsity, retraining each round", path)
        made.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if base:
        ax.axhline(100 * max(a for _, a in base), color="black", lw=0.8, ls=":", label="baseline")
    for m, style in zip(ms, ("-", "--", "-.", ":")):
        pts = sorted((t, max(a for _, a in c)) for t, c in oneshot_curves(rows, m).items())
        if pts:
            ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], "o" + style, label=f"one-shot, {m}")
        its = iterative_targets(rows)
        chain = iterative_chain(rows, m, max(its)) if its else {}
        pts = [(rs[0]["sparsity"], max(r["test_acc"] for r in rs)) for rs in chain.values()]
        if pts:
            ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], "s" + style, ms=3, label=f"iterative, {m}")
    ax.set_xlabel("global sparsity (%)")
    path = outdir / "summary.png"
    _finish(fig, [ax], "Best test accuracy against sparsity", path)
    made.append(path)
    return made


def write_report(workdir: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Writes every figure and table from WORKDIR/results.csv; returns the report.md path."""
    workdir = Path(workdir)
    rows = read_results(workdir)
    outdir = Path(outdir) if outdir else (workdir if workdir.is_dir() else workdir.parent) / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    made = figures(rows, outdir)
    texts = tables(rows, outdir)
    md = ["# Pruning study report", "", f"From `{workdir}` ({len(rows)} epochs recorded).", ""]
    base = baseline_curve(rows)
    if base:
        md += [f"Baseline: max test accuracy {pct(max(a for _, a in base))}% over {len(base)} epochs.", ""]
    md += [t for text in texts for t in (text, "")]
    md += [f"![{p.stem}]({p.name})" for p in made]
    path = outdir / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
