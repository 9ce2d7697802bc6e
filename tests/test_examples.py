"""Each example runs as a user would run it (a subprocess, CPU, time-bounded) and says what it claims."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here trains or starts processes that import jax

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, timeout: int = 300) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def losses(out: str) -> tuple[float, float]:
    first, last = re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups()
    return float(first), float(last)


@pytest.mark.parametrize(
    "name, sparsity, check",
    [
        ("nnx_prune_and_train.py", "0.5000", "largest |w| at a pruned position: 0.0"),
        ("linen_adamw.py", "0.8500", "pruned weights all +0.0: True"),
    ],
)
def test_example(name, sparsity, check):
    out = run_example(name)
    assert f"sparsity {sparsity}" in out
    assert check in out.splitlines()
    first, last = losses(out)
    assert last < first  # it trains



def test_restore_with_plain_orbax(small_study):
    """A finished phase read back with Orbax alone gives the sparsity and accuracy jaxprune recorded."""
    from jaxprune.training import evaluation

    phase = small_study / "oneshot-magnitude-0.50" / "round-01"  # read only
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "restore_with_orbax.py"), str(phase)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    usage = subprocess.run([sys.executable, str(ROOT / "examples" / "restore_with_orbax.py")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ") and "Traceback" not in usage.stderr
    expected = evaluation.evaluate_checkpoint(phase)
    assert f"3 pruned kernels, sparsity {expected.sparsity.total.sparsity:.4f}" in lines
    assert f"sparsity {expected.sparsity.total.sparsity:.4f}".endswith("0.5000")
    assert f"test accuracy {100 * expected.test_acc:.2f}%" in lines[0]
    assert "pruned weights all 0: True" in lines


def test_custom_model_study_runs_resumes_and_exports(tmp_path):
    """examples/custom_model_study.py: a registered Flax model on registered in-memory arrays
    runs the whole study (6 phases, report), a rerun trains nothing, and the export keeps Flax paths."""
    import csv

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "examples" / "custom_model_study.py"), str(tmp_path / "study")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "study: 6 phases (0 finished), 7 of 7 epochs to train" in first.stdout
    rows = list(csv.DictReader(open(tmp_path / "study" / "results.csv")))
    assert len(rows) == 7 and {r["model"] for r in rows} == {"small_cnn"} and {r["data"] for r in rows} == {"bands"}
    assert max(float(r["sparsity"]) for r in rows) == pytest.approx(0.8762, abs=1e-4)
    assert (tmp_path / "study" / "report" / "report.md").is_file()
    assert "keys ['params/conv1/kernel', 'params/conv2/kernel', 'params/head/kernel']" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 phases (6 finished), 0 of 7 epochs to train" in again.stdout
