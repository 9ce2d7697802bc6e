"""benchmarks/gpu_session.sh, the scripted GPU session, exercised on the CPU with tiny
settings: a lent GPU's minutes must not be spent finding a typo in it."""

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jaxprune import data

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def session(tmp_path, step, **env):
    """Runs the script's `step` from a copy of it in tmp_path/checkout (whose .data/ the test controls)."""
    script = tmp_path / "checkout" / "benchmarks" / "gpu_session.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SCRIPT.read_text())
    env = {
        **os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(tmp_path / "out"),
        "JAXPRUNE_GPU_DATA": str(tmp_path / "c10"), "JAXPRUNE_GPU_RUNS": str(tmp_path / "runs"),
        "JAXPRUNE_GPU_INSTALL": "0", **env,
    }
    return subprocess.run(["bash", str(script), step], env=env, capture_output=True, text=True, timeout=300)


def test_usage_and_missing_data_exit_2(tmp_path):
    bad = session(tmp_path, "train")
    assert bad.returncode == 2 and "usage: bash benchmarks/gpu_session.sh" in bad.stderr
    missing = session(tmp_path, "baseline")
    assert missing.returncode == 2, missing.stderr
    assert "gpu_session: missing" in missing.stderr and "data_batch_1.bin" in missing.stderr


@pytest.mark.slow
def test_baseline_step_trains_from_carried_pieces_and_keeps_its_files(tmp_path):
    # The pieces arrive as ../shared/GPU.md carries them: .data/c1..c3 in the checkout.
    rng = np.random.default_rng(0)
    pieces = {"c1": ["data_batch_1", "data_batch_2"], "c2": ["data_batch_3", "data_batch_4"],
              "c3": ["data_batch_5", "test_batch"]}
    for piece, names in pieces.items():
        folder = tmp_path / "checkout" / ".data" / piece
        folder.mkdir(parents=True)
        for name in names:
            data.write_cifar10_bin(folder / f"{name}.bin", rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
                                   rng.integers(0, 10, 32).astype(np.uint8))
    # The real data set is checked for its size: these small files are refused...
    small = session(tmp_path, "baseline")
    assert small.returncode == 2 and "is not 30,730,000 bytes" in small.stderr
    # ...unless told otherwise.
    ran = session(tmp_path, "baseline", JAXPRUNE_GPU_ANY_DATA="1", JAXPRUNE_GPU_ARGS="--width 2 --epochs 1")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]

    out = tmp_path / "out"
    assert len(list((tmp_path / "c10" / "cifar-10-batches-bin").glob("*.bin"))) == 6
    assert (out / "device.txt").read_text().startswith("cpu (cpu, ")
    log = (out / "baseline" / "train.log").read_text()
    assert log.startswith("$ jaxprune train --preset seed --data cifar10-bin:") and "# exit 0" in log
    rows = list(csv.DictReader(open(out / "baseline" / "seed" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1"]
    assert (out / "baseline" / "seed" / "config.json").exists()
    assert not (out / "baseline" / "seed" / "checkpoints").exists()
