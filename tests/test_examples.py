"""Each example runs as a user would run it (a subprocess, CPU, time-bounded) and says what it claims."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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

