"""The study's driver: it runs, resumes or grows a study, walking its plan's phases.

The plan (`jaxprune.study.planning`) is the list of every training phase the
study needs, computed before any work. The driver runs the phases in order:

    parent's final state -> prune_global -> loop.train_runs -> checkpoints

Every phase lives in its own directory, named by what it is
(``WORKDIR/iterative-random-0.90/round-07/``, with the exact target:
``0.875`` stays ``0.875``), which records its identity: its training config
and where it comes from (schedule, method, target, round, count, parent).
Every step is idempotent: a finished phase is skipped, a partial one
continues from its last checkpoint, a missing one recomputes its
(deterministic) masks from its parent.

A study grows. Its own identity is the shared recipe (the training config,
baseline and round epochs, the iterative step, a given baseline); methods,
schedules and targets may be added by later invocations, which reuse the
baseline and every finished phase. ``config.json`` lists every phase ever
planned, and ``results.csv`` covers them all.

results.csv (`jaxprune.study.results`) is kept current as phases train.

The names of the plan and of the study's records are served here too (`driver.plan`,
`driver.Phase`, `driver.recorded_phases`, ...), as they were before they moved out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax

from jaxprune.training import checkpoint, loop, rundir
from jaxprune import masks as masks_lib
from jaxprune.study import config as config_lib
from jaxprune.data import sources as data
from jaxprune.runtime import hosts
from jaxprune.models import kernels
from jaxprune.runtime.faults import fault_point
from jaxprune.study.modes import StudyError
from jaxprune.study.planning import (  # noqa: F401 (served here too: driver.plan, driver.Phase, ...)
    BASELINE, BASELINE_PHASE, Phase, derived_seed, disk_estimate, model_shapes, phase_config, plan,
    prunable_total, pruning_key, target_name,
)
from jaxprune.study.phases import (  # noqa: F401 (served here too)
    Final, _restore_final, load_final, next_group, phase_spec,
)
from jaxprune.study.results import (  # noqa: F401 (served here too)
    RESULT_FIELDS, append_result, casualties, diverged_phases, labels, rebuild_results, recorded_phases,
    result_rows,
)


def phase_status(workdir: Path, phase_cfg: config_lib.TrainConfig) -> str | None:
    """"finished" (its final epoch readable), "diverged" (stopped at a non-finite
    loss, see TrainConfig.on_divergence), or None (still to train)."""
    folder = workdir / "checkpoints"
    if not (workdir / "metrics.jsonl").exists() or not folder.is_dir():
        return None
    with checkpoint.RunCheckpoints(folder, read_only=True) as ck:
        latest = ck.latest()
        history = ck.meta(latest).get("history") if latest is not None else None
    if loop.stopped_by_divergence(phase_cfg, history or []):
        status = "diverged"  # also at its last epoch: its weights are no parent's
    elif latest == phase_cfg.epochs:
        status = "finished"
    else:
        return None
    # A kill between the last checkpoint's commit and its row leaves the logs one
    # row short; the checkpoint's history is the record.
    if history and rundir.read_metrics(workdir) != history:
        rundir.write_metric_logs(workdir, history)
    return status


def load_baseline(path: str, cfg: config_lib.StudyConfig) -> Final:
    """A user-given baseline checkpoint, restored onto this process's devices."""
    folder, epoch = checkpoint.locate(path)
    meta = checkpoint.read_meta(folder, epoch)
    saved = config_lib.from_dict(config_lib.TrainConfig, meta.get("config", {}))
    given_epoch = Path(path).name.isdigit() and (Path(path) / checkpoint.META).is_dir()
    if epoch < saved.epochs and not given_epoch:
        # Pruning it now and again once it is finished would mix two baselines in one study.
        raise StudyError(
            f"baseline {path} is unfinished (epoch {epoch} of {saved.epochs}): finish it by rerunning its "
            f"train command, or give one epoch's folder ({folder / str(epoch)}) to prune that epoch"
        )
    theirs, ours = kernels.Arch.of(saved), kernels.Arch.of(cfg.train)
    if theirs != ours:
        raise StudyError(
            f"baseline {path} is a width-{theirs.width} {theirs.model} with {theirs.classes} classes but the study "
            f"builds a width-{ours.width} {ours.model} with {ours.classes}: its shapes don't match "
            f"(pass --model {theirs.model} --width {theirs.width} and data with {theirs.classes} classes)"
        )
    # Whatever devices wrote it, it restores onto the ones this study uses.
    here = dataclasses.replace(saved, devices=cfg.train.devices, dtype=cfg.train.dtype)
    try:
        return _restore_final(folder, epoch, here)
    except checkpoint.CheckpointError as e:
        raise StudyError(f"baseline {path} does not match the model: {e}") from e


