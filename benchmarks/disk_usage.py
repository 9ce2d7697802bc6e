"""Disk kept by a finished study, measured with real checkpoints.

    python benchmarks/disk_usage.py [--preset seed] [--width 64]

For each distinct sparsity in the study's plan, writes a checkpoint of that
model through `jaxprune.checkpoint.RunCheckpoints` (params drawn N(0, 0.05)
like trained weights, random masks at the phase's exact count, real batch
stats and optimizer state), closes it as a finished phase (which drops the
optimizer state) and measures the bytes on disk. A finished phase keeps its
final and its best epoch, so the study keeps at most twice each phase's size;
the sum over the plan is printed beside `study.disk_estimate`, the figure a
study prints when it starts. Also printed: one unfinished epoch as the
latest (with optimizer state), and the dense baseline as before this change
kept it (latest and best, both with optimizer state).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from jaxprune.training import checkpoint, train
from jaxprune import config
from jaxprune.study import driver as study
from jaxprune.models import init_variables


def du(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def state_at(cfg, count: int, seed: int):
    variables = init_variables(train.build_model(cfg), seed)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape).astype(np.float32)), variables["params"])
    masks = jaxprune.init_masks(params)
    if count:
        masks = jaxprune.prune_global(params, masks, count, method="random", key=jax.random.key(seed))
    tx = train.make_optimizer(cfg, 391)
    state = train.create_train_state({**variables, "params": params}, tx, seed, masks)
    # Momentum as training leaves it: nonzero where kept, zero where pruned.
    trace = jax.tree.map(lambda p: p * 0.1, state.params)
    opt_state = (state.opt_state[0], (state.opt_state[1][0]._replace(trace=trace), *state.opt_state[1][1:]))
    return state.replace(opt_state=opt_state)


def saved_bytes(root: Path, state, finished: bool) -> int:
    folder = root / f"c{len(list(root.iterdir()))}"
    with checkpoint.RunCheckpoints(folder) as ck:
        ck.save(1, state, {"metrics": {"test_acc": 0.5}})
        ck.close(finished=finished)
    return du(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=sorted(config.STUDY_PRESETS))
    p.add_argument("--width", type=int, default=64)
    args = p.parse_args()
    cfg = config.study_preset(args.preset, train={"width": args.width, "data": "synthetic:1"})
    total, n_params = study.model_shapes(cfg.train)
    phases = study.plan(cfg, total)
    pruned_of = {p.name: round(total * p.sparsity) for p in phases}
    levels = sorted(set(pruned_of.values()))
    print(f"{args.preset} study at width {args.width}: {len(phases)} phases, {len(levels)} distinct sparsities, "
          f"{total:,} prunable weights")
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in levels:
            sizes[k] = saved_bytes(root, state_at(cfg.train, k, 0), finished=True)
        dense = state_at(cfg.train, 0, 0)
        with_opt = saved_bytes(root, dense, finished=False)
    for k in levels[:: max(1, len(levels) // 6)]:
        print(f"  sparsity {100 * k / total:6.2f}%: {sizes[k] / 1e6:7.1f} MB per kept epoch (no optimizer state)")
    kept = 2 * sum(sizes[pruned_of[p.name]] for p in phases)
    print(f"measured: a finished study keeps at most {kept / 1e9:.2f} GB (final + best epoch of every phase)")
    print(f"estimate printed by `jaxprune study`: {study.disk_estimate(phases, total, n_params) / 1e9:.2f} GB")
    print(f"the phase in training adds its latest epoch with optimizer state: {with_opt / 1e6:.1f} MB (dense)")
    print(f"before (latest + best, both with optimizer state, dense): {2 * with_opt / 1e6:.1f} MB per phase, "
          f"{len(phases) * 2 * with_opt / 1e9:.1f} GB for the study")


if __name__ == "__main__":
    main()
