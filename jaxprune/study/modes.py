"""The study's table of pruning schedules and retraining modes.

Each entry says what it does, whether it forms chains of its own or is a
control, which training-config fields it changes, and where a pruned phase's
starting weights and masks come from. The study's plan, its phase configs and
starting points, phase names, config validation and ``--help``, and the
report's order all read these two tables, so adding a mode is one
`register_retraining` call plus its tests (README: "Adding a retraining mode").

Nothing here imports the study, the trainer or JAX: an entry's functions get
what they need (the parent's weights, a fresh init, the rewind point) as
arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxprune.runtime.errors import UserError


class StudyError(UserError):
    """A study that cannot be planned or run as asked (a user's mistake)."""


# ---------------------------------------------------------------- retraining modes


@dataclasses.dataclass(frozen=True)
class Start:
    """A pruned phase's starting point: weights ({'params', 'batch_stats'}), masks, and
    its training config. A mode's `start` returns it changed."""

    variables: dict
    masks: Any
    cfg: Any  # config.TrainConfig


@dataclasses.dataclass(frozen=True)
class Sources:
    """What a mode may start from besides the parent's pruned weights."""

    last_lr: float | None  # the parent's last epoch's lr
    tag: int  # a seed derived from the phase's identity (for fresh weights or permutations)
    rewind_point: Callable[[], dict]  # the baseline's variables at --rewind-epoch
    fresh: Callable[[int], dict]  # fresh random variables from a seed
    shuffle: Callable[[Any, int], Any]  # masks permuted within each layer, from a seed


@dataclasses.dataclass(frozen=True)
class Retraining:
    """How a pruned network trains again.

    name: its --retrain name. help: one line for --help.
    control: False for a mode that forms chains of its own (pruning its own
      parent's weights); True for a control, which takes the `retrain` chain's
      masks and counts phase for phase (and so implies that chain).
    suffix: its part of a chain's name, from the study's --rewind-epoch.
    uses_rewind_epoch: the phase records --rewind-epoch (its identity), and the
      baseline keeps that epoch's checkpoint.
    config: training-config fields it changes, from the study config (known
      before the parent has trained).
    start: the phase's starting point from the parent's pruned one.
    check: a one-line reason the study config cannot run this mode, or None.
    """

    name: str
    help: str
    control: bool = False
    suffix: Callable[[int], str] = lambda rewind_epoch: ""
    uses_rewind_epoch: bool = False
    config: Callable[[Any], dict] = lambda study_cfg: {}
    start: Callable[[Start, Sources], Start] = lambda s, src: s
    check: Callable[[Any], str | None] = lambda study_cfg: None


RETRAINING: dict[str, Retraining] = {}


def _register(table: dict, kind: str, entry):
    if entry.name in table:
        raise ValueError(f"{kind} {entry.name!r} is already registered")
    table[entry.name] = entry
    return entry


def register_retraining(mode: Retraining) -> Retraining:
    """Adds a retraining mode (by its name) to the table every study reads."""
    return _register(RETRAINING, "retraining mode", mode)


def _lr_rewind_check(cfg) -> str | None:
    if cfg.round_epochs > cfg.baseline_epochs:
        return ("--retrain lr-rewind replays the baseline's last --round-epochs epochs, so it needs "
                f"--round-epochs <= --baseline-epochs (got {cfg.round_epochs} > {cfg.baseline_epochs})")
    return None


register_retraining(Retraining(
    "retrain", "the write-up's: fresh optimizer, the full schedule for --round-epochs",
))
register_retraining(Retraining(
    "finetune", "the parent's final lr, constant",
    suffix=lambda k: "-finetune",
    start=lambda s, src: dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, schedule="constant", lr=src.last_lr)),
))
register_retraining(Retraining(
    "lr-rewind", "the last --round-epochs epochs of the baseline's schedule (Renda et al. 2020)",
    suffix=lambda k: "-lr-rewind",
    config=lambda cfg: {"schedule_start": cfg.baseline_epochs - cfg.round_epochs},
    check=_lr_rewind_check,
))
register_retraining(Retraining(
    "weight-rewind", "survivors reset to the baseline's weights at --rewind-epoch, full schedule: the lottery ticket",
    suffix=lambda k: f"-weight-rewind-e{k}",
    uses_rewind_epoch=True,
    start=lambda s, src: dataclasses.replace(s, variables=src.rewind_point()),
))
register_retraining(Retraining(
    "reinit", "control: the retrain chain's masks, fresh random weights",
    control=True, suffix=lambda k: "-reinit",
    start=lambda s, src: dataclasses.replace(s, variables=src.fresh(src.tag)),
))
register_retraining(Retraining(
    "shuffle", "control: the retrain chain's masks permuted within each layer",
    control=True, suffix=lambda k: "-shuffle",
    start=lambda s, src: dataclasses.replace(s, masks=src.shuffle(s.masks, src.tag)),
))


