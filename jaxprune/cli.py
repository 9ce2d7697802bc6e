"""Command line: argument parsing -> config -> one call into the library.

    jaxprune train    [--preset NAME] [--workdir DIR] [options]   train a baseline
    jaxprune evaluate CHECKPOINT [--data SPEC] [--best]           test accuracy + sparsity
    jaxprune study    [--preset NAME] [--workdir DIR] [options]   the whole pruning study
    jaxprune report   WORKDIR                                     figures and tables
    jaxprune export   RUN_OR_PHASE_DIR OUT_DIR [--which best]     PyTorch safetensors
    jaxprune data     cifar10|cifar100 [DIR] [--from FILE]        download CIFAR-10/100 for --data

Every config field is an option, with its documentation as help. A user's
mistake ends in one line on stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from jaxprune.runtime import interrupt
from jaxprune.runtime.errors import UserError

if __name__ == "__main__":  # python -m jaxprune.cli: handle signals before JAX is imported
    interrupt.at_startup()

from jaxprune.study import config as config_lib  # noqa: E402 (JAX comes with these)
from jaxprune.data import sources as data_lib  # noqa: E402
from jaxprune.training import rundir  # noqa: E402

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


# ---------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from jaxprune.runtime import hosts
    from jaxprune.training import loop, train

    cfg = train_config(args).validate()
    workdir = Path(args.workdir) if args.workdir else default_train_workdir(cfg)
    dataset = data_lib.load(cfg.data).prepared(cfg)  # idempotent: the loop keeps it as it is
    images = train.images_per_epoch(cfg, len(dataset.train_labels))
    # Without a progress bar, one line per epoch: where it is, how fast, how long to go.
    lines = not cfg.progress and hosts.primary()
    say = (lambda row: print(epoch_line(workdir.name, row, cfg.epochs, images), flush=True)) if lines else None
    compiled = (lambda s: print(f"{workdir.name}: compiled in {s:.1f} s", flush=True)) if lines else None
    result = loop.train_and_evaluate(cfg, workdir, dataset=dataset, on_epoch=say, on_compiled=compiled)
    last = result.history[-1]
    if loop.stopped_by_divergence(cfg, result.history):
        print(f"jaxprune train: {workdir} diverged at epoch {last['epoch']} (training loss {last['train_loss']}); "
              "stopped there: lower --lr, or --on-divergence continue to train on", file=sys.stderr)
        return 1
    if hosts.primary():
        print(
            f"{workdir}: {len(result.history)} epoch{'s' * (len(result.history) != 1)}, final test accuracy "
            f"{100 * last['test_acc']:.2f}%, best {100 * result.best_test_acc:.2f}%"
        )
    return 0


def epoch_line(name: str, row: dict, epochs: int, images: int) -> str:
    """'run: epoch 3/90, loss 1.2345, test 45.67%, 12.3 s (4,065 images/s), about 17 min left'."""
    from jaxprune.study import driver as study

    seconds = max(row["seconds"], 1e-9)
    left = (epochs - row["epoch"]) * seconds  # at this epoch's pace (compiling is counted apart)
    return (f"{name}: epoch {row['epoch']}/{epochs}, loss {row['train_loss']:.4f}, test {100 * row['test_acc']:.2f}%, "
            f"{seconds:.1f} s ({images / seconds:,.0f} images/s), about {study.duration(left)} left")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jaxprune.training import evaluation

    if args.batch_size is not None and args.batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
    result = evaluation.evaluate_checkpoint(
        args.checkpoint, data_spec=args.data, which="best" if args.best else "latest",
        batch_size=args.batch_size,
    )
    print(result.summary())
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from jaxprune import api
    from jaxprune.runtime import hosts
    from jaxprune.study import driver as study

    cfg = study_config(args).validate()
    workdir = Path(args.workdir) if args.workdir else default_study_workdir(cfg)
    results = api.run_study(cfg, workdir, report=not args.no_report)
    if hosts.primary():  # the job's files are process 0's
        print(f"results: {results}")
    bad, skipped = study.casualties(workdir)
    if bad and cfg.train.on_divergence == "stop":
        if hosts.primary():
            print(f"jaxprune study: {len(bad)} phase{'s' * (len(bad) != 1)} diverged ("
                  + ", ".join(f"{p.name} at epoch {e}" for p, e in bad[:4]) + (", ..." if len(bad) > 4 else "")
                  + f") and {len(skipped)} descending from them were not trained; they are marked in "
                  "results.csv and the report. Lower --lr, or --on-divergence continue to train on", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from jaxprune.report import report
    except ImportError as e:
        raise UsageError(f"the report needs pandas and scipy ({e}); install them") from None

    path = report.write_report(args.workdir, args.out)
    print(f"report: {path}")
    for p in sorted(path.parent.iterdir()):
        if p != path and not p.name.startswith("."):
            print(f"  {p.name}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from jaxprune.data import download

    layout = data_lib.BINARY[args.dataset]
    directory = args.dir or layout.default_dir
    got = download.fetch(args.dataset, directory, source=args.source, progress=not args.no_progress)
    counts = f"{got.n_train:,} training and {got.n_test:,} test images"
    if got.written:
        print(f"{got.folder}: {layout.title} written ({counts}); use --data {layout.name}-bin:{directory}")
    else:
        print(f"{got.folder}: {layout.title} already present ({counts}); left as it is")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "study": cmd_study, "report": cmd_report}
COMMANDS["data"] = cmd_data


def cmd_export(args: argparse.Namespace) -> int:
    from jaxprune import export

    info = export.export(args.run, args.out_dir, which=args.which)
    acc = info["metrics"].get("test_acc")
    acc = f", test accuracy {100 * acc:.2f}%" if acc is not None else ""
    print(
        f"{args.out_dir}: epoch {info['source']['epoch']} ({args.which}) of {args.run}, "
        f"global sparsity {100 * info['sparsity']['global']:.2f}%{acc}"
    )
    return 0


COMMANDS["export"] = cmd_export


def _as_option(name: str, value) -> str:
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {_show(value)}"


def cmd_presets(args: argparse.Namespace) -> int:
    """Prints what each preset sets (only the fields it changes from the defaults)."""
    tables = {"train": config_lib.TRAIN_PRESETS, "study": config_lib.STUDY_PRESETS}
    known = sorted({n for c, t in tables.items() if args.command_name in (None, c) for n in t})
    if args.name is not None and args.name not in known:
        raise UsageError(f"no preset {args.name!r}; the presets are {', '.join(known)}")
    for command, presets in tables.items():
        if args.command_name not in (None, command):
            continue
        for name, values in presets.items():
            if args.name not in (None, name):
                continue
            flat = {**{k: v for k, v in values.items() if k != "train"}, **values.get("train", {})}
            if command == "study":  # a study sets each phase's epochs itself
                flat.pop("epochs", None)
            settings = " ".join(_as_option(k, v) for k, v in flat.items()) or "(the defaults)"
            print(f"jaxprune {command} --preset {name}: {settings}")
    return 0


COMMANDS["presets"] = cmd_presets


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


def _join_job(args: argparse.Namespace) -> None:
    """jax.distributed.initialize for --distributed (before anything uses a device)."""
    given = [f for f in ("coordinator_address", "num_processes", "process_id")
             if getattr(args, f, None) not in (None, "", 0, -1)]
    if not getattr(args, "distributed", False):
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    if args.num_processes < 0:
        raise UsageError(f"--num-processes must be >= 1 (0 = from the environment), got {args.num_processes}")
    if args.num_processes and not -1 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    from jaxprune.runtime import hosts

    try:
        hosts.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"could not join the multi-process job ({str(e).splitlines()[0][:200]}); "
                         "give --coordinator-address, --num-processes and --process-id, or JAX's "
                         "JAX_* environment") from None


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
    # The study sets these per phase (a round's epochs, gradual sparsities, lr-rewind's offset).
    _add_config_options(p, config_lib.TrainConfig, exclude=("epochs", "prune_to", "prune_from", "schedule_start"),
                        preset=study_preset and (preset, study_preset[1].get("train", {})))
    _add_distributed_options(p)

    p = sub.add_parser(
        "report",
        help="figures and tables from a study's results.csv",
        description="Write the write-up's figures (PNG) and tables (markdown and CSV) from "
        "WORKDIR/results.csv into WORKDIR/report/.",
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


def enable_compilation_cache() -> None:
    """Keeps compiled steps across processes, so a resumed run starts in seconds.

    JAX_COMPILATION_CACHE_DIR, when set, wins; JAXPRUNE_XLA_CACHE=0 turns it off.
    """
    import jax

    if os.environ.get("JAXPRUNE_XLA_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(Path("~/.cache/jaxprune/xla").expanduser()))


# XLA's flags for deterministic GPU kernels; read once, when the backend starts.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true")


def request_determinism() -> None:
    """Adds the deterministic-kernel flags to XLA_FLAGS, before JAX starts its backend."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, *(f for f in DETERMINISTIC_XLA_FLAGS if f not in flags)])


