"""A study directory that is safe to share, to grow and to interrupt.

One process per directory, studies that grow, exact phase names, damage
survived, baselines from anywhere, signals, and SIGKILL at random moments.
Every subprocess has a time bound.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxprune.training import checkpoint, evaluation, rundir
from jaxprune import cli, config
from jaxprune.study import driver as study

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "jaxprune"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def strip(rows):
    return [{k: v for k, v in r.items() if k not in rundir.TIMING_FIELDS} for r in rows]


def wait_for(predicate, timeout, proc=None, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---------------------------------------------------------------- one process per directory


@pytest.mark.slow
def test_a_second_process_is_refused_at_once_and_the_first_run_is_whole(tmp_path):
    w = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--epochs", "4", "--workdir", str(w), "--no-progress"]
    go = tmp_path / "go"  # the first run is held after its first epoch until this exists
    env = {**os.environ, "JAXPRUNE_FAULT": "metrics-row:1:pause", "JAXPRUNE_FAULT_PATH": str(go)}
    first = subprocess.Popen([*PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: lines(w / "metrics.csv") >= 2, 300, first, "the first epoch")
        second = subprocess.run([*PY, *args], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and f"pid {first.pid}" in err[0] and "in use" in err[0], second.stderr
        go.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    rows = rundir.read_metrics(w)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert lines(w / "metrics.csv") == 1 + 4


@pytest.mark.slow
def test_a_refused_process_writes_nothing(tmp_path):
    w = tmp_path / "study"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom jaxprune import rundir\n"
         "with rundir.locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(w)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run([*PY, "study", "--preset", "tiny", "--workdir", str(w)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and f"pid {holder.pid}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert [p.name for p in w.iterdir()] == [rundir.LOCK]
    finally:
        holder.kill()


# ---------------------------------------------------------------- studies grow


GROW = ["--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude", "--targets", "0.5", "--baseline-epochs", "2",
        "--no-progress", "--no-report"]


@pytest.mark.slow
def test_oneshot_then_iterative_grow_one_study_with_one_baseline(tmp_path):
    runs = []
    for script in ("oneshot.py", "iterative.py"):
        runs.append(subprocess.run([sys.executable, str(ROOT / "scripts" / script), *GROW],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=600))
        assert runs[-1].returncode == 0, runs[-1].stderr[-2000:]
    studies = list((tmp_path / "runs").iterdir())
    assert len(studies) == 1  # the default directory comes from the shared recipe alone
    w = studies[0]
    # The baseline was reused, not trained again.
    assert "baseline:" not in runs[1].stdout and "2 phases (1 finished), 1 of 3 epochs" in runs[1].stdout
    assert [r["epoch"] for r in rundir.read_metrics(w / "baseline")] == [1, 2]
    rows = read_rows(w / "results.csv")
    assert [(r["schedule"], r["round"]) for r in rows] == [("baseline", "0")] * 2 + [("oneshot", "1"), ("iterative", "1")]
    assert [p.name for p in study.recorded_phases(w)] == [
        "baseline", "oneshot-magnitude-0.50/round-01", "iterative-magnitude-0.50/round-01"]
    # What finished phases depend on may not change under them.
    changed = subprocess.run([sys.executable, str(ROOT / "scripts" / "iterative.py"), *GROW, "--step", "0.3",
                              "--workdir", str(w)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "step: 0.5 there, 0.3 now" in changed.stderr


def test_targets_are_named_exactly_and_duplicates_refused(tmp_path, capsys):
    cfg = config.study_preset("seed", targets=(0.875, 0.88), methods=("random",))
    phases = study.plan(cfg, 11_164_352)
    chains = {p.chain for p in phases} - {"baseline"}
    assert chains == {"oneshot-random-0.875", "oneshot-random-0.88", "iterative-random-0.875", "iterative-random-0.88"}
    seeds = {study.phase_config(cfg, p).seed for p in phases if p.round == 1}
    assert len(seeds) == 4
    assert study.target_name(0.5) == "0.50" and study.target_name(0.875) == "0.875"
    code = cli.main(["study", "--preset", "tiny", "--targets", "0.5", "0.75", "0.5", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--targets lists 0.5 more than once" in err[0]
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- damage


def _truncate_files(folder: Path) -> int:
    n = 0
    for p in folder.rglob("*"):
        if p.is_file() and p.stat().st_size > 1:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
            n += 1
    return n


@pytest.mark.slow
def test_a_truncated_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, capsys):
    # An lr at which epoch 1 stays the best (7.81%, never beaten: a tie keeps the first), so
    # the best and the latest are two kept steps and evaluate's fallback is required below.
    args = ["train", "--preset", "tiny", "--data", "synthetic:256,64", "--epochs", "3", "--lr", "2",
            "--no-progress", "--workdir"]
    assert cli.main([*args, str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    assert cli.main([*args, str(cut)]) == 0
    steps = sorted(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 3]
    assert _truncate_files(cut / "checkpoints" / "3") > 0  # as a kill or a full disk leaves it
    capsys.readouterr()
    assert cli.main([*args, str(cut)]) == 0  # the rerun reports it, sets it aside and retrains
    err = capsys.readouterr().err
    assert "cannot be read" in err and "moved aside to 3.damaged" in err and "Traceback" not in err
    assert (cut / "checkpoints" / "3.damaged").is_dir()
    assert strip(rundir.read_metrics(cut)) == strip(rundir.read_metrics(tmp_path / "whole"))
    # evaluate skips an unreadable step in one line and uses the other kept one.
    _truncate_files(cut / "checkpoints" / "3" / checkpoint.META)
    result = subprocess.run([*PY, "evaluate", str(cut)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr and result.returncode == 0, result.stderr
    assert "checkpoints/3 cannot be read" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "test accuracy" in result.stdout and "epoch 1" in result.stdout


@pytest.mark.slow
def test_a_damaged_final_step_that_a_grown_study_needs_is_repaired_by_the_rerun(tmp_path, capsys):
    w = tmp_path / "s"
    args = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude", "--schedules",
            "oneshot", "--baseline-epochs", "2", "--workdir", str(w), "--no-progress", "--no-report"]
    assert cli.main([*args, "--targets", "0.5"]) == 0
    final = w / "baseline" / "checkpoints" / "2"
    data = max((final / checkpoint.MODEL).glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])  # the arrays' data file cut short
    capsys.readouterr()
    assert cli.main([*args, "--targets", "0.5", "0.6"]) == 0  # the new target needs the baseline's weights
    out, err = capsys.readouterr()
    assert "moved aside to 2.damaged" in err and "Traceback" not in err
    assert "[again] baseline: its final epoch is damaged; training it again" in out
    assert (w / "baseline" / "checkpoints" / "2.damaged").is_dir()
    assert [r["epoch"] for r in rundir.read_metrics(w / "baseline")] == [1, 2]
    assert rundir.read_metrics(w / "oneshot-magnitude-0.60" / "round-01")
    capsys.readouterr()
    assert cli.main([*args, "--targets", "0.5", "0.6"]) == 0  # and then all is finished
    assert "3 phases (3 finished), 0 of 4 epochs to train" in capsys.readouterr().out


@pytest.mark.slow
def test_a_torn_results_csv_is_rebuilt_by_the_report(tmp_path, small_study):
    w = Path(shutil.copytree(small_study, tmp_path / "s"))
    whole = (w / "results.csv").read_bytes()
    (w / "results.csv").write_bytes(whole[: len(whole) - 20])  # a row cut mid-append
    result = subprocess.run([*PY, "report", str(w)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "damaged" in result.stderr and "rebuilt" in result.stderr and "Traceback" not in result.stderr
    assert (w / "results.csv").read_bytes() == whole
    assert (w / "report" / "table1_oneshot.csv").is_file()


# ---------------------------------------------------------------- baselines from anywhere


@pytest.mark.slow
def test_a_baseline_from_two_devices_restores_on_one(tmp_path):
    base = tmp_path / "base"
    # JAX_PLATFORMS=cpu: these are forced host devices; on a GPU machine the
    # default backend would otherwise be its one GPU.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    trained = subprocess.run([*PY, "train", "--preset", "tiny", "--data", "synthetic:256,64", "--epochs", "1", "--devices", "2",
                              "--workdir", str(base), "--no-progress"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    w = tmp_path / "s"
    assert cli.main(["study", "--preset", "tiny", "--data", "synthetic:256,64", "--baseline", str(base),
                     "--methods", "magnitude", "--schedules", "oneshot", "--targets", "0.5", "--workdir", str(w),
                     "--no-progress", "--no-report"]) == 0
    result = evaluation.evaluate_checkpoint(w / "oneshot-magnitude-0.50" / "round-01")
    assert result.sparsity.total.sparsity == pytest.approx(0.5, abs=1e-6)


@pytest.mark.slow
def test_an_unfinished_baseline_is_refused_unless_one_epoch_is_named(tmp_path, capsys):
    from jaxprune.training import loop

    base = tmp_path / "base"
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1 of 3
        loop.train_and_evaluate(_tiny_cfg(epochs=3), base, on_epoch=lambda row: (_ for _ in ()).throw(KeyboardInterrupt))
    args = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude",
            "--schedules", "oneshot", "--targets", "0.5", "--no-progress", "--no-report"]
    capsys.readouterr()
    assert cli.main([*args, "--baseline", str(base), "--workdir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unfinished (epoch 1 of 3)" in err[0], err
    assert not (tmp_path / "s").exists()
    epoch = base / "checkpoints" / "1"  # an epoch named outright is what the user asked for
    assert cli.main([*args, "--baseline", str(epoch), "--workdir", str(tmp_path / "s1")]) == 0


def _write_cifar_like(root, seed):
    """A cifar10-bin folder of 6 x 32 images made from synthetic data."""
    from jaxprune.data import sources as data

    ds = data.synthetic(5 * 32, 32, seed=seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(data.TRAIN_FILES):
        part = slice(32 * i, 32 * (i + 1))
        data.write_cifar10_bin(folder / name, ds.train_images[part], ds.train_labels[part])
    data.write_cifar10_bin(folder / data.TEST_FILE, ds.test_images, ds.test_labels)


@pytest.mark.slow
def test_a_resume_on_other_data_is_refused_naming_both_fingerprints(tmp_path, capsys):
    from jaxprune.training import loop

    _write_cifar_like(tmp_path / "c10", seed=0)
    cfg = _tiny_cfg(data=f"cifar10-bin:{tmp_path / 'c10'}", epochs=3, batch_size=32)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1
        loop.train_and_evaluate(cfg, run, on_epoch=lambda row: (_ for _ in ()).throw(KeyboardInterrupt))
    recorded = rundir.read_record(run)["data_fingerprint"]
    assert recorded.startswith("160+32 images, sha256 ")
    _write_cifar_like(tmp_path / "c10", seed=1)  # the same path, other files
    args = ["train", "--preset", "tiny", "--data", cfg.data, "--epochs", "3", "--batch-size", "32",
            "--no-progress", "--workdir", str(run)]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on other data" in err[0] and recorded in err[0], err
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1]
    _write_cifar_like(tmp_path / "c10", seed=0)  # its own data again: it resumes
    assert cli.main(args) == 0
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]


@pytest.mark.slow
def test_a_pruned_baseline_is_continued_from(tmp_path, capsys, small_study):
    pruned = small_study / "oneshot-magnitude-0.50" / "round-01"  # read only
    w = tmp_path / "second"
    args = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--baseline", str(pruned), "--methods", "magnitude",
            "--schedules", "oneshot", "iterative", "--workdir", str(w), "--no-progress", "--no-report"]
    capsys.readouterr()
    assert cli.main([*args, "--targets", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "not above the baseline's sparsity 50.00%" in err and len(err.strip().splitlines()) == 1
    assert cli.main([*args, "--targets", "0.75"]) == 0
    total = study.prunable_total(config.study_preset("tiny").train)
    phases = study.recorded_phases(w)
    assert [(p.name, p.count) for p in phases] == [
        ("oneshot-magnitude-0.75/round-01", round(0.75 * total) - round(0.5 * total)),
        # The smoke step prunes half of what remains: from 50% to 75% in one round.
        ("iterative-magnitude-0.75/round-01", round(0.5 * (total - round(0.5 * total)))),
    ]
    for p in phases:
        result = evaluation.evaluate_checkpoint(w / p.name)
        assert result.sparsity.total.sparsity == pytest.approx(p.sparsity, abs=1e-12)
        assert result.sparsity.total.sparsity == pytest.approx(0.75, abs=1 / total)


# ---------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_at_a_safe_point_and_the_rerun_resumes(tmp_path, sig, code):
    w = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", "synthetic:256,64", "--epochs", "4", "--workdir", str(w),
            "--no-progress"]
    proc = subprocess.Popen([*PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lines(w / "metrics.csv") >= 2, 300, proc, "the first epoch")
        proc.send_signal(sig)
        assert proc.wait(timeout=300) == code
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert "Traceback" not in err and "rerun the same command to resume" in err.strip().splitlines()[-1]
    saved = rundir.read_metrics(w)
    assert 1 <= len(saved) < 4
    with checkpoint.RunCheckpoints(w / "checkpoints", read_only=True) as ck:
        assert ck.latest() == len(saved)  # every recorded epoch was saved before exiting
    if sig == signal.SIGTERM:
        assert cli.main(args) == 0
        assert cli.main([*args[:-3], "--workdir", str(tmp_path / "whole"), "--no-progress"]) == 0
        assert strip(rundir.read_metrics(w)) == strip(rundir.read_metrics(tmp_path / "whole"))


# ---------------------------------------------------------------- SIGKILL at chosen moments


FAULT = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude", "--targets", "0.5", "0.75",
         "--baseline-epochs", "3", "--no-progress", "--no-report"]
# Each kill lands on an event of the rerun (jaxprune.faults), not on a timer, so
# every one lands on any machine, fast or slow: each rerun completes at most
# one epoch before its kill, so six kills leave the 7-epoch study unfinished.
KILLS = [
    ("checkpoint-save-started", 1),  # mid-write: a temporary folder on disk
    ("metrics-row", 1),  # saved and logged, results.csv not yet
    ("checkpoint-committed", 1),  # saved, no row logged anywhere
    ("results-row", 1),  # every file written, nothing pruned yet
    ("checkpoint-save-started", 1),
    ("checkpoint-committed", 1),
]


@pytest.mark.slow
def test_sigkill_at_chosen_moments_then_resume_gives_the_uninterrupted_results(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main([*FAULT, "--workdir", str(whole)]) == 0
    expected = read_rows(whole / "results.csv")
    assert len(expected) == 3 + 4  # baseline 3 epochs; one-shot 0.5, 0.75; shared chain 0.5 -> 0.75
    results = killed / "results.csv"
    progress = []
    for event, n in KILLS:
        env = {**os.environ, "JAXPRUNE_FAULT": f"{event}:{n}:kill"}
        proc = subprocess.run([*PY, *FAULT, "--workdir", str(killed)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == -signal.SIGKILL, (event, proc.returncode, proc.stderr[-2000:])
        progress.append(lines(results))
    assert progress[-1] < 1 + len(expected)  # the study was still unfinished at the last kill
    assert cli.main([*FAULT, "--workdir", str(killed)]) == 0
    assert strip(read_rows(results)) == strip(expected)
    for folder in killed.rglob("checkpoints"):
        assert not list(folder.glob("*.orbax-checkpoint-tmp*"))  # no temporaries left behind


def test_a_fault_spec_that_names_no_event_is_refused(monkeypatch):
    from jaxprune.runtime import faults

    monkeypatch.setenv("JAXPRUNE_FAULT", "checkpoint-saved:1")
    with pytest.raises(ValueError, match="want EVENT:N"):
        faults.fault_point("metrics-row")


# ---------------------------------------------------------------- directories that are not this run's


def _tiny_cfg(**kw):
    return config.TrainConfig(**{**config.TRAIN_PRESETS["tiny"], "data": "synthetic:256,64", "epochs": 2,
                                 "progress": False, **kw})


@pytest.mark.slow
def test_a_directory_without_config_json_is_refused_and_left_untouched(tmp_path, capsys):
    from jaxprune.training import loop

    run = tmp_path / "run"
    loop.train_and_evaluate(_tiny_cfg(), run)
    (run / "config.json").unlink()  # as a user tidying up, or another tool's directory
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}  # .lock included
    code = cli.main(["train", "--preset", "tiny", "--data", "synthetic:256,64", "--epochs", "2",
                     "--width", "8", "--no-progress", "--workdir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no config.json, so it is not a jaxprune run's" in err[0]
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("text, words", [("{bad", "cannot be read"), ("[]", "is not a jaxprune run's or study's config"),
                                         ('{"config": {}}', "is not a jaxprune run's or study's config")])
def test_a_damaged_or_foreign_config_json_is_one_line(tmp_path, capsys, text, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    code = cli.main(["train", "--preset", "tiny", "--no-progress", "--workdir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # no .lock left in a refused directory


def test_a_study_directory_is_not_a_training_run_and_back(tmp_path, capsys):
    run, st = tmp_path / "run", tmp_path / "study"
    run.mkdir(), st.mkdir()
    rundir.claim(run, _tiny_cfg())
    rundir.claim(st, config.study_preset("tiny"), record_extra={"phases": []})
    assert cli.main(["study", "--preset", "tiny", "--no-progress", "--workdir", str(run)]) == 2
    assert "holds a training run, not a study" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "tiny", "--no-progress", "--workdir", str(st)]) == 2
    assert "holds a study, not a training run" in capsys.readouterr().err


@pytest.mark.slow
def test_a_restart_from_scratch_keeps_the_intact_epochs_aside(tmp_path, capsys):
    # A finished run keeps no optimizer state; if its final epoch is damaged it
    # must train again, and the intact epoch kept beside it (here a rewind
    # point) is moved aside, not overwritten.
    from jaxprune.training import loop

    run = tmp_path / "run"
    cfg = _tiny_cfg(epochs=3)
    loop.train_runs([loop.RunSpec(cfg, run, keep_epochs=(1,))])
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["1", "3"]
    kept = {p.relative_to(ckpts / "1"): p.read_bytes() for p in (ckpts / "1").rglob("*") if p.is_file()}
    (ckpts / "3" / "model" / "manifest.ocdbt").write_bytes(b"garbage")
    capsys.readouterr()
    loop.train_runs([loop.RunSpec(cfg, run, keep_epochs=(1,))])
    err = capsys.readouterr().err.strip().splitlines()
    # One line each, and none of the ~160 tracebacks Orbax's abandoned reads print.
    assert len(err) == 3 and all(line.startswith("jaxprune: ") for line in err), err
    assert "moved aside to 3.damaged" in err[0] and "moved aside to 1.superseded" in err[2]
    assert sorted(p.name for p in ckpts.iterdir()) == ["1", "1.superseded", "3", "3.damaged"]
    aside = {p.relative_to(ckpts / "1.superseded"): p.read_bytes()
             for p in (ckpts / "1.superseded").rglob("*") if p.is_file()}
    assert aside == kept
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]


def test_a_file_system_that_refuses_locks_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def refuse(fd, op):  # what Lustre mounted without flock answers
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", refuse)
    code = cli.main(["train", "--preset", "tiny", "--no-progress", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refuses locks (Function not implemented)" in err[0], err
