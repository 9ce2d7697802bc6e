"""The study's typed configuration (a TrainConfig for its training, plus what it prunes and how),
its named presets, and validation of every field. Every name of `jaxprune.training.config`
is served here too, so this module (also `jaxprune.config`) is the whole of the configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxprune.study import modes
from jaxprune.training.config import (  # noqa: F401  (served here: `jaxprune.config` is this module)
    MAX_SEED, TRAIN_PRESETS, ConfigError, TrainConfig, _check_choices, _field, check_layout, differences, from_dict,
    identity, identity_hash, saved_identity, to_dict,
)


def _default_train() -> TrainConfig:
    return TrainConfig()


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The pruning study: a baseline, then one-shot and iterative pruning with retraining.

    Defaults are the write-up's: a 90-epoch baseline; targets 50/75/90%;
    one-shot prunes to the target at once, iterative prunes 10% of the
    remaining weights per round; every (re)training is 90 epochs; separate
    iterative chains per target.
    """

    train: TrainConfig = dataclasses.field(
        default_factory=_default_train,
        metadata={"help": "the training recipe of the baseline and of every round (its epochs are set below)"},
    )
    baseline_epochs: int = _field(90, "epochs of baseline training")
    round_epochs: int = _field(90, "epochs of retraining after each pruning step")
    # What a study covers may grow between invocations (identity=False): added
    # methods, schedules or targets reuse the baseline and every finished
    # phase. Each phase checks its own identity (recipe and parent chain).
    methods: tuple[str, ...] = _field(
        ("magnitude", "random"), "pruning methods (scores): magnitude, random, lamp (Lee et al. 2021: magnitude "
        "normalised within each layer)", identity=False
    )
    schedules: tuple[str, ...] = _field(
        ("oneshot", "iterative"),
        "schedules to run: " + "; ".join(
            f"{s.name} ({s.help}{'; --retrain ' + ' '.join(s.modes) + ' only' if s.modes else ''})"
            for s in modes.SCHEDULES.values()),
        identity=False,
    )
    targets: tuple[float, ...] = _field(
        (0.5, 0.75, 0.9), "target sparsities, each in (0, 1), no two equal", identity=False
    )
    distribution: str = _field(
        "global",
        "how a round's count is split across layers: global (one ranking over all layers, the "
        "write-up's), uniform (every layer at the same sparsity) or erk (Evci et al. 2020)",
        identity=False, choices=("global", "uniform", "erk"),
    )
    pattern: str = _field(
        "",
        "N:M structured sparsity beside the study's distribution, e.g. 2:4 (the pattern Ampere and "
        "Hopper tensor cores run faster): per method, a one-shot phase keeping N of every M consecutive "
        "input weights of each kernel that can hold the pattern (the others stay dense), and an "
        "unstructured one-shot phase at its target (M-N)/M, which the report compares it with "
        "(empty: none)",
        identity=False,
    )
    structure: tuple[str, ...] = _field(
        ("unstructured",),
        "what pruning removes, one or both: unstructured (single weights, the write-up's) and channel (whole "
        "channels, cut out of every coupled layer so the network is smaller; cifar_vgg_N, and inside the "
        "residual blocks of cifar_resnet_N and resnet18). With channel, --targets are fractions of the "
        "prunable weights removed, reached as closely as whole channels allow (the same fraction of "
        "channels in every layer), --methods magnitude ranks channels by --channel-score and random at "
        "random, and phases are named ...-channel-...; with both, the report compares them at equal "
        "parameters and at equal multiply-adds",
        identity=False, choices=("unstructured", "channel"),
    )
    channel_score: str = _field(
        "l1",
        "--structure channel with --methods magnitude: the channel score: l1 (the filter's L1 norm, Li et "
        "al. 2017), l2 (its L2 norm) or bn-scale (|gamma| of its batch norm, Liu et al. 2017)",
        identity=False, choices=("l1", "l2", "bn-scale"),
    )
    retrain: tuple[str, ...] = _field(
        ("retrain",),
        "how each pruned network trains again: " + "; ".join(f"{m.name} ({m.help})" for m in modes.RETRAINING.values()),
        identity=False,
    )
    rewind_epoch: int = _field(
        0,
        "weight-rewind: the baseline epoch whose weights survivors are reset to (0 = its "
        "initialisation, Frankle & Carbin 2019; the baseline keeps that epoch's checkpoint)",
        identity=False,
    )
    seeds: tuple[int, ...] = _field(
        (),
        "replicates: each seed trains its own baseline and chains, and the report gives mean, "
        "std and 95%% t-intervals over them (empty: --seed alone)",
        identity=False,
    )
    step: float = _field(0.1, "iterative: fraction of the remaining weights pruned per round, in (0, 1)")
    shared_chain: bool = _field(
        False,
        "iterative: one chain to the largest target also serves the smaller ones (their rounds "
        "are its prefix), saving ~half the rounds; default: a separate chain per target, as the write-up",
        identity=False,
    )
    baseline: str = _field(
        "",
        "start from this trained checkpoint instead of training a baseline (run dir or epoch folder); "
        "if it is already pruned its masks are kept and targets count from its sparsity",
    )
    parallel_runs: int = _field(
        1,
        "train up to N independent phases at once, vmapped over a run axis of N (for example the "
        "three one-shot targets, or the iterative chains in lockstep), that axis spread over the "
        "devices (see --devices); each keeps its own key and directory; results match N=1 within "
        "float rounding",
        identity=False,
    )
    executor: str = _field(
        "local",
        "where phases run: local (this process, the reference) or ray (each unfinished phase, or each group "
        "--parallel-runs vmaps, a Ray task after its parents', retried if its worker dies; needs the ray extra: pip install 'jaxprune[ray]'). Not part "
        "of the study's identity: a study begun on one can be finished on the other",
        identity=False, choices=("local", "ray"),
    )
    ray_address: str = _field(
        "", "--executor ray: the cluster to join (ray start's address, e.g. 10.0.0.1:6379; empty: start a local "
        "Ray on this machine)", identity=False,
    )
    gpus_per_phase: float = _field(
        0.0, "--executor ray: GPUs each phase's task (or group's, with --parallel-runs) asks for (0.5 packs two phases per GPU, each given that "
        "share of its memory)", identity=False,
    )
    cpus_per_phase: float = _field(1.0, "--executor ray: CPUs each phase's task asks for", identity=False)

    def _check_channel_structure(self) -> None:
        from jaxprune import structured  # a lower room; imported late to keep config light

        try:
            structured.coupling(self.train.model)
        except structured.ChannelError as e:
            raise ConfigError(f"--structure channel: {e}") from None
        for name, allowed in (("methods", ("magnitude", "random")), ("schedules", ("oneshot", "iterative")),
                              ("retrain", ("retrain", "finetune", "lr-rewind"))):
            extra = [v for v in getattr(self, name) if v not in allowed]
            if extra:
                raise ConfigError(f"--structure channel takes --{name} {' or '.join(allowed)}, not {extra[0]}")
        if self.pattern:
            raise ConfigError("--structure channel and --pattern: give one of them")
        if self.baseline:
            # A given baseline may be pruned already; its masks would be lost in the cut.
            raise ConfigError("--structure channel trains its own baseline; leave --baseline unset")

    def validate(self) -> "StudyConfig":
        self.train.validate()
        for name in ("baseline_epochs", "round_epochs", "parallel_runs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        check_layout(self.train.devices, self.parallel_runs, self.train.batch_size)
        if not self.targets:
            raise ConfigError("--targets needs at least one target sparsity")
        for t in self.targets:
            if not 0 < t < 1:
                raise ConfigError(f"--targets must each be in (0, 1) (a fraction pruned), got {t}")
        repeated = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if repeated:
            raise ConfigError(f"--targets lists {repeated[0]:g} more than once; give each target once")
        if not 0 < self.step < 1:
            raise ConfigError(f"--step must be in (0, 1) (the fraction of remaining weights pruned per round), got {self.step}")
        from jaxprune.masks import METHODS  # a lower room; imported late to keep config light

        for m in self.methods:
            if m not in METHODS:
                raise ConfigError(f"--methods: unknown method {m!r}; choose from {', '.join(sorted(METHODS))}")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"--seeds must each be in 0..{MAX_SEED}, got {seed}")
        for name in ("retrain", "seeds"):
            values = getattr(self, name)
            if not values and name == "retrain" or len(set(values)) != len(values):
                raise ConfigError(f"--{name} needs distinct values, each once")
        if self.rewind_epoch < 0 or self.rewind_epoch > self.baseline_epochs:
            raise ConfigError(
                f"--rewind-epoch must be in [0, --baseline-epochs {self.baseline_epochs}], got {self.rewind_epoch}"
            )
        if self.pattern:
            from jaxprune.masks import nm  # a lower room; imported late to keep config light

            try:
                nm.parse(self.pattern)
            except ValueError as e:
                raise ConfigError(f"--pattern: {e}") from None
        if not self.methods or not self.schedules:
            raise ConfigError("--methods and --schedules each need at least one value")
        if self.executor == "ray" and (self.gpus_per_phase < 0 or self.cpus_per_phase < 0):
            raise ConfigError("--gpus-per-phase and --cpus-per-phase need values >= 0")
        if not self.structure or len(set(self.structure)) != len(self.structure):
            raise ConfigError("--structure needs distinct values, each once")
        if "channel" in self.structure:
            self._check_channel_structure()
        problem = modes.check(self)  # each schedule and retraining mode's own conditions
        if problem:
            raise ConfigError(problem)
        # Set per phase by the study; a baseline pruned or rescheduled by hand
        # would meet its rounds at the wrong sparsity or learning rate.
        for name in ("prune_to", "prune_from", "schedule_start", "channels"):
            if getattr(self.train, name):
                raise ConfigError(f"--{name.replace('_', '-')} is set by the study for each phase; leave it unset")
        return self

    def phase(self, epochs: int, seed: int, **changes) -> TrainConfig:
        """The training config of one phase (baseline or round)."""
        return dataclasses.replace(self.train, epochs=epochs, seed=seed, **changes)

    @property
    def replicate_seeds(self) -> tuple[int, ...]:
        """The replicates' seeds: --seeds, or --seed alone."""
        return self.seeds or (self.train.seed,)


