"""What a study directory records of its phases: the phases its config.json lists
(`recorded_phases`), results.csv's rows (`RESULT_FIELDS`, `result_rows`), and the
phases that diverged (`casualties`).

``results.csv`` is rebuilt from the phases' own metric logs as each group of
phases starts training (after a resume has settled them) and at the end, and
each epoch appends its row in between; so it never holds a row twice or a row
for work that was lost, and its rows are in plan order once the study ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxprune.training import loop, rundir
from jaxprune.study import config as config_lib
from jaxprune.data import sources as data
from jaxprune.models import cost as model_cost, kernels
from jaxprune.study.planning import BASELINE, CHANNEL, Phase

RESULT_FIELDS = (
    "model", "data",  # the network (--model) and the data set's name (--data's kind, e.g. cifar10)
    "seed", "retrain", "distribution",
    "structure",  # what is removed: unstructured (single weights; N:M patterns too), channel; '' for the baseline
    "schedule", "method", "target", "round", "sparsity",
    # ShrinkBench's size and cost (jaxprune.models.cost): all parameters and the non-zero ones,
    # multiply-adds (MACs, not 2x FLOPs) of the conv and dense layers per 32x32 image, dense and
    # left by the masks, and the ratios compression = params / params_nz, speedup = flops / flops_nz
    # (theoretical: masked weights run at dense speed on dense kernels). Empty for epochs logged
    # before release 0.2 counted them.
    "params", "params_nz", "compression", "flops", "flops_nz", "speedup",
    "epoch",
    "test_acc", "val_acc", "train_loss", "train_acc", "seconds",
    "diverged",  # 1 where the epoch's training loss was NaN or infinite
)


def casualties(workdir: Path) -> tuple[list[tuple[Phase, int]], list[Phase]]:
    """The study's diverged phases (with the epoch) and the phases below them, never trained."""
    phases = recorded_phases(workdir)
    bad = diverged_phases(workdir, phases)
    lost = {p.name for p, _ in bad}
    skipped = []
    for p in phases:  # plan order: parents first
        if p.parent in lost and not rundir.read_metrics(Path(workdir) / p.name):
            lost.add(p.name)
            skipped.append(p)
    return bad, skipped


def diverged_phases(workdir: Path, phases: list[Phase]) -> list[tuple[Phase, int]]:
    """(phase, epoch) for each phase whose metrics end on a non-finite training loss."""
    out = []
    for p in phases:
        rows = rundir.read_metrics(Path(workdir) / p.name)
        if rows and loop.diverged(rows[-1]):
            out.append((p, rows[-1]["epoch"]))
    return out

def _result_row(phase: Phase, m: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """One results.csv row from a phase, one of its metrics rows and the study's `labels`."""
    base = phase.schedule == BASELINE
    return {
        **labels, "seed": phase.seed, "retrain": "" if base else phase.retrain,
        "distribution": "" if base else phase.distribution,
        "structure": "" if base else ("channel" if phase.distribution == CHANNEL else "unstructured"),
        "schedule": phase.schedule, "method": phase.method, "target": phase.target, "round": phase.round,
        # Per epoch from the masks (it moves in gradual pruning); older logs: the phase's.
        "sparsity": round(phase.sparsity if m.get("sparsity") is None else m["sparsity"], 6),
        "params_nz": m.get("params_nz"), "flops_nz": m.get("flops_nz"),
        "compression": _ratio(labels["params"], m.get("params_nz")),
        "speedup": _ratio(labels["flops"], m.get("flops_nz")),
        "epoch": m["epoch"],
        "test_acc": m["test_acc"], "val_acc": m.get("val_acc"), "train_loss": m["train_loss"],
        "train_acc": m["train_acc"], "seconds": round(m["seconds"], 3),
        "diverged": int(loop.diverged(m)),
    }


def _ratio(dense: int, nonzero: int | None) -> float | None:
    return None if nonzero is None else round(dense / max(nonzero, 1), 4)


def labels(workdir: Path) -> dict[str, Any]:
    """What every row of the study in `workdir` carries (from its config.json): the model and
    data set names, and the dense network's parameters and multiply-adds per image."""
    record = rundir.read_record(Path(workdir)) or {}
    train_cfg = config_lib.from_dict(config_lib.TrainConfig, (record.get("config") or {}).get("train") or {})
    dense = model_cost.arch_cost(kernels.Arch.of(train_cfg), tuple(train_cfg.exclude))
    return {"model": train_cfg.model, "data": data.data_name(train_cfg.data), "params": dense.params,
            "flops": dense.flops}


def result_rows(workdir: Path, phases: list[Phase]) -> list[dict[str, Any]]:
    """results.csv's rows, from the phases' own metric logs, in plan order."""
    tags = labels(workdir)
    return [_result_row(p, m, tags) for p in phases for m in rundir.read_metrics(workdir / p.name)]


def rebuild_results(workdir: Path, phases: list[Phase]) -> int:
    """Writes WORKDIR/results.csv from the phases' metrics, in plan order; returns the row count."""
    rows = result_rows(workdir, phases)
    rundir.write_atomic(workdir / "results.csv", rundir.csv_text(RESULT_FIELDS, rows))
    return len(rows)


def append_result(workdir: Path, phase: Phase, m: dict[str, Any], tags: dict[str, str]) -> None:
    """Appends one epoch's row, carrying the study's `labels`, to WORKDIR/results.csv (O(1), unlike a rebuild)."""
    rundir.append_csv_row(workdir / "results.csv", RESULT_FIELDS, _result_row(phase, m, tags))


def recorded_phases(workdir: Path) -> list[Phase]:
    """Every phase a study directory has planned, from its config.json (empty if none)."""
    record = rundir.read_record(Path(workdir)) or {}
    return [Phase(**p) for p in record.get("phases", [])]