# ---------------------------------------------------------------- schedules


def iterative_counts(total: int, step: float, target: float, pruned: int = 0) -> list[int]:
    """Weights pruned by each iterative round until the global sparsity reaches `target`.

    Each round prunes round(step * remaining), as prune_global does with a
    float amount; `pruned` weights are already pruned before the first.
    """
    remaining, out = total - pruned, []
    while not out or 1 - remaining / total < target:
        k = round(step * remaining)
        if k == 0:
            raise StudyError(f"--step {step} never reaches target {target}: a round would prune nothing")
        out.append(k)
        remaining -= k
    return out


@dataclasses.dataclass(frozen=True)
class Planning:
    """What a schedule plans one method's phases from."""

    cfg: Any  # config.StudyConfig
    total: int  # prunable weights
    pruned: int  # already pruned in a given baseline
    root: str  # the baseline phase's name
    new: Callable[..., Any]  # (schedule, target, round, count, sparsity, parent) -> Phase


def _one_per_target(schedule: str) -> Callable[[Planning], list]:
    """One phase per target, pruned from the baseline (k: what prune_global(t) prunes from a dense model)."""
    return lambda p: [p.new(schedule, t, 1, round(t * p.total) - p.pruned, round(t * p.total) / p.total, p.root)
                      for t in p.cfg.targets]


def _iterative(p: Planning) -> list:
    phases = []
    for t in [max(p.cfg.targets)] if p.cfg.shared_chain else sorted(p.cfg.targets):
        parent, remaining = p.root, p.total - p.pruned
        for r, k in enumerate(iterative_counts(p.total, p.cfg.step, t, p.pruned), start=1):
            remaining -= k
            phases.append(p.new("iterative", t, r, k, 1 - remaining / p.total, parent))
            parent = phases[-1].name
    return phases


def _gradual_config(cfg, phase, total: int) -> dict:
    start = (round(phase.sparsity * total) - phase.count) / total  # the parent's sparsity
    return {"prune_to": phase.target, "prune_from": start, "prune_score": phase.method}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a chain reaches its target.

    plan: one method's phases under one retraining mode, in training order.
    modes: the retraining modes it runs under (None: all).
    prunes_in_training: its phases start from the parent's masks and prune
      during training (so nothing is pruned before the phase starts).
    config: training-config fields it changes for a phase, from (study
      config, phase, prunable total).
    """

    name: str
    help: str
    plan: Callable[[Planning], list]
    modes: tuple[str, ...] | None = None
    prunes_in_training: bool = False
    config: Callable[[Any, Any, int], dict] = lambda cfg, phase, total: {}


# In the order a study plans (and trains) each method's phases, and the report shows them.
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(schedule: Schedule) -> Schedule:
    """Adds a pruning schedule (by its name) to the table every study reads."""
    return _register(SCHEDULES, "schedule", schedule)


register_schedule(Schedule("oneshot", "prune to each target at once, then retrain", _one_per_target("oneshot")))
register_schedule(Schedule(
    "gradual", "Zhu & Gupta: from the baseline to each target within --round-epochs, masks updated on the "
    "device during training", _one_per_target("gradual"), modes=("retrain",), prunes_in_training=True, config=_gradual_config,
))
register_schedule(Schedule(
    "iterative", "prune --step of the remaining weights per round, retraining after each", _iterative,
))


def check(cfg) -> str | None:
    """A one-line reason the study config's schedules and modes cannot run, or None."""
    for s in cfg.schedules:
        if s not in SCHEDULES:
            return f"--schedules: unknown schedule {s!r}; choose from {', '.join(SCHEDULES)}"
    for m in cfg.retrain:
        if m not in RETRAINING:
            return f"--retrain: unknown mode {m!r}; choose from {', '.join(RETRAINING)}"
        problem = RETRAINING[m].check(cfg)
        if problem:
            return problem
    chain_modes = chain_modes_of(cfg.retrain)
    if not any(SCHEDULES[s].modes is None or set(SCHEDULES[s].modes) & set(chain_modes) for s in cfg.schedules):
        only = sorted({m for s in cfg.schedules for m in SCHEDULES[s].modes or ()})
        return (f"--schedules {' '.join(cfg.schedules)} runs under --retrain {' '.join(only)} only; "
                f"add {only[0]} to --retrain")
    return None


def is_pattern(distribution: str) -> bool:
    """Whether a phase's distribution is an N:M pattern ("2:4", --pattern) rather than global, uniform or erk."""
    return ":" in str(distribution)


def chain_modes_of(retrain: tuple[str, ...]) -> list[str]:
    """The modes that form chains: those asked for, plus retrain when a control needs its masks."""
    chains = [m for m in retrain if not RETRAINING[m].control]
    if len(chains) < len(retrain) and "retrain" not in chains:
        chains.insert(0, "retrain")
    return chains
