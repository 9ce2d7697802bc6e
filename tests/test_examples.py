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
    from jaxprune import evaluation

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
    assert f"21 pruned kernels, sparsity {expected.sparsity.total.sparsity:.4f}" in lines
    assert f"sparsity {expected.sparsity.total.sparsity:.4f}".endswith("0.5000")
    assert f"test accuracy {100 * expected.test_acc:.2f}%" in lines[0]
    assert "pruned weights all 0: True" in lines
