"""The command line's parser, apart from its commands: `build_parser` (one option per config
field, its documentation as help; `--preset NAME --help` shows the preset's values), the configs
and default run directories the options give (`train_config`, `study_config`,
`default_train_workdir`, `default_study_workdir`), and `UsageError`, a mistake in them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Sequence

from jaxprune.runtime.errors import UserError
from jaxprune.study import config as config_lib  # JAX comes with these
from jaxprune.data import sources as data_lib
from jaxprune.training import rundir

EXIT_USAGE = 2


class UsageError(UserError):
    """A mistake in the command line's arguments: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _add_config_options(parser: argparse.ArgumentParser, cls, prefix: str = "", exclude=(),
                        preset: tuple[str, dict] | None = None) -> None:
    """One option per dataclass field, help from the field's metadata; defaults come later.
    preset (name, values): `--preset NAME --help` shows what the preset sets beside each default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) or f.name in exclude:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        one_of = f"; one of {', '.join(choices)}" if choices else ""
        shown = f"default: {_show(default)}"
        if preset is not None and f.name in preset[1] and preset[1][f.name] != default:
            shown = f"--preset {preset[0]}: {_show(preset[1][f.name])}; default: {_show(default)}"
        help_text = f"{f.metadata.get('help', '')}{one_of} ({shown})"
        dest = prefix + f.name
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is tuple:
            inner = typing.get_args(kind)[0]
            parser.add_argument(flag, dest=dest, type=inner, nargs="+", default=None, help=help_text,
                                metavar=f.name.upper().rstrip("S"))
        else:
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text,
                                choices=choices, metavar=f.name.upper())


def _show(value) -> str:
    if isinstance(value, tuple):
        value = " ".join(map(str, value))
    return "none" if value == "" else str(value)


def _overrides(args: argparse.Namespace, cls, prefix: str = "") -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name == "train":
            continue
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def train_config(args: argparse.Namespace) -> config_lib.TrainConfig:
    preset = config_lib.TRAIN_PRESETS[args.preset] if args.preset else {}
    return config_lib.TrainConfig(**{**preset, **_overrides(args, config_lib.TrainConfig)})


def default_train_workdir(cfg: config_lib.TrainConfig) -> Path:
    """runs/train-<model>-<data kind>-w<width>-e<epochs>-<dtype>-s<seed>-<hash of the non-default recipe fields>."""
    kind = cfg.data.split(":")[0]
    rest = f"{kind}-w{cfg.width}-e{cfg.epochs}-{cfg.dtype}-s{cfg.seed}"
    # Releases before the model registry left the model out of the name.
    legacy = (f"train-{rest}",) if cfg.model == "resnet18" else ()
    return rundir.default_directory(Path("runs"), f"train-{cfg.model}-{rest}", cfg, study=False, legacy_stems=legacy)


def study_config(args: argparse.Namespace) -> config_lib.StudyConfig:
    train_over = _overrides(args, config_lib.TrainConfig)
    train_over.pop("epochs", None)
    return config_lib.study_preset(args.preset, train=train_over, **_overrides(args, config_lib.StudyConfig))


def default_study_workdir(cfg: config_lib.StudyConfig) -> Path:
    """runs/study-<model>-<data kind>-w<width>-b<baseline epochs>-r<round epochs>-<dtype>-s<seed>-<hash of the
    non-default recipe fields>.

    From the shared recipe alone (not the methods, schedules or targets), so
    that studies which differ only in what they cover grow one directory:
    `scripts/oneshot.py` then `scripts/iterative.py` share one baseline.
    """
    t = cfg.train
    rest = f"{t.data.split(':')[0]}-w{t.width}-b{cfg.baseline_epochs}-r{cfg.round_epochs}-{t.dtype}-s{t.seed}"
    legacy = (f"study-{rest}",) if t.model == "resnet18" else ()
    return rundir.default_directory(Path("runs"), f"study-{t.model}-{rest}", cfg, study=True, legacy_stems=legacy)



# ---------------------------------------------------------------- the parser


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several hosts",
        "Run the same command on every host. Process 0 writes the directory's files; Orbax "
        "checkpoints are written by all. Under SLURM (or Open MPI) --distributed alone is enough.",
    )
    g.add_argument("--distributed", action="store_true",
                   help="join a JAX multi-process job (jax.distributed.initialize) before training; "
                        "its settings come from the options below or from JAX's environment "
                        "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or cluster")
    g.add_argument("--coordinator-address", default="", metavar="HOST:PORT",
                   help="with --distributed: process 0's address and a free port, the same on every host")
    g.add_argument("--num-processes", type=int, default=0, metavar="N",
                   help="with --distributed: how many processes the job has")
    g.add_argument("--process-id", type=int, default=-1, metavar="I",
                   help="with --distributed: this process's index, 0 to N-1 (0 writes the files)")
    g.add_argument("--host-timeout", type=int, default=None, metavar="SECONDS",
                   help="how long a process waits for the others (joining, collectives, barriers, "
                        "checkpoint writes, leaving) before the job fails; a slow host is only slow, "
                        "and a dead one is noticed by JAX's heartbeat in about 100 s (default: "
                        "JAXPRUNE_HOST_TIMEOUT_S, else 1800)")


def _preset_asked(argv: Sequence[str]) -> str | None:
    """The --preset NAME in a command line, so that its --help can show the preset's values."""
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return None


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The command line; `preset` (a --preset NAME already given) only changes what --help shows."""
    train_preset = (preset, config_lib.TRAIN_PRESETS[preset]) if preset in config_lib.TRAIN_PRESETS else None
    study_preset = (preset, config_lib.STUDY_PRESETS[preset]) if preset in config_lib.STUDY_PRESETS else None
    parser = _Parser(
        prog="jaxprune",
        description="Global unstructured pruning studies (one-shot vs iterative): ResNet18 on CIFAR-10 "
        "as the write-up, open_lth's CIFAR ResNets and VGGs, CIFAR-100, or your own registered model and data.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a baseline (ResNet18 unless --model); rerunning the same command resumes it",
        description="Train --model (ResNet18 by default) with masked SGD, checkpointing every epoch to WORKDIR. "
        "Rerunning the same command in the same WORKDIR resumes from the last complete epoch.",
    )
    p.add_argument("--preset", choices=sorted(config_lib.TRAIN_PRESETS),
                   help="start from a named config: seed (the write-up's recipe), quick (a few GPU "
                        "minutes), smoke (synthetic data: 33 s on a 2-core CPU, see README), openlth-resnet20 "
                        "and openlth-vgg16 (open_lth's recipe for those models); options override it")
    p.add_argument("--workdir", help="run directory (default: runs/train-... named by the settings)")
    _add_config_options(p, config_lib.TrainConfig, preset=train_preset)
    _add_distributed_options(p)

    p = sub.add_parser(
        "evaluate",
        help="test accuracy and sparsity of a checkpoint, on whatever device is present",
        description="Restore a checkpoint (written on a GPU or a CPU) on this machine's device and "
        "print its test accuracy and sparsity report.",
    )
    p.add_argument("checkpoint", help="a run directory, its checkpoints/ folder, or one epoch's folder")
    p.add_argument("--data", help="data source to evaluate on (default: the one the run trained on)")
    p.add_argument("--best", action="store_true", help="use the run's best epoch instead of the latest: by validation accuracy when it held out --val-split images, else by test accuracy")
    p.add_argument("--batch-size", type=int, help="images per evaluation batch (default: the run's)")

    p = sub.add_parser(
        "study",
        help="the whole study: baseline, one-shot and iterative pruning with retraining, then the report",
        description="Train a baseline (or take --baseline), prune it one-shot and iteratively by the "
        "chosen methods to the targets, retraining after every pruning step, and write the report. "
        "Each phase lives in WORKDIR/<schedule>-<method>-<target>/round-NN/; rerunning the same "
        "command resumes, skipping finished phases.",
    )
    p.add_argument("--preset", choices=sorted(config_lib.STUDY_PRESETS),
                   help="start from a named study: seed (the write-up: 90-epoch phases on CIFAR-10), "
                        "quick (short bf16 rounds, shared chain: minutes on a GPU), smoke (synthetic "
                        "data: 117 s on a 2-core CPU, see README), openlth-resnet20 and openlth-vgg16 (open_lth's "
                        "lottery runs: 160-epoch levels, 20%% pruned per level, rewound to initialisation); "
                        "options override it")
    p.add_argument("--workdir", help="study directory (default: runs/study-... named by the settings)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    _add_config_options(p, config_lib.StudyConfig, preset=study_preset)
    # The study sets these per phase (a round's epochs, gradual sparsities, lr-rewind's offset,
    # a channel-pruned phase's channels).
    _add_config_options(p, config_lib.TrainConfig, exclude=("epochs", "prune_to", "prune_from", "schedule_start",
                                                             "channels"),
                        preset=study_preset and (preset, study_preset[1].get("train", {})))
    _add_distributed_options(p)

    p = sub.add_parser(
        "report",
        help="figures and tables from a study's results.csv",
        description="Write the write-up's figures (PNG) and tables (markdown and CSV) from "
        "WORKDIR/results.csv into WORKDIR/report/. Table 12 and buys.png give what pruning buys, as "
        "ShrinkBench counts it: params and non-zero params, and multiply-adds (MACs) of the conv and "
        "dense layers per image, dense and left by the masks (flops, flops_nz in results.csv). These are "
        "multiply-adds: XLA's cost_analysis counts 2 FLOPs per multiply-add, and counts masked weights "
        "as dense; the speedup (flops / flops_nz) is theoretical.",
    )
    p.add_argument("workdir", help="a study directory (or its results.csv)")
    p.add_argument("--out", help="output folder (default: WORKDIR/report)")

    p = sub.add_parser(
        "data",
        help="download a real data set (CIFAR-10 or CIFAR-100) for --data",
        description="Download the binary version of CIFAR-10 (170 MB) or CIFAR-100 (169 MB) from "
        "www.cs.toronto.edu, check its size, MD5 and SHA-256, and unpack it into "
        "DIR/cifar-10-batches-bin/ (DIR/cifar-100-binary/), the layout --data cifar10-bin:DIR "
        "(cifar100-bin:DIR) reads. Valid data already in DIR is left alone. A failed run "
        "leaves nothing behind.",
    )
    p.add_argument("dataset", choices=list(data_lib.BINARY), help="the data set to fetch: cifar10 or cifar100")
    p.add_argument("dir", nargs="?", default=None, metavar="DIR",
                   help=f"where to put it (default: {data_lib.DEFAULT_CIFAR10_DIR}, the default --data's "
                        f"directory, for cifar10; {data_lib.BINARY['cifar100'].default_dir} for cifar100)")
    p.add_argument("--from", dest="source", metavar="FILE",
                   help="use this already-downloaded cifar-10-binary.tar.gz (cifar-100-binary.tar.gz) instead "
                        "of downloading (checked the same way)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while downloading or checking")

    p = sub.add_parser(
        "export",
        help="write a checkpoint as a PyTorch state_dict (safetensors) for the model it mirrors",
        description="Write OUT_DIR/model.safetensors (a state_dict that the PyTorch model the run's "
        "--model mirrors loads with strict=True: kuangliu/pytorch-cifar's ResNet18, open_lth's "
        "cifar_resnet_N or cifar_vgg_N; a registered model of your own keeps its Flax paths; pruned "
        "weights exactly 0), OUT_DIR/masks.safetensors "
        "(bool, True = kept, under the same keys) and OUT_DIR/config.json (the run's config, the "
        "epoch, its metrics and the sparsity, global and per layer). OUT_DIR must be new, empty, "
        "or a previous export, which is replaced; a failure leaves it as it was.",
    )
    p.add_argument("run", metavar="RUN_OR_PHASE_DIR",
                   help="a training run or study phase directory, its checkpoints/ folder, or one "
                        "epoch's folder (which then overrides --which)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the three files into")
    p.add_argument("--which", choices=("best", "latest"), default="latest",
                   help="best: the epoch with the highest validation accuracy when the run held out "
                        "--val-split images, else test accuracy; latest: the last saved epoch, what a study "
                        "prunes and what evaluate reads by default (default: %(default)s)")

    p = sub.add_parser(
        "presets",
        help="what each --preset sets",
        description="Print each preset's settings for train and study (the fields it changes from "
        "the defaults), as the options that would set them. `jaxprune train --preset NAME --help` "
        "shows them beside each option too.",
    )
    p.add_argument("command_name", nargs="?", choices=("train", "study"), metavar="COMMAND",
                   help="train or study (default: both)")
    p.add_argument("name", nargs="?", help="one preset (default: all)")
    return parser
