"""The report's views of the masks themselves, read from the phases' checkpoints (bit-packed,
without params; see `jaxprune.phase_masks`):

- the per-layer profile: the sparsity each prunable layer reached in each schedule's result at
  each target, per method, distribution and retraining mode (figure and CSV; mean over seeds in
  the figure, every seed in the CSV);
- the overlap: Jaccard overlap of kept weights between the results at the same target. Between
  two arms (schedules, methods, distributions, modes) it is the mean over seeds of the two arms
  of one seed; on the diagonal, the mean over pairs of seeds of one arm (how stable a method's
  choice is across seeds; blank with one seed). Heat map and CSV, every pair in the CSV.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from jaxprune.study import modes
from jaxprune.report import phase_masks
from jaxprune.runtime.faults import fault_point
from jaxprune.report.results import SCHEDULE_NAMES


def network_order(names) -> list[str]:
    """Layer names in the order a network meets them, as far as names tell: a stem first, a
    classifier (head, fc, classifier) last, the rest in natural order (layer2 before layer10).
    Pytrees sort their keys alphabetically, which puts head/kernel first."""
    import re

    def key(name: str):
        first = name.split("/")[0].lower()
        place = 0 if first.startswith("stem") else 2 if first.startswith(("head", "fc", "classifier", "output")) else 1
        return place, [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name)]
    return sorted(names, key=key)


def _label(row, varying: list[str]) -> str:
    text = f"{SCHEDULE_NAMES.get(row['schedule'], row['schedule'])} {row['method']}"
    return text + "".join(f", {row[c]}" for c in varying)


def mask_sections(workdir: Path, final: pd.DataFrame, outdir: Path, numbers: tuple[int, int],
                  suffix: str = "") -> tuple[list[str], list[Path]]:
    """Writes the per-layer profile and the overlap (CSV, markdown, figure) for the study in `workdir`,
    of the results in `final` (report.final_results with phase_target); returns (markdown texts,
    figure paths), both empty when no phase's masks can be read."""
    # Each result's phase keys, and ``for_target``: the target it is the result for.
    if {*phase_masks.KEYS, "phase_target"} - set(final.columns):
        return [], []  # not this module's results frame: nothing to look up
    wanted = final.rename(columns={"target": "for_target", "phase_target": "target"})
    wanted = wanted.astype({c: str for c in ("retrain", "distribution", "schedule", "method")})
    if wanted.empty or not (Path(workdir) / "config.json").is_file():
        return [], []  # no pruned result, or a results.csv away from its study
    found, missing = phase_masks.study_masks(workdir, wanted)
    note = (f"Masks of {len(missing)} of {len(missing) + len(found)} results could not be read and are left out of "
            f"Tables 10-11 (first: {missing[0]}).\n") if missing else ""
    if not found:
        return [note], []
    keyed = wanted.assign(key=[phase_masks._normal(r) for r in wanted[phase_masks.KEYS].itertuples(index=False)])
    keyed = keyed[keyed["key"].isin(list(found))].drop_duplicates("key")
    varying = [c for c in ("distribution", "retrain") if keyed[c].nunique() > 1]
    keyed = keyed.assign(arm=[_label(r, varying) for _, r in keyed.iterrows()])
    texts, figs = [note] if note else [], []
    t, f = _profile(found, keyed, outdir, numbers[0], suffix)
    texts.append(t)
    figs.append(f)
    t, f = _overlap(found, keyed, outdir, numbers[1], suffix)
    if t:
        texts.append(t)
        figs.append(f)
    return texts, figs


