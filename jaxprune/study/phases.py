"""What a phase trains from: its parent's final weights (`Final`, `load_final`) and its
`RunSpec` (`phase_spec`): the parent pruned (or its channels cut) by the phase's method, then
started as its retraining mode says. Shared by the local driver and the Ray executor's tasks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxprune import masks as masks_lib, structured
from jaxprune.models import init_variables, kernels
from jaxprune.study import config as config_lib
from jaxprune.study.modes import RETRAINING, SCHEDULES, Sources, Start, StudyError, is_pattern
from jaxprune.study.planning import (
    BASELINE, BASELINE_PHASE, CHANNEL, Phase, derived_seed, phase_config, pruning_key,
)
from jaxprune.training import checkpoint, loop, train


@dataclasses.dataclass
class Final:
    """A finished phase's weights: what its children prune and retrain."""

    params: Any
    batch_stats: Any
    masks: Any
    last_lr: float | None = None  # the lr of its last epoch (a finetune child keeps it)


def _restore_final(folder: Path, epoch: int, cfg: config_lib.TrainConfig) -> Final:
    model, meta = checkpoint.restore_model(folder, epoch, checkpoint.abstract_model(train.abstract_state(cfg)))
    return Final(model["params"], model["batch_stats"], model["masks"], meta.get("metrics", {}).get("lr"))


def load_final(workdir: Path, phase_cfg: config_lib.TrainConfig) -> Final:
    return _restore_final(workdir / "checkpoints", phase_cfg.epochs, phase_cfg)


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
    if parent is not None and phase.distribution == CHANNEL:
        # The parent's network with its lowest-scoring channels cut out, down to the phase's counts;
        # magnitude ranks by --channel-score, random by a permutation from the phase's pruning key.
        score = "random" if phase.method == "random" else cfg.channel_score
        seed = int(jax.random.randint(pruning_key(cfg, phase), (), 0, 2**31 - 1))
        cut = structured.cut_to_counts(pcfg.model, {"params": parent.params, "batch_stats": parent.batch_stats},
                                       pcfg.channels, score, seed)
        masks = masks_lib.init_masks(cut["params"], kernels.mask_filter(tuple(pcfg.exclude)))
        parent = Final(cut["params"], cut["batch_stats"], masks, parent.last_lr)
    if parent is not None:
        if masks is not None:
            pass  # the channels were cut: the smaller network keeps all its weights
        elif SCHEDULES[phase.schedule].prunes_in_training:
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


def recipe(cfg: config_lib.StudyConfig, phase: Phase) -> tuple:
    """What phases vmapped together share: one compiled program (their training configs but for
    the seed) and one retraining mode."""
    return train.compile_key(dataclasses.replace(phase_config(cfg, phase), seed=0)), phase.retrain


def next_group(cfg: config_lib.StudyConfig, pending: list[Phase], done: set[str]) -> list[Phase]:
    """What `--parallel-runs N` trains next: up to N phases of `pending` (in plan order) whose
    parents are `done` and that share the first ready one's `recipe`."""
    ready = [p for p in pending if p.parent is None or p.parent in done]
    if not ready:
        raise StudyError(f"{pending[0].name}: its parent {pending[0].parent} is not in the plan")
    first = recipe(cfg, ready[0])
    return [p for p in ready if recipe(cfg, p) == first][: cfg.parallel_runs]


def groups(cfg: config_lib.StudyConfig, pending: list[Phase], done: set[str]) -> list[list[Phase]]:
    """Every group `next_group` gives, in order, if every phase trains: the groups the local
    driver forms as it goes, which the Ray executor submits as tasks."""
    pending, done, out = list(pending), set(done), []
    while pending:
        out.append(next_group(cfg, pending, done))
        for p in out[-1]:
            pending.remove(p)
            done.add(p.name)
    return out