def _usage(message: str) -> int:
    print(f"jaxprune: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_preset_asked(argv))
    args = parser.parse_args(argv)
    if getattr(args, "deterministic", None):
        request_determinism()
    if getattr(args, "host_timeout", None) is not None:
        if args.host_timeout <= 0:
            return _usage(f"--host-timeout must be > 0 seconds, got {args.host_timeout}")
        os.environ["JAXPRUNE_HOST_TIMEOUT_S"] = str(args.host_timeout)
    from jaxprune.runtime import hosts

    hosts.request_collective_timeouts()
    enable_compilation_cache()
    from jaxprune.training.checkpoint import WriteError, install_quiet_hooks, storage_cause

    install_quiet_hooks()
    from jaxprune.runtime.interrupt import Interrupted

    try:
        _join_job(args)
        # Training stops at its next safe point; the rest write through temporary names and stop at once.
        scope = interrupt.stop_at_safe_points if args.command in ("train", "study") else interrupt.stop_at_once
        with scope():
            try:
                return _leave_job(COMMANDS[args.command](args))
            except Exception as e:
                # A library wrapped the stop in an error of its own (Orbax's reads do): it is the stop.
                if scope is interrupt.stop_at_once and (signum := interrupt.requested()) is not None:
                    raise Interrupted(signum) from e
                raise
    except UserError as e:  # every module's own kind, one line each
        print(f"jaxprune {args.command}: error: {e}", file=sys.stderr)
        return _leave_job(EXIT_USAGE)
    except Interrupted as e:
        if args.command in ("train", "study"):
            print(f"jaxprune {args.command}: {e} after saving the last epoch; rerun the same command to resume",
                  file=sys.stderr)
        else:
            print(f"jaxprune {args.command}: {e}; what it had written before is left as it was", file=sys.stderr)
        return _leave_job(e.exit_code)
    except KeyboardInterrupt:
        print(f"jaxprune {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return _leave_job(130)
    except BrokenPipeError:  # `jaxprune report ... | head`: the reader left; end quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _leave_job(141)
    except (WriteError, OSError) as e:
        cause = storage_cause(e)
        if not isinstance(e, WriteError) and cause is None:
            raise
        text = str(e) if isinstance(e, WriteError) else (
            f"cannot write {getattr(e, 'filename', None) or 'a file'} ({cause}); free space (or make the "
            "folder writable) and rerun the same command to resume")
        print(f"jaxprune {args.command}: error: {text}", file=sys.stderr)
        # At once: Orbax's threads of a failed write can wait minutes for a folder
        # that never appears. Everything kept is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except Exception:
        from jaxprune.runtime import hosts

        if hosts.count() > 1:  # out at once (see _leave_job), with what to do
            import traceback

            traceback.print_exc()
            e = sys.exc_info()[1]
            print(f"jaxprune {args.command}: error: this process of the job failed ({type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:160]}); if another host died, rerun the same "
                  "command on every host to resume", file=sys.stderr)
            _leave_job(1)
        raise


def _leave_job(code: int) -> int:
    """Returns `code`; in a multi-process job that failed, exits at once instead.

    A process that exits normally waits at JAX's shutdown barrier for the
    others, which may be waiting for it in a collective: both would hang until
    the heartbeat timeout. Leaving at once lets JAX tell the other processes
    that this one died, and they end with that line.
    """
    from jaxprune.runtime import hosts

    if code and hosts.count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code

if __name__ == "__main__":
    sys.exit(main())
