"""The command line: the smoke preset end to end, evaluate, help, and one-line errors."""

import csv
import dataclasses
import re
import subprocess
import sys

import pytest

from jaxprune import cli


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxprune", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_smoke_preset_trains_and_evaluates(tmp_path, capsys):
    workdir = tmp_path / "smoke"
    assert cli.main(["train", "--preset", "tiny", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 epochs" in out
    # Without a progress bar, a line per epoch: loss, accuracy, seconds, speed, time left.
    lines = [line for line in out.splitlines() if line.startswith("smoke: epoch ")]
    assert [line.split(",")[0] for line in lines] == ["smoke: epoch 1/3", "smoke: epoch 2/3", "smoke: epoch 3/3"]
    assert all(re.search(r", [\d.]+ s \([\d,]+ images/s\), about [\d.]+ (s|min|h) left$", line) for line in lines), lines
    with open(workdir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    final_acc = float(rows[-1]["test_acc"])
    assert final_acc > 0.5  # chance is 0.1
    # Rerunning the finished command does no more work and succeeds.
    assert cli.main(["train", "--preset", "tiny", "--workdir", str(workdir), "--no-progress"]) == 0
    assert len((workdir / "metrics.csv").read_text().splitlines()) == 4
    # Evaluate in a fresh process: the same accuracy as recorded.
    result = run_cli("evaluate", str(workdir))
    assert result.returncode == 0, result.stderr
    assert f"test accuracy {100 * final_acc:.2f}%" in result.stdout
    assert "global sparsity 0.00%" in result.stdout and "conv2/kernel" in result.stdout


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--epochs", "--batch-size", "--lr", "--width", "--seed", "--dtype",
                 "--momentum", "--weight-decay", "--schedule", "--preset", "--workdir", "--progress"):
        assert flag in out
    assert "default: 90" in out  # the write-up's epochs


@pytest.mark.parametrize(
    "args, words",
    [
        (["evaluate", "{tmp}/missing"], "does not exist"),
        (["evaluate", "{tmp}"], "not a jaxprune checkpoint"),
        (["train", "--epochs", "0", "--workdir", "{tmp}/w"], "--epochs must be > 0"),
        (["train", "--batch-size", "-1", "--workdir", "{tmp}/w"], "--batch-size must be > 0"),
        (["train", "--data", "mnist", "--workdir", "{tmp}/w"], "unknown data source 'mnist'"),
        (["train", "--data", "cifar10-bin:{tmp}/nothing", "--workdir", "{tmp}/w"], "no CIFAR-10 binary data"),
        (["train", "--preset", "smoke", "--batch-size", "4096", "--drop-last", "--workdir", "{tmp}/w"], "larger than the 2048"),
        (["train", "--dtype", "float16"], "invalid choice"),
        (["train", "--epochs", "many"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, words):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path / "empty") if a == "{tmp}" else str(tmp_path)) for a in args]
    try:  # in-process: argparse's mistakes end in SystemExit(2), the rest return 2
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert words in lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--workdir", "/proc/jaxprune-no-such-dir"], "cannot use /proc/jaxprune-no-such-dir as a directory"),
        (["train", "--workdir", "{tmp}/afile"], "as a directory (File exists)"),
        (["study", "--workdir", "{tmp}/afile"], "as a directory (File exists)"),
        (["train", "--exclude", "stem_conv", "hed", "--workdir", "{tmp}/w"], "--exclude 'hed' matches no kernel"),
        (["train", "--exclude", "*", "--workdir", "{tmp}/w"], "leaves no kernel to prune"),
        (["train", "--lr", "inf", "--workdir", "{tmp}/w"], "--lr must be a finite number > 0, got inf"),
        (["train", "--weight-decay", "nan", "--workdir", "{tmp}/w"], "--weight-decay must be a finite number"),
        (["train", "--train-subset", "5000", "--workdir", "{tmp}/w"], "--train-subset 5000 is more than the 2048"),
        (["study", "--schedules", "gradual", "--retrain", "finetune", "--workdir", "{tmp}/w"], "add retrain to --retrain"),
        (["train", "--seed", "99999999999999999999", "--workdir", "{tmp}/w"], "--seed must be in 0..2147483647"),
        (["study", "--seed", "-1", "--workdir", "{tmp}/w"], "--seed must be in 0..2147483647, got -1"),
        (["study", "--seeds", "0", "4294967296", "--workdir", "{tmp}/w"], "--seeds must each be in 0..2147483647"),
        (["study", "--targets", "0.5", "0.99999", "--workdir", "{tmp}/w"], "target 0.99999 prunes all of the"),
        (["study", "--targets", "0.000001", "--workdir", "{tmp}/w"], "target 1e-06 prunes none of the"),
    ],
)
def test_more_mistakes_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, args, words):
    (tmp_path / "afile").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main([args[0], "--preset", "smoke", "--no-progress", *args[1:]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "w").exists() and (tmp_path / "afile").read_text() == ""


def test_the_study_does_not_offer_what_it_sets_per_phase(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "--preset", "smoke", "--prune-to", "0.8"])
    assert e.value.code == 2 and "unrecognized arguments: --prune-to 0.8" in capsys.readouterr().err
    from jaxprune import config

    with pytest.raises(config.ConfigError, match="--schedule-start is set by the study"):
        config.study_preset("smoke", train={"schedule_start": 3}).validate()


@pytest.mark.slow
def test_a_study_trains_without_pandas_and_says_how_to_report(tmp_path):
    # The GPU machine's image has no pandas: the study must still train and keep
    # its results. In a fresh process, where `import pandas` is made to fail.
    w = tmp_path / "s"
    args = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--baseline-epochs", "1", "--round-epochs", "1",
            "--methods", "magnitude", "--targets", "0.5", "--schedules", "oneshot", "--no-progress", "--workdir", str(w)]
    script = f"import sys; sys.modules['pandas'] = None; from jaxprune import cli; sys.exit(cli.main({args!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "jaxprune study: report skipped" in result.stderr and f"jaxprune report {w}" in result.stderr
    assert len(list(csv.DictReader(open(w / "results.csv")))) == 2 and not (w / "report").exists()


def test_presets_are_listed_and_shown_in_help(capsys):
    assert cli.main(["presets", "study", "smoke"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["jaxprune study --preset smoke: --baseline-epochs 3 --round-epochs 1 --step 0.5 --shared-chain "
                   "--data synthetic:2048,512 --schedule cosine --width 4 --batch-size 64 --eval-batch-size 512"]
    assert cli.main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert "jaxprune train --preset seed: (the defaults)" in listed and "jaxprune train --preset quick:" in listed
    assert cli.main(["presets", "train", "tinier"]) == 2
    assert "no preset 'tinier'; the presets are openlth-resnet20, openlth-vgg16, quick, seed, smoke, tiny" in capsys.readouterr().err
    # Each listed setting is a real option: the smoke line, given back to study, builds the preset's config.
    settings = out[0].split(": ", 1)[1].split()
    listed, preset = (cli.study_config(cli.build_parser().parse_args(a))
                      for a in (["study", *settings], ["study", "--preset", "smoke"]))
    # The study sets each phase's epochs itself, so the preset's train epochs are not listed.
    assert dataclasses.replace(listed, train=dataclasses.replace(listed.train, epochs=3)) == preset
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "smoke", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(--preset smoke: 3; default: 90)" in text and "(--preset smoke: 4; default: 0)" in text
