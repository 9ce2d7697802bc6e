"""The command line's commands: one function per `jaxprune COMMAND` (`cmd_train`, `cmd_study`,
`cmd_evaluate`, `cmd_report`, `cmd_data`, `cmd_export`, `cmd_presets`), each from parsed
arguments to one call into the library, and `COMMANDS`, the table `main` dispatches through.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxprune.cli.parser import (
    UsageError, _show, default_study_workdir, default_train_workdir, study_config, train_config,
)
from jaxprune.study import config as config_lib  # JAX comes with these
from jaxprune.data import sources as data_lib


def cmd_train(args: argparse.Namespace) -> int:
    from jaxprune.runtime import hosts
    from jaxprune.training import loop

    cfg = train_config(args).validate()
    workdir = Path(args.workdir) if args.workdir else default_train_workdir(cfg)
    dataset = data_lib.load(cfg.data).prepared(cfg)  # idempotent: the loop keeps it as it is
    # Without a progress bar, one line per epoch: where it is, how fast, how long to go.
    lines = not cfg.progress and hosts.primary()
    say = (lambda row: print(epoch_line(workdir.name, row, cfg.epochs), flush=True)) if lines else None
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


def epoch_line(name: str, row: dict, epochs: int) -> str:
    """'run: epoch 3/90, loss 1.2345, test 45.67%, 12.3 s (4,065 images/s), about 17 min left'."""
    from jaxprune.study import driver as study

    seconds = max(row["seconds"], 1e-9)
    left = (epochs - row["epoch"]) * seconds  # at this epoch's pace (compiling is counted apart)
    return (f"{name}: epoch {row['epoch']}/{epochs}, loss {row['train_loss']:.4f}, test {100 * row['test_acc']:.2f}%, "
            f"{seconds:.1f} s ({row['images_per_s']:,.0f} images/s), about {study.duration(left)} left")


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
    if cfg.executor == "ray":  # Ray before JAX starts in this process
        from jaxprune.study import ray_executor

        ray_executor.init(cfg.ray_address)
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