def _register(workdir: Path, cfg: config_lib.StudyConfig, phases: list[Phase]) -> list[Phase]:
    """Adds this invocation's phases to the study's record; returns them all, in order."""
    known = recorded_phases(workdir)
    names = {p.name for p in known}
    every = known + [p for p in phases if p.name not in names]
    record = rundir.read_record(workdir)
    record.update(config=config_lib.to_dict(cfg), phases=[dataclasses.asdict(p) for p in every])
    rundir.write_atomic(workdir / rundir.CONFIG, json.dumps(record, indent=2))
    return every


def run_study(cfg: config_lib.StudyConfig, workdir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Runs (or resumes, or grows) every phase of the study in `workdir`; returns results.csv's path.

    Phases run in plan order; with ``parallel_runs`` N > 1, up to N phases
    whose parents are finished and whose epochs agree train together, vmapped
    over a run axis of N (see `loop.train_runs`), so a phase's numbers do not
    depend on how many partners it had. A group's results are reproducible,
    also across a crash.
    """
    cfg.validate()
    workdir = Path(workdir)
    dataset = data.load(cfg.train.data).prepared(cfg.train)
    baseline = load_baseline(cfg.baseline, cfg) if cfg.baseline else None
    total, n_params = model_shapes(cfg.train)
    pruned = total - round(total * (1 - masks_lib.sparsity(baseline.masks))) if baseline else 0
    phases = plan(cfg, total, pruned)
    with rundir.locked(workdir):
        rundir.claim(workdir, cfg, record_extra={"phases": []})  # refuses a different recipe
        # Process 0 records the phases; the others read what it wrote.
        every = _register(workdir, cfg, phases) if hosts.primary() else []
        hosts.sync("jaxprune-study-registered")
        if not hosts.primary():
            every = recorded_phases(workdir)
        if baseline is not None:
            _copy_history(cfg.baseline, workdir / BASELINE)
        recorded = every if baseline is None or every[0].name == BASELINE else [BASELINE_PHASE, *every]
        disk = _size(disk_estimate(every, total, n_params))
        _run_phases(cfg, workdir, phases, baseline, dataset, recorded, log, disk)
        rebuild_results(workdir, recorded)
    return workdir / "results.csv"


def _size(n_bytes: float) -> str:
    """'about 4.8 GB', 'about 12 MB', or 'under 1 MB'."""
    if n_bytes < 1e6:
        return "under 1 MB"
    return f"about {n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"about {n_bytes / 1e6:.0f} MB"


def _run_phases(cfg, workdir: Path, phases: list[Phase], baseline: Final | None, dataset, recorded, log,
                disk: str) -> None:
    finals: dict[str, Final] = {}
    if baseline is not None:
        finals[BASELINE] = baseline
    by_name = {p.name: p for p in phases}

    def parent_of(phase: Phase) -> Final:
        if phase.parent not in finals:
            parent = by_name[phase.parent]
            try:
                finals[phase.parent] = load_final(workdir / parent.name, phase_config(cfg, parent))
            except checkpoint.CheckpointError as e:
                raise _DamagedFinal(parent, phase_config(cfg, parent).epochs) from e
        return finals[phase.parent]

    def spec(phase: Phase) -> loop.RunSpec:
        return phase_spec(cfg, workdir, phase, parent_of(phase) if phase.parent is not None else None)

    status = {p.name: phase_status(workdir / p.name, phase_config(cfg, p)) for p in phases}
    done = {name for name, st in status.items() if st}
    # Diverged phases, each mapped to itself, and what descends from them, to that ancestor.
    failed = {name: name for name, st in status.items() if st == "diverged"}
    if baseline is not None:
        done.add(BASELINE)
    pending = [p for p in phases if p.name not in done]
    n_done = len(done) - (baseline is not None)
    epochs = [phase_config(cfg, p).epochs for p in phases]
    to_train = sum(e for p, e in zip(phases, epochs) if p.name not in done)
    log(
        f"study: {len(phases)} phase{'s' * (len(phases) != 1)} ({n_done} finished), {to_train} of "
        f"{sum(epochs)} epochs to train, "
        f"in {workdir}; {disk} on disk when the study is done"
    )
    if to_train and cfg.train.width >= 16 and jax.default_backend() == "cpu":
        log(f"study: training width {cfg.train.width} on a CPU, many times slower than on a GPU; each phase's "
            "line gives the time left at the measured pace (--preset smoke is a study sized for a CPU)")
    if cfg.executor == "ray":
        from jaxprune.study import ray_executor

        ray_executor.run_phases(cfg, workdir, phases, done, failed, log)
        return
    pace = [0, 0.0]  # epochs trained by this invocation, and their seconds: for the time left
    writer = _results_writer(workdir, recorded)

    def on_epoch(spec: loop.RunSpec, row: dict[str, Any]) -> None:
        writer(spec, row)
        pace[0] += 1
        pace[1] += row["seconds"]

    def time_left() -> str:
        left = sum(e for p, e in zip(phases, epochs) if p in pending)
        if not left or not pace[0]:
            return ""
        return f"; {left} epoch{'s' * (left != 1)} left, about {duration(left * pace[1] / pace[0])}"

    while pending:
        for p in [p for p in pending if p.parent in failed]:  # plan order: parents come first
            pending.remove(p)
            failed[p.name] = failed[p.parent]
            log(f"[not trained] {p.name}: it descends from {failed[p.name]}, which diverged")
        if not pending:
            break
        group = next_group(cfg, pending, done)
        try:
            specs = [spec(p) for p in group]
        except _DamagedFinal as d:
            # A finished phase that others need cannot be restored: set its final step
            # aside and train the phase again (its run resumes from what is left).
            with checkpoint.RunCheckpoints(workdir / d.phase.name / "checkpoints") as ck:
                ck.set_aside(d.epoch, why="cannot be restored (its arrays are damaged)")
            log(f"[again] {d.phase.name}: its final epoch is damaged; training it again for the phases that need it")
            done.discard(d.phase.name)
            n_done -= 1
            pending = [p for p in phases if p in pending or p == d.phase]
            continue
        results = loop.train_runs(specs, dataset=dataset, run_axis=cfg.parallel_runs,
                                  on_epoch=on_epoch)
        for phase, result in zip(group, results):
            done.add(phase.name)
            pending.remove(phase)
            n_done += 1
            if loop.stopped_by_divergence(phase_config(cfg, phase), result.history):
                failed[phase.name] = phase.name
                log(f"[{n_done}/{len(phases)}] {phase.name}: diverged at epoch {result.history[-1]['epoch']}")
                continue
            last_lr = result.history[-1]["lr"]
            finals[phase.name] = Final(result.state.params, result.state.batch_stats, result.state.masks, last_lr)
            log(
                f"[{n_done}/{len(phases)}] {phase.name}: sparsity {100 * phase.sparsity:.2f}%, "
                f"best test accuracy {100 * result.best_test_acc:.2f}%{time_left()}"
            )
        # Keep only the weights that pending phases will prune.
        needed = {p.parent for p in pending}
        for name in [n for n in finals if n not in needed]:
            del finals[name]


class _DamagedFinal(Exception):
    """A finished phase's final step, needed by a later phase, cannot be restored."""

    def __init__(self, phase: Phase, epoch: int):
        super().__init__(f"{phase.name}: final epoch {epoch} cannot be restored")
        self.phase, self.epoch = phase, epoch


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '17 min', '5.2 h', '3.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _results_writer(workdir: Path, recorded: list[Phase]):
    """An on_epoch callback for one train_runs call that keeps results.csv current.

    Its first call rebuilds the file: by then every run of the group has
    settled its metrics (a resume drops rows whose checkpoint was lost). Later
    calls append one row each, rather than rereading every phase every epoch.
    """
    phase_of = {workdir / p.name: p for p in recorded}
    tags = labels(workdir)  # read once, not from config.json every epoch
    rebuilt = False

    def on_epoch(spec: loop.RunSpec, row: dict[str, Any]) -> None:
        nonlocal rebuilt
        if rebuilt:
            append_result(workdir, phase_of[Path(spec.workdir)], row, tags)
        else:
            rebuild_results(workdir, recorded)
            rebuilt = True
        fault_point("results-row")

    return on_epoch


def _copy_history(path: str, dest: Path) -> None:
    folder, epoch = checkpoint.locate(path)
    history = checkpoint.read_meta(folder, epoch).get("history", [])
    dest.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(dest / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
