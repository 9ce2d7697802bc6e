"""A training run's typed configuration, its named presets, and validation of every field;
the (de)serialising and identity rules every saved config (a run's, a study's) follows.

Each field carries its own help text (``metadata["help"]``); the command line
is generated from these, so ``--help`` and the code never disagree. A run
saves its config as JSON beside its results, and refuses to resume a
directory whose saved config differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from typing import Any

from jaxprune.data import sources as data
from jaxprune.models import kernels
from jaxprune import models
from jaxprune.runtime.errors import UserError


class ConfigError(UserError):
    """A field has a value the run cannot use; the message says which and why."""


def check_layout(n_devices: int, run_axis: int, batch_size: int) -> None:
    """Raises ConfigError when devices, run axis and batch do not fit (see devices.layout)."""
    if n_devices < 0:
        raise ConfigError(f"--devices must be >= 0, got {n_devices}")
    from jaxprune.training import devices  # late: importing jax is needed only here

    try:
        devices.layout(n_devices, run_axis, batch_size)
    except devices.LayoutError as e:
        raise ConfigError(str(e)) from None


_NORMALIZATIONS = tuple(data.NORMALIZATIONS)  # (the class body's `data` field shadows the module)
MAX_SEED = 2**31 - 1  # seeds pass through int32 keys and JSON; larger ones overflowed after writing config.json


def _field(default, help: str, *, identity: bool = True, choices=None):
    """A dataclass field with help text.

    identity=False marks fields a rerun may change without being refused as a
    different run: those that do not change results (progress bars), and what
    a study covers (its phases check their own identity).
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "identity": identity, "choices": choices}
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, optimiser and schedule.

    Defaults are the write-up's recipe (kuangliu/pytorch-cifar's main.py, stopped
    at epoch 90): ResNet18, batch 128 with every image each epoch, SGD lr 0.1,
    momentum 0.9, weight decay 5e-4, CosineAnnealingLR(T_max=200) per epoch.
    """

    data: str = _field(
        f"cifar10-bin:{data.DEFAULT_CIFAR10_DIR}",
        "data source: cifar10-bin:DIR or cifar100-bin:DIR (the binary layouts), tfds[:DATA_DIR] "
        "(CIFAR-10), or synthetic[:N_TRAIN[,N_TEST[,CLASSES]]]; the model's output layer has its class count",
    )
    model: str = _field(
        "resnet18",
        "the network: resnet18 (kuangliu/pytorch-cifar's, the write-up's), cifar_resnet_N (N = 6k+2, e.g. "
        "20, 56: open_lth's CIFAR ResNets) or cifar_vgg_N (11, 13, 16, 19: open_lth's VGGs), or one "
        "registered with jaxprune.models.register",
    )
    train_subset: int = _field(0, "train on only the first N training images (0 = all)")
    width: int = _field(
        0,
        "the model's width: channels of its first stage (resnet18: 64, cifar_resnet_N: 16, cifar_vgg_N: 64 "
        "as published; smaller for tests); 0 = the published width",
    )
    channels: tuple[int, ...] = _field(
        (),
        "channels kept per channel group, for a model made smaller by channel pruning (jaxprune.structured; "
        "a study sets it for its --structure channel phases); empty = the whole model",
    )
    dtype: str = _field(
        "float32", "compute dtype; parameters stay float32", choices=("float32", "bfloat16")
    )
    epochs: int = _field(90, "epochs of training")
    batch_size: int = _field(128, "images per SGD step")
    drop_last: bool = _field(
        False,
        "drop each epoch's last partial batch; by default it is trained, as PyTorch's "
        "DataLoader(drop_last=False) does (CIFAR-10 at batch 128: 391 steps, the last of 80 images)",
    )
    lr: float = _field(0.1, "peak learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(5e-4, "L2 weight decay, added to the gradient as in torch.optim.SGD")
    # The write-up kept kuangliu/pytorch-cifar's main.py, whose scheduler is
    # CosineAnnealingLR(optimizer, T_max=200) stepped once per epoch, and
    # stopped at epoch 90: so its lr never anneals below ~0.058.
    schedule: str = _field(
        "epoch-cosine",
        "learning-rate schedule. epoch-cosine: torch's CosineAnnealingLR(T_max=--t-max) stepped once "
        "per epoch, the write-up's recipe (kuangliu/pytorch-cifar): epoch e (from 1) trains at "
        "lr/2*(1+cos(pi*(e-1)/T_max)). cosine: a per-step cosine annealed to 0 over the run's "
        "epochs (optax.cosine_decay_schedule), which suits short runs. multistep: --lr times --gamma "
        "at each of --milestones (torch's MultiStepLR stepped per epoch; open_lth's milestone_steps). "
        "constant: --lr throughout",
        choices=("epoch-cosine", "cosine", "multistep", "constant"),
    )
    milestones: tuple[int, ...] = _field(
        (), "multistep: the schedule epochs after which the lr drops by --gamma (open_lth: 80 120)"
    )
    gamma: float = _field(0.1, "multistep: the factor at each milestone")
    warmup_steps: int = _field(
        0,
        "linear warm-up over the schedule's first N SGD steps: the lr of step t (from 0) is scaled by "
        "min(1, t / N), as open_lth's warmup_steps (0 = none)",
    )
    t_max: int = _field(
        200,
        "epoch-cosine: the horizon T_max in epochs (the write-up: 200, stopped at epoch 90, so "
        "its last lr is 0.058); 0 = the run's own epochs",
    )
    schedule_start: int = _field(
        0,
        "epochs of the lr schedule already elapsed before this run's first epoch: the run trains "
        "the schedule's epochs START+1..START+epochs (a study's lr-rewind phases replay the "
        "baseline's last epochs this way)",
    )
    val_split: int = _field(
        0,
        "hold out N training images (a fixed random subset) as a validation set, evaluated every "
        "epoch; the best epoch is then chosen on it instead of on the test set (0 = none, as the write-up)",
    )
    exclude: tuple[str, ...] = _field(
        (),
        "kernels never pruned, by path component or glob (e.g. stem_conv head: the first conv and the "
        "classifier); sparsities then count only the other kernels",
    )
    prune_to: float = _field(
        0.0,
        "gradual pruning inside training (Zhu & Gupta 2017): the sparsity to reach, from --prune-from, "
        "with s_t = s_f + (s_i - s_f)(1 - t/(n dt))^3, masks recomputed on the device every "
        "--prune-every steps (0 = off)",
    )
    prune_from: float = _field(0.0, "gradual: the starting sparsity s_i (a study sets its parent's)")
    prune_end: float = _field(
        0.75, "gradual: the fraction of the run's steps by which --prune-to is reached; training then goes on"
    )
    prune_every: int = _field(0, "gradual: steps between mask updates, dt (0 = once per epoch)")
    prune_score: str = _field(
        "magnitude", "gradual: what is pruned first", choices=("magnitude", "random", "lamp")
    )
    augment: bool = _field(True, "random crop (padding 4) and horizontal flip on training images")
    normalization: str = _field(
        "cifar10",
        "per-channel input standardisation: cifar10 (kuangliu/pytorch-cifar's mean and std), imagenet "
        "(open_lth's, for CIFAR-10 too) or cifar100 (CIFAR-100's training-set statistics)",
        choices=_NORMALIZATIONS,
    )
    eval_batch_size: int = _field(1000, "images per evaluation batch (the whole test set is evaluated)")
    seed: int = _field(0, "seed for initialisation, data order and augmentation")
    steps_per_dispatch: int = _field(
        0,
        "SGD steps per jitted dispatch (a lax.scan); 0 = auto: the whole epoch on a GPU, "
        "1 on a CPU, where XLA runs convolutions inside loops slowly",
        identity=False,
    )
    devices: int = _field(
        0,
        "devices to use (0 = as many as fit). One run: each takes an equal share of every batch. "
        "With a study's --parallel-runs R: N <= R devices each train R/N of the runs; N > R "
        "devices (a multiple of R) form R groups, each splitting one run's batch",
        identity=False,
    )
    progress: bool = _field(True, "show a progress bar", identity=False)
    on_divergence: str = _field(
        "stop",
        "when an epoch's training loss is not finite (NaN or inf): stop stops that run at the end of "
        "the epoch, says so in one line and marks it diverged (a study goes on with the phases that do "
        "not descend from it, then exits with status 1); continue trains on regardless",
        identity=False, choices=("stop", "continue"),
    )
    deterministic: bool = _field(
        False,
        "ask XLA for deterministic GPU kernels (XLA_FLAGS --xla_gpu_deterministic_ops, "
        "--xla_gpu_exclude_nondeterministic_ops), so a resumed GPU run repeats bit for bit; "
        "slower. CPU runs are deterministic either way. Takes effect at process start",
        identity=False,
    )

    def __post_init__(self):
        # --width 0 is the model's published width, written out so that saved configs
        # (and identities) name the width they ran at: a run saved before this field
        # had a default of 0 recorded 64, which resnet18 resolves to.
        if self.width == 0:
            try:
                object.__setattr__(self, "width", models.get(self.model).width)
            except models.ModelError:
                pass  # validate() names the unknown model

    @property
    def num_classes(self) -> int:
        """The model's outputs: the class count of --data."""
        return data.num_classes(self.data)

    def _check_channels(self) -> None:
        from jaxprune import structured  # the channel groups of the model's family

        try:
            groups = structured.coupling(self.model).groups(
                self.model, kernels.abstract_params(kernels.Arch.of(self).whole))
        except structured.ChannelError as e:
            raise ConfigError(f"--channels: {e}") from None
        if len(self.channels) != len(groups) or min(self.channels) < 1:
            raise ConfigError(f"--channels: {self.model} has {len(groups)} channel groups ({groups[0].name}, ...); "
                              f"give a count >= 1 for each, got {len(self.channels)}")

    def validate(self) -> "TrainConfig":
        """Raises ConfigError naming the first bad field; returns self."""
        data.check_spec(self.data)  # DataError is a ValueError with the fix in it
        try:
            models.get(self.model)
        except models.ModelError as e:
            raise ConfigError(f"--model: {e}") from None
        for name in ("epochs", "batch_size", "eval_batch_size", "width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.channels:
            self._check_channels()
        check_layout(self.devices, 1, self.batch_size)
        if self.steps_per_dispatch < 0:
            raise ConfigError(f"--steps-per-dispatch must be >= 0, got {self.steps_per_dispatch}")
        if self.t_max < 0:
            raise ConfigError(f"--t-max must be >= 0 (epochs; 0 = the run's epochs), got {self.t_max}")
        if self.schedule_start < 0:
            raise ConfigError(f"--schedule-start must be >= 0 (epochs), got {self.schedule_start}")
        if not 0 <= self.prune_from <= self.prune_to < 1 and self.prune_to:
            raise ConfigError(
                f"--prune-to must be in (--prune-from, 1), got {self.prune_to} from {self.prune_from}"
            )
        if not 0 < self.prune_end <= 1 or self.prune_every < 0:
            raise ConfigError("--prune-end must be in (0, 1] and --prune-every >= 0")
        if self.val_split < 0:
            raise ConfigError(f"--val-split must be >= 0 (images), got {self.val_split}")
        if self.train_subset < 0:
            raise ConfigError(f"--train-subset must be >= 0, got {self.train_subset}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be in 0..{MAX_SEED}, got {self.seed}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.milestones and self.schedule != "multistep" or self.schedule == "multistep" and not self.milestones:
            raise ConfigError("--milestones and --schedule multistep go together: give both or neither")
        if any(m <= 0 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"--milestones must be increasing epochs > 0, got {' '.join(map(str, self.milestones))}")
        if not 0 < self.gamma < math.inf:
            raise ConfigError(f"--gamma must be a finite number > 0, got {self.gamma}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0 (SGD steps), got {self.warmup_steps}")
        _check_choices(self)
        problem = kernels.exclude_problem(kernels.Arch.of(self), tuple(self.exclude))
        if problem:
            raise ConfigError(problem)
        return self


def _check_choices(cfg) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        for v in (value if isinstance(value, tuple) else (value,)) if choices else ():
            if v not in choices:
                raise ConfigError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {v!r}")


# open_lth's recipe for its CIFAR models (facebookresearch/open_lth, models/cifar_resnet.py and
# models/cifar_vgg.py default_hparams): SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128,
# 160 epochs (training_steps='160ep'), lr x0.1 at epochs 80 and 120 (milestone_steps='80ep,120ep',
# gamma=0.1), no warm-up; kaiming-normal weights and U[0, 1) BatchNorm weights are the models'
# own init (jaxprune.models.cifar_resnet / cifar_vgg). Inputs are standardised with ImageNet's
# mean and std (datasets/cifar10.py); augmentation is crop (padding 4) + flip, as here.
_OPEN_LTH = {"epochs": 160, "weight_decay": 1e-4, "schedule": "multistep", "milestones": (80, 120),
             "gamma": 0.1, "normalization": "imagenet"}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The write-up's recipe on real CIFAR-10 (the defaults).
    "seed": {},
    # A few minutes on one GPU: short runs anneal to 0 to converge.
    "quick": {"epochs": 15, "dtype": "bfloat16", "schedule": "cosine"},
    # Synthetic data at a small width: 33 s on a 2-core CPU (README's timings).
    "smoke": {
        "data": "synthetic:2048,512",
        "schedule": "cosine",
        "width": 4,
        "epochs": 3,
        "batch_size": 64,
        "eval_batch_size": 512,
    },
    # The smoke preset on the two-conv `tiny` model: checks a pipeline (and the tests'
    # machinery) in seconds, where nothing depends on ResNet18.
    "tiny": {
        "data": "synthetic:2048,512",
        "schedule": "cosine",
        "model": "tiny",
        "width": 8,
        "epochs": 3,
        "batch_size": 64,
        "eval_batch_size": 512,
    },
    "openlth-resnet20": {**_OPEN_LTH, "model": "cifar_resnet_20"},
    # open_lth leaves the VGG's output layer unpruned (pruning_layers_to_ignore='fc.weight').
    "openlth-vgg16": {**_OPEN_LTH, "model": "cifar_vgg_16", "exclude": ("fc",)},
}


# ---------------------------------------------------------------- (de)serialising


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict[str, Any]):
    """Builds `cls` from a dict (as saved in JSON), ignoring unknown keys."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value, kind = d[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def identity(cfg, *, changed_only: bool = False) -> dict[str, Any]:
    """The fields that determine results (for refusing to mix runs); with
    changed_only, just those that differ from their defaults (for names)."""
    out = {}
    # A default instance, not the fields' defaults: fields resolved after construction
    # (--width 0 becomes the model's width) compare as they are saved.
    defaults = type(cfg)() if changed_only else None
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("identity", True):
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = identity(value, changed_only=changed_only)
            if changed_only and not value:
                continue
        elif changed_only and value == getattr(defaults, f.name):
            continue
        out[f.name] = value
    return out


def saved_identity(cls, saved: dict[str, Any]) -> dict[str, Any]:
    """The identity of a config saved by any release, read under today's fields.

    A field the saving release did not have reads as its default, so adding a
    field (with a default that reproduces the old behaviour, the rule for every
    new field) never makes an existing run or study "a different run". A field
    since removed is ignored. open_lth names its runs the same way
    (foundations/hparams.py: only fields that differ from their defaults count).
    """
    return identity(from_dict(cls, saved))


def identity_hash(cfg) -> str:
    """Six hex digits of the identity fields that differ from their defaults: a new
    field left at its default never changes a name made from it."""
    text = json.dumps(identity(cfg, changed_only=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two identity dicts."""
    diffs = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {json.dumps(a)} there, {json.dumps(b)} now")
    return diffs
