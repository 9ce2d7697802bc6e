"""Read a jaxprune checkpoint with plain Orbax: no jaxprune import needed.

    python examples/restore_with_orbax.py RUN_OR_PHASE_DIR

Each epoch folder under RUN/checkpoints/ holds Orbax items: ``model`` (params,
batch_stats, masks: True = kept), ``train`` (optimizer state; only in an
unfinished run's latest epoch) and ``meta`` (JSON: metrics, history, config).
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
    print("usage: python examples/restore_with_orbax.py RUN_OR_PHASE_DIR", file=sys.stderr)
    sys.exit(2)
run = Path(sys.argv[1]).absolute()
epochs = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
step = run / "checkpoints" / str(epochs[-1])
model = ocp.StandardCheckpointer().restore(step / "model")  # a dict of arrays, no target needed
meta = json.loads((step / "meta" / "metadata").read_text())

# Masks mirror params leaf for leaf; non-prunable leaves have a 0-d True mask.
pairs = zip(jax.tree.leaves(model["params"]), jax.tree.leaves(model["masks"]))
kernels = [(np.asarray(p), np.asarray(m)) for p, m in pairs if np.ndim(m)]
kept = sum(int(m.sum()) for _, m in kernels)
total = sum(m.size for _, m in kernels)
print(f"epoch {meta['epoch']}: test accuracy {100 * meta['metrics']['test_acc']:.2f}%")
print(f"{len(kernels)} pruned kernels, sparsity {1 - kept / total:.4f}")
print(f"pruned weights all 0: {all((p[~m] == 0).all() for p, m in kernels)}")
