"""The pruning study: schedules as pure plans, and the driver that walks a plan.

A plan is the list of every training phase the study needs, computed before
any work from exact pruning counts: the baseline, then per (schedule, method,
target) chain its rounds, each pruning an exact number of weights from its
parent's final weights and retraining. The driver runs the phases in order:

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

``results.csv`` is rebuilt from the phases' own metric logs as each group of
phases starts training (after a resume has settled them) and at the end, and
each epoch appends its row in between; so it never holds a row twice or a row
for work that was lost, and its rows are in plan order once the study ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import functools
from pathlib import Path
from typing import Any, Callable

import jax

from jaxprune.training import checkpoint, loop, rundir, train
from jaxprune import masks as masks_lib
from jaxprune.study import config as config_lib
from jaxprune.data import sources as data
from jaxprune.runtime import hosts
from jaxprune.models import kernels
from jaxprune.runtime.faults import fault_point
from jaxprune.models import init_variables
from jaxprune.study.modes import RETRAINING, SCHEDULES, Planning, Sources, Start, StudyError, chain_modes_of, is_pattern

RESULT_FIELDS = (
    "model", "data",  # the network (--model) and the data set's name (--data's kind, e.g. cifar10)
    "seed", "retrain", "distribution", "schedule", "method", "target", "round", "sparsity", "epoch",
    "test_acc", "val_acc", "train_loss", "train_acc", "seconds",
    "diverged",  # 1 where the epoch's training loss was NaN or infinite
)
BASELINE = "baseline"


def target_name(target: float) -> str:
    """A target as it appears in names: two decimals when exact (0.90), else every digit (0.875)."""
    short = f"{target:.2f}"
    return short if float(short) == target else repr(float(target))


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase of the study.

    schedule: "baseline", or a name in modes.SCHEDULES (oneshot, gradual, iterative).
    target: the chain's target sparsity (0 for the baseline).
    round: 1-based pruning round within the chain (0 for the baseline).
    count: the exact number of weights pruned from the parent's remaining
      weights before this phase trains (0 for the baseline).
    sparsity: the global sparsity during this phase (exact, from the counts).
    parent: the directory name of the phase whose final weights are pruned.
    seed: the replicate's seed (its baseline's; its phases' seeds derive from it).
    retrain: how the pruned network trains again (a name in modes.RETRAINING); a
      control (reinit, shuffle) takes the masks its `retrain` twin prunes.
    distribution: how the count is split across layers (global, uniform, erk), or an
      N:M pattern ("2:4", see --pattern; named "2of4" in folder names).
    rewind_epoch: weight-rewind: the baseline epoch survivors are reset to.
    home: the replicate's folder: "" for --seed's, "seed-N/" for the others.
    """

    schedule: str
    method: str
    target: float
    round: int
    count: int
    sparsity: float
    parent: str | None
    seed: int = 0
    retrain: str = "retrain"
    distribution: str = "global"
    rewind_epoch: int = 0
    home: str = ""

    def _chain(self, retrain: str) -> str:
        if self.schedule == BASELINE:
            return BASELINE
        dist = "" if self.distribution == "global" else f"-{self.distribution.replace(':', 'of')}"
        mode = RETRAINING[retrain].suffix(self.rewind_epoch)
        return f"{self.schedule}-{self.method}{dist}-{target_name(self.target)}{mode}"

    @property
    def chain(self) -> str:
        """The chain's name: schedule, method, [distribution,] exact target[, retraining mode]."""
        return self._chain(self.retrain)

    @property
    def mask_chain(self) -> str:
        """The chain whose pruning draws this phase's masks: its own, or a control's retrain twin."""
        return self._chain("retrain" if RETRAINING[self.retrain].control else self.retrain)

    @property
    def name(self) -> str:
        if self.schedule == BASELINE:
            return self.home + BASELINE
        return f"{self.home}{self.chain}/round-{self.round:02d}"

    def identity(self) -> dict[str, Any]:
        """What a phase's directory must match on a rerun (beside its training config)."""
        return {"phase": {k: v for k, v in dataclasses.asdict(self).items() if k != "sparsity"}}


BASELINE_PHASE = Phase(BASELINE, "", 0.0, 0, 0, 0.0, None)


