"""The study's plan: every training phase it needs, computed before any work, and what each phase is.

A plan is the list of every training phase the study needs, computed before
any work from exact pruning counts: the baseline, then per (schedule, method,
target) chain its rounds, each pruning an exact number of weights from its
parent's final weights and retraining (`plan`). Every phase is named by what it
is (``iterative-random-0.90/round-07``, with the exact target: ``0.875`` stays
``0.875``); its training config (`phase_config`) and its pruning key
(`pruning_key`) follow from the study's config and the phase alone.

Pure: nothing here reads or writes a study directory or trains; the driver
(`jaxprune.study.driver`) runs what this plans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import functools
from typing import Any

import jax
import numpy as np

from jaxprune import masks as masks_lib
from jaxprune.study import config as config_lib
from jaxprune.models import kernels
from jaxprune.study.modes import RETRAINING, SCHEDULES, Planning, StudyError, chain_modes_of, is_pattern

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
            for structure in cfg.structure:
                distribution = CHANNEL if structure == "channel" else cfg.distribution
                kw = dict(seed=seed, distribution=distribution, home=home, retrain=mode,
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
    phases = list({p.name: p for p in phases}.values())
    return _whole_channels(cfg, total, phases) if "channel" in cfg.structure else phases


CHANNEL = "channel"  # the distribution of a --structure channel phase (its folder names say so)


@functools.lru_cache(maxsize=256)
def channel_counts(arch: kernels.Arch, exclude: tuple[str, ...], sparsity: float) -> tuple[tuple[int, ...], int]:
    """(channels kept per group, prunable weights removed) when the same fraction of channels goes
    from every group of `arch`, the fraction whose removal comes closest to `sparsity` of the
    prunable weights. Shapes only: which channels go depends on the weights, how many does not."""
    from jaxprune import structured  # the channel groups of the model's family

    params = kernels.abstract_params(arch.whole)
    groups = structured.coupling(arch.model).groups(arch.model, params)
    ranks = [np.arange(n, dtype=float) for n in structured.group_sizes(params, groups)]
    # Only the prunable kernels count towards the target (--exclude's stay out of it).
    flags = jax.tree.leaves(masks_lib.prunable(params, kernels.mask_filter(exclude)))
    prunable = {masks_lib.path_names(path)[:-1]
                for (path, _), flag in zip(jax.tree_util.tree_leaves_with_path(params), flags) if flag}
    fraction, reached = structured.fraction_for(params, groups, ranks, sparsity, include=prunable)
    counts = tuple(len(k) for k in structured.select(ranks, fraction))
    return counts, round(reached * kernels.counts(arch.whole, exclude)[1])


def _whole_channels(cfg: config_lib.StudyConfig, total: int, phases: list[Phase]) -> list[Phase]:
    """Channel phases at what whole channels reach: each phase's sparsity, and its count (the
    weights its round removes), from `channel_counts` of its target sparsity."""
    arch, exclude = kernels.Arch.of(cfg.train), tuple(cfg.train.exclude)
    reached: dict[str, float] = {}
    out = []
    for p in phases:
        if p.distribution == CHANNEL:
            counts, removed = channel_counts(arch, exclude, p.sparsity)
            before = reached.get(p.parent, 0.0)
            if removed <= round(before * total):
                raise StudyError(
                    f"{p.name}: whole channels of {cfg.train.model} at width {cfg.train.width} cannot go from "
                    f"{100 * before:.2f}% to {100 * p.sparsity:.2f}% of its weights; give fewer, farther-apart "
                    "targets, or a wider model")
            p = dataclasses.replace(p, count=removed - round(before * total), sparsity=removed / total)
        reached[p.name] = p.sparsity
        out.append(p)
    return out


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
    if phase.distribution == CHANNEL:
        changes["channels"] = channel_counts(kernels.Arch.of(cfg.train), tuple(cfg.train.exclude), phase.sparsity)[0]
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