def _profile(found, keyed: pd.DataFrame, outdir: Path, number: int, suffix: str) -> tuple[str, Path]:
    prof = phase_masks.layer_profile(found)
    prof["key"] = [phase_masks._normal(r) for r in prof[phase_masks.KEYS].itertuples(index=False)]
    prof = prof.merge(keyed[["key", "for_target", "arm"]], on="key").drop(columns="key")
    layers = network_order(prof["layer"].unique())
    prof["position"] = prof["layer"].map({name: i for i, name in enumerate(layers)})
    prof.sort_values(["for_target", "arm", "seed", "position"]).to_csv(
        outdir / f"table{number}_layer_sparsity.csv", index=False, float_format="%.6f")
    mean = prof.groupby(["for_target", "arm", "position", "layer"], sort=True)["sparsity"].mean().reset_index()
    arms = _arms(keyed)
    mean = mean.assign(order=mean["arm"].map({a: i for i, a in enumerate(arms)})).sort_values(["order", "position"])
    targets = sorted(mean["for_target"].unique())
    colors = {a: f"C{i % 10}" for i, a in enumerate(arms)}  # one colour per arm in every panel
    fig, axes = plt.subplots(len(targets), 1, figsize=(max(8, 0.35 * len(layers)), 2.8 * len(targets) + 1.5),
                             squeeze=False, sharex=True)
    for ax, t in zip(axes[:, 0], targets):
        for arm, line in mean[mean["for_target"] == t].groupby("order", sort=True):
            arm = line["arm"].iloc[0]
            ax.plot(line["position"], 100 * line["sparsity"], marker="o", ms=3, label=arm, color=colors[arm])
        ax.axhline(100 * t, color="grey", lw=0.6, ls=":", label="target")
        ax.set_title(f"target {100 * t:g}%")
        ax.set_ylabel("layer sparsity (%)")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Sparsity each layer reached, mean over seeds{suffix}")
    path = outdir / "layer_sparsity.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fault_point("report-file")
    # Markdown: the emptiest and the fullest layer of each result (the whole profile is in the CSV).
    lines = [f"**Table {number}: per-layer sparsity (%), the most and least pruned layer of each result; "
             f"every layer in table{number}_layer_sparsity.csv and the figure**", "",
             "| target (%) | result | most pruned | least pruned | MACs kept (%) |", "|---|---|---|---|---|"]
    # Of the prunable layers' multiply-adds per image, the share their masks leave (mean over seeds).
    macs = prof.groupby(["for_target", "arm"])[["flops", "flops_nz"]].sum()
    for (t, arm), g in mean.groupby(["for_target", "arm"], sort=False):
        hi, lo = g.loc[g["sparsity"].idxmax()], g.loc[g["sparsity"].idxmin()]
        kept = macs.loc[(t, arm)]
        lines.append(f"| {100 * t:g} | {arm} | {hi['layer']} {100 * hi['sparsity']:.2f} | "
                     f"{lo['layer']} {100 * lo['sparsity']:.2f} | {100 * kept['flops_nz'] / kept['flops']:.2f} |")
    text = "\n".join(lines) + "\n"
    (outdir / f"table{number}_layer_sparsity.md").write_text(text)
    return text, path


def _overlap(found, keyed: pd.DataFrame, outdir: Path, number: int, suffix: str) -> tuple[str, Path | None]:
    groups = dict(zip(keyed["key"], keyed["for_target"]))
    pairs = phase_masks.overlaps(found, groups)
    if pairs.empty:
        return "", None
    info = keyed.set_index("key")[["arm", "seed"]]
    pairs = pairs.assign(arm_a=pairs["a"].map(info["arm"]), seed_a=pairs["a"].map(info["seed"]),
                         arm_b=pairs["b"].map(info["arm"]), seed_b=pairs["b"].map(info["seed"]))
    pairs = pairs.rename(columns={"group": "target"})
    pairs[["target", "arm_a", "seed_a", "arm_b", "seed_b", "jaccard"]].to_csv(
        outdir / f"table{number}_overlap.csv", index=False, float_format="%.6f")
    same_arm = pairs["arm_a"] == pairs["arm_b"]
    usable = pairs[(same_arm & (pairs["seed_a"] != pairs["seed_b"])) | (~same_arm & (pairs["seed_a"] == pairs["seed_b"]))]
    # Symmetric: each pair counts for (a, b) and (b, a) (on the diagonal twice, which leaves its mean).
    both = pd.concat([usable, usable.rename(columns={"arm_a": "arm_b", "arm_b": "arm_a"})], ignore_index=True)
    matrix = both.groupby(["target", "arm_a", "arm_b"], sort=False)["jaccard"].mean().reset_index()
    targets = sorted(keyed["for_target"].unique())
    arms = _arms(keyed)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.6 * len(targets), 5.2), squeeze=False, layout="constrained")
    lines = [f"**Table {number}: overlap of kept weights (Jaccard) between results at the same target; "
             "the diagonal compares one arm's seeds**", ""]
    for ax, t in zip(axes[0], targets):
        m = matrix[matrix["target"] == t].pivot(index="arm_a", columns="arm_b", values="jaccard")
        present = [a for a in arms if a in set(keyed.loc[keyed["for_target"] == t, "arm"])]
        m = m.reindex(index=present, columns=present)
        im = ax.imshow(m.to_numpy(float), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(present)), present, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(present)), present, fontsize=7)
        for i in range(len(present)):
            for j in range(len(present)):
                v = m.iloc[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if v > 0.6 else "white")
        ax.set_title(f"target {100 * t:g}%")
        lines += [f"Target {100 * t:g}%:", "", "| | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
        lines += [f"| {a} | " + " | ".join("" if not np.isfinite(m.loc[a, b]) else f"{m.loc[a, b]:.3f}" for b in present) + " |"
                  for a in present]
        lines.append("")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Jaccard overlap of kept weights")
    fig.suptitle(f"Mask overlap between results at the same target{suffix}; diagonal: across seeds")
    path = outdir / "mask_overlap.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fault_point("report-file")
    text = "\n".join(lines) + "\n"
    (outdir / f"table{number}_overlap.md").write_text(text)
    return text, path


def _arms(keyed: pd.DataFrame) -> list[str]:
    """Arm labels in the report's order: schedule as in modes.SCHEDULES, then method, distribution, mode."""
    rank = {name: i for i, name in enumerate(modes.SCHEDULES)}
    ordered = keyed.assign(rank=keyed["schedule"].map(rank)).sort_values(["rank", "method", "distribution", "retrain"])
    return list(dict.fromkeys(ordered["arm"]))