STUDY_PRESETS: dict[str, dict[str, Any]] = {
    # The write-up: 90 + 3x90 + (7 + 14 + 22)x90 epochs per method on real CIFAR-10.
    "seed": {},
    # Short rounds, bf16, one shared chain: minutes on one GPU.
    "quick": {
        "train": {"dtype": "bfloat16"},
        "baseline_epochs": 15,
        "round_epochs": 2,
        "shared_chain": True,
    },
    # Synthetic data at width 4 with coarse steps: 117 s on a 2-core CPU (README's timings).
    "smoke": {
        "train": TRAIN_PRESETS["smoke"],
        "baseline_epochs": 3,
        "round_epochs": 1,
        "step": 0.5,
        "shared_chain": True,
    },
    # The smoke study on the two-conv `tiny` model: the whole machinery in seconds.
    "tiny": {
        "train": TRAIN_PRESETS["tiny"],
        "baseline_epochs": 3,
        "round_epochs": 1,
        "step": 0.5,
        "shared_chain": True,
    },
    # open_lth's lottery runner (lottery/runner.py): prune 20% of what remains per level
    # (sparse_global, pruning_fraction=0.2), then train the survivors again from the
    # weights of step 0 (rewinding_steps unset: train_start_step 0) for the full 160 epochs:
    # --retrain weight-rewind at --rewind-epoch 0. One chain serves every target.
    "openlth-resnet20": {
        "train": TRAIN_PRESETS["openlth-resnet20"], "baseline_epochs": 160, "round_epochs": 160, "step": 0.2,
        "retrain": ("weight-rewind",), "rewind_epoch": 0, "shared_chain": True,
    },
    "openlth-vgg16": {
        "train": TRAIN_PRESETS["openlth-vgg16"], "baseline_epochs": 160, "round_epochs": 160, "step": 0.2,
        "retrain": ("weight-rewind",), "rewind_epoch": 0, "shared_chain": True,
    },
}


def study_preset(name: str | None, **overrides) -> StudyConfig:
    """A StudyConfig from a preset name, with `overrides` (train fields under 'train')."""
    preset = STUDY_PRESETS[name] if name else {}
    train_fields = {**preset.get("train", {}), **overrides.pop("train", {})}
    top = {k: v for k, v in preset.items() if k != "train"}
    return StudyConfig(train=TrainConfig(**train_fields), **{**top, **overrides})