def model_shapes(cfg: config_lib.TrainConfig) -> tuple[int, int]:
    """(prunable weights, all parameters) of the model `cfg` builds (shapes only, no compute)."""
    return kernels.counts(kernels.Arch.of(cfg), tuple(cfg.exclude))[1:]


def prunable_total(cfg: config_lib.TrainConfig) -> int:
    """Prunable weights of the model `cfg` builds (shapes only, no compute)."""
    return model_shapes(cfg)[0]


def plan(cfg: config_lib.StudyConfig, total: int, pruned: int = 0) -> list[Phase]:
    """Every phase of the study, in the order the driver runs them.

    Per replicate seed: its baseline (unless one is given, then shared), then
    for each retraining mode that forms chains (retrain, finetune, lr-rewind,
    weight-rewind) and each method, the one-shot phases and the iterative
    chains; then the controls, one per phase of the retrain chains (which
    they imply), pruned from the same parent with the same count and key.

    pruned: weights already pruned in a given baseline: its masks are kept,
    and every target counts from its sparsity.
    """
    for t in cfg.targets:
        if round(t * total) in (0, total):
            raise StudyError(
                f"target {t:g} prunes {'none' if round(t * total) == 0 else 'all'} of the {total:,} prunable "
                f"weights (round({t:g} x {total:,}) = {round(t * total):,}); give a target that leaves some of each"
            )
        if round(t * total) <= pruned:
            raise StudyError(
                f"target {t:g} is not above the baseline's sparsity {100 * pruned / total:.2f}% "
                "(--baseline is already pruned); give targets above it"
            )
    controls = [m for m in cfg.retrain if RETRAINING[m].control]
    modes = chain_modes_of(cfg.retrain)
    phases = []
    for seed in cfg.replicate_seeds:
        home = "" if seed == cfg.train.seed else f"seed-{seed}/"
        root = BASELINE if cfg.baseline else home + BASELINE  # a given baseline serves every replicate
        if not cfg.baseline:
            phases.append(dataclasses.replace(BASELINE_PHASE, seed=seed, home=home))
        twins = []
        for mode in modes:
            kw = dict(seed=seed, distribution=cfg.distribution, home=home, retrain=mode,
                      rewind_epoch=cfg.rewind_epoch if RETRAINING[mode].uses_rewind_epoch else 0)
            for method in cfg.methods:
                new = functools.partial(_new_phase, method=method, kw=kw)
                for schedule in SCHEDULES.values():  # the table's order, whatever the order asked
                    if schedule.name in cfg.schedules and (schedule.modes is None or mode in schedule.modes):
                        phases += schedule.plan(Planning(cfg, total, pruned, root, new))
                if cfg.pattern:
                    phases += _pattern_phases(cfg, total, pruned, root, new)
            if mode == "retrain":
                # A control of an N:M phase is not planned: shuffling within a layer breaks the pattern.
                twins = [p for p in phases if p.seed == seed and p.retrain == "retrain" and p.round
                         and not is_pattern(p.distribution)]
        for control in controls:
            phases += [dataclasses.replace(p, retrain=control) for p in twins]
    # --pattern's unstructured twin is the one-shot phase at its target when --targets has it.
    return list({p.name: p for p in phases}.values())


def _pattern_phases(cfg: config_lib.StudyConfig, total: int, pruned: int, root: str, new) -> list[Phase]:
    """--pattern N:M's two one-shot phases for one method: unstructured pruning (the study's
    distribution) to the pattern's target (M - N) / M, then the pattern, whose exact count
    (kernels.pattern_count) is a little lower where kernels cannot hold it and stay dense."""
    if pruned:
        raise StudyError("--pattern needs a dense baseline: an N:M pattern counts from every weight of a kernel, "
                         "and --baseline is already pruned")
    n, m = masks_lib.nm.parse(cfg.pattern)
    t = (m - n) / m
    k = kernels.pattern_count(kernels.Arch.of(cfg.train), tuple(cfg.train.exclude), cfg.pattern)
    if k == 0:
        raise StudyError(f"--pattern {cfg.pattern}: no prunable kernel of {cfg.train.model} has an input axis "
                         f"that is a multiple of {m}")
    unstructured = new("oneshot", t, 1, round(t * total), round(t * total) / total, root)
    return [unstructured, dataclasses.replace(unstructured, distribution=cfg.pattern, count=k, sparsity=k / total)]


