"""Storage faults: a disk that fills mid-run and a checkpoints folder mounted read-only.

Real file systems, not mocks: a small tmpfs filled at a chosen event
(jaxprune.faults), and a read-only bind mount. Both need root, as CI has;
elsewhere these tests skip. Every subprocess has a time bound.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxprune import cli
from jaxprune.runtime import faults
from jaxprune.training import rundir

pytestmark = pytest.mark.slow  # every test here trains or starts processes that import jax

PY = [sys.executable, "-m", "jaxprune"]
TRAIN = ["train", "--preset", "tiny", "--data", "synthetic:512,128", "--no-progress"]


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root to mount ({result.stderr.strip()[:100]})")


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    _mount("-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def rows_without_seconds(workdir: Path):
    return [{k: v for k, v in r.items() if k not in rundir.TIMING_FIELDS} for r in rundir.read_metrics(workdir)]


def test_a_full_disk_deletes_nothing_and_the_rerun_resumes_from_the_last_saved_epoch(tmp_path, small_disk):
    whole = tmp_path / "whole"
    assert cli.main([*TRAIN, "--epochs", "8", "--workdir", str(whole)]) == 0
    run = small_disk / "run"
    # The disk fills right after epoch 4 is saved and logged: epoch 5's write fails.
    env = {**os.environ, "JAXPRUNE_FAULT": "metrics-row:4:fill", "JAXPRUNE_FAULT_PATH": str(small_disk)}
    full = subprocess.run([*PY, *TRAIN, "--epochs", "8", "--workdir", str(run)], env=env, capture_output=True,
                          text=True, timeout=300)
    err = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(err) == 1, full.stderr[-3000:]
    assert "cannot write checkpoint" in err[0] and f"{run}/checkpoints/5" in err[0]
    assert "No space left on device" in err[0] and "nothing was deleted and epoch 4 is the newest saved" in err[0]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert "4" in kept and all(int(e) <= 4 for e in kept)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4]  # no epoch that was not saved
    before = rundir.read_metrics(run)

    os.unlink(small_disk / faults.FILL_NAME)  # space is freed
    assert cli.main([*TRAIN, "--epochs", "8", "--workdir", str(run)]) == 0
    after = rundir.read_metrics(run)
    assert after[:4] == before  # epochs 1-4 kept as they were (their seconds too): not trained again
    assert rows_without_seconds(run) == rows_without_seconds(whole)
    assert not list((run / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def test_a_read_only_checkpoints_folder_exits_at_once_in_one_line(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "JAXPRUNE_FAULT": "metrics-row:3:kill"}
    killed = subprocess.run([*PY, *TRAIN, "--epochs", "6", "--workdir", str(run)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = str(run / "checkpoints")
    _mount("--bind", ckpts, ckpts)
    try:
        _mount("-o", "remount,bind,ro", ckpts)
        started = time.monotonic()
        result = subprocess.run([*PY, *TRAIN, "--epochs", "6", "--workdir", str(run)], capture_output=True,
                                text=True, timeout=120)
        took = time.monotonic() - started
    finally:
        subprocess.run(["umount", "-l", ckpts], check=False)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(err) == 1, result.stderr[-3000:]
    assert "Read-only file system" in err[0] and f"checkpoints in {ckpts}" in err[0]
    assert took < 60  # it used to hang at exit in Orbax's threads
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]  # never an epoch not saved
    assert cli.main([*TRAIN, "--epochs", "6", "--workdir", str(run)]) == 0  # writable again: it resumes
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4, 5, 6]