def _new_phase(schedule, target, round, count, sparsity, parent, *, method, kw) -> Phase:
    return Phase(schedule, method, target, round, count, sparsity, parent, **kw)


def derived_seed(base: int, *tags: Any) -> int:
    """A 31-bit seed from the study's seed and a phase's identity (stable across runs)."""
    digest = hashlib.sha256(json.dumps([base, *tags]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def phase_config(cfg: config_lib.StudyConfig, phase: Phase) -> config_lib.TrainConfig:
    """The training config of a phase. A finetune phase's constant lr is its
    parent's last one, set when the parent is known (see `_run_phases`)."""
    if phase.schedule == BASELINE:
        return cfg.phase(cfg.baseline_epochs, phase.seed)
    seed = derived_seed(phase.seed, phase.chain, phase.round)
    changes = {
        **SCHEDULES[phase.schedule].config(cfg, phase, prunable_total(cfg.train)),
        **RETRAINING[phase.retrain].config(cfg),
    }
    return cfg.phase(cfg.round_epochs, seed, **changes)


def pruning_key(cfg: config_lib.StudyConfig, phase: Phase) -> jax.Array:
    # Separate chains are independent replicates (as in the write-up), so each
    # chain draws its own random masks; a control draws its retrain twin's.
    return jax.random.key(derived_seed(phase.seed, "prune", phase.mask_chain, phase.round))


def disk_estimate(phases: list[Phase], total: int, n_params: int) -> int:
    """Bytes a finished study keeps at most: per phase, its final and best epochs' model.

    Float32 values of the kept weights and of the non-prunable parameters,
    plus, for a pruned model, half a byte per prunable weight for its masks and
    the positions of its zeros, which Orbax's compression leaves. Fitted to
    benchmarks/disk_usage.py, which measures real checkpoints (seed study at
    full width: 4.62 GB measured, this gives a little more).
    """
    per_phase = [
        4 * (n_params - total + round(total * (1 - p.sparsity))) + (total / 2 if p.sparsity else 0)
        for p in phases
    ]
    return int(2 * sum(per_phase))


# ---------------------------------------------------------------- the driver


@dataclasses.dataclass
class Final:
    """A finished phase's weights: what its children prune and retrain."""

    params: Any
    batch_stats: Any
    masks: Any
    last_lr: float | None = None  # the lr of its last epoch (a finetune child keeps it)


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


def _restore_final(folder: Path, epoch: int, cfg: config_lib.TrainConfig) -> Final:
    model, meta = checkpoint.restore_model(folder, epoch, checkpoint.abstract_model(train.abstract_state(cfg)))
    return Final(model["params"], model["batch_stats"], model["masks"], meta.get("metrics", {}).get("lr"))


def load_final(workdir: Path, phase_cfg: config_lib.TrainConfig) -> Final:
    return _restore_final(workdir / "checkpoints", phase_cfg.epochs, phase_cfg)


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


def _result_row(phase: Phase, m: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """One results.csv row from a phase, one of its metrics rows and the study's `labels`."""
    base = phase.schedule == BASELINE
    return {
        **labels, "seed": phase.seed, "retrain": "" if base else phase.retrain,
        "distribution": "" if base else phase.distribution,
        "schedule": phase.schedule, "method": phase.method, "target": phase.target, "round": phase.round,
        # Per epoch from the masks (it moves in gradual pruning); older logs: the phase's.
        "sparsity": round(phase.sparsity if m.get("sparsity") is None else m["sparsity"], 6), "epoch": m["epoch"],
        "test_acc": m["test_acc"], "val_acc": m.get("val_acc"), "train_loss": m["train_loss"],
        "train_acc": m["train_acc"], "seconds": round(m["seconds"], 3),
        "diverged": int(loop.diverged(m)),
    }


def labels(workdir: Path) -> dict[str, str]:
    """The model and data set names every row of the study in `workdir` carries (from its config.json)."""
    record = rundir.read_record(Path(workdir)) or {}
    train_cfg = config_lib.from_dict(config_lib.TrainConfig, (record.get("config") or {}).get("train") or {})
    return {"model": train_cfg.model, "data": data.data_name(train_cfg.data)}


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

    def recipe(p: Phase):  # phases vmapped together must share one compiled program
        return train.compile_key(dataclasses.replace(phase_config(cfg, p), seed=0)), p.retrain

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
        ready = [p for p in pending if p.parent is None or p.parent in done]
        group = [p for p in ready if recipe(p) == recipe(ready[0])][: cfg.parallel_runs]
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


def phase_spec(cfg: config_lib.StudyConfig, workdir: Path, phase: Phase, parent: Final | None) -> loop.RunSpec:
    """What a phase trains: its config, directory, starting weights and masks.

    The masks prune `phase.count` of the parent's remaining weights (the
    parent's final weights ranked by `phase.method`, split by its
    distribution). Then by retraining mode: retrain and lr-rewind start from
    the parent's weights, finetune too at the parent's last lr held constant,
    weight-rewind from the baseline's weights at the rewind epoch, reinit from
    fresh random weights, shuffle from the parent's weights with each layer's
    mask permuted. Masks are applied to the start when training begins.
    """
    pcfg = phase_config(cfg, phase)
    wants_rewind = any(RETRAINING[m].uses_rewind_epoch for m in cfg.retrain) and cfg.rewind_epoch > 0
    keep = (cfg.rewind_epoch,) if phase.schedule == BASELINE and wants_rewind else ()
    start = masks = None
    if parent is not None:
        if SCHEDULES[phase.schedule].prunes_in_training:
            masks = parent.masks
        elif is_pattern(phase.distribution):
            masks = masks_lib.prune(parent.params, parent.masks, pattern=phase.distribution, score=phase.method,
                                    key=pruning_key(cfg, phase))
        else:
            masks = masks_lib.prune(parent.params, parent.masks, phase.count, distribution=phase.distribution,
                                    score=phase.method, key=pruning_key(cfg, phase))
        sources = Sources(
            last_lr=parent.last_lr, tag=derived_seed(phase.seed, phase.retrain, phase.chain, phase.round),
            rewind_point=lambda: _rewind_point(cfg, workdir, phase),
            fresh=lambda seed: init_variables(train.build_model(pcfg), seed),
            shuffle=lambda m, seed: masks_lib.shuffle_masks(m, jax.random.key(seed)),
        )
        began = Start({"params": parent.params, "batch_stats": parent.batch_stats}, masks, pcfg)
        began = RETRAINING[phase.retrain].start(began, sources)
        start, masks, pcfg = began.variables, began.masks, began.cfg
    return loop.RunSpec(
        pcfg, Path(workdir) / phase.name, start, masks, meta={"phase": dataclasses.asdict(phase)},
        identity=phase.identity(), keep_epochs=keep,
    )


def _rewind_point(cfg: config_lib.StudyConfig, workdir: Path, phase: Phase) -> dict:
    """The baseline's params and batch stats at epoch `phase.rewind_epoch` (0: its initialisation).

    The initialisation is recomputed from the baseline's config (deterministic
    on a platform); a later epoch is read from the baseline's checkpoints,
    which keep it when the study asks for weight-rewind before the baseline trains.
    """
    k = phase.rewind_epoch
    if cfg.baseline:
        folder, epoch = checkpoint.locate(cfg.baseline)
        saved = config_lib.from_dict(config_lib.TrainConfig, checkpoint.read_meta(folder, epoch)["config"])
        base_cfg = dataclasses.replace(saved, devices=cfg.train.devices)
    else:
        folder = workdir / (phase.home + BASELINE) / "checkpoints"
        base_cfg = phase_config(cfg, dataclasses.replace(BASELINE_PHASE, seed=phase.seed))
    if k == 0:
        return init_variables(train.build_model(base_cfg), base_cfg.seed)
    with checkpoint.RunCheckpoints(folder, read_only=True) as ck:
        if k not in ck.epochs():
            raise StudyError(
                f"weight-rewind needs the baseline's epoch {k}, but {folder} kept no epoch {k} (it trained "
                "before --retrain weight-rewind asked for it): use --rewind-epoch 0 (its initialisation) "
                "or a new --workdir"
            )
        model, _ = ck.restore_model(k, checkpoint.abstract_model(train.abstract_state(base_cfg)))
    return {"params": model["params"], "batch_stats": model["batch_stats"]}


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
