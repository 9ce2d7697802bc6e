"""What gradual pruning inside the training loop costs.

    python benchmarks/gradual_speed.py [--width 8] [--batch 128] [--repeats 7]

Times the real jitted train step three ways, median of --repeats after a
compiling warm-up: without gradual pruning, with it on a step that does not
update the masks (the lax.cond's other branch), and on a step that does (an
exact global re-selection over all prunable weights on the device). Prints the
cost of one update as a fraction of a CIFAR-10 epoch (391 steps) at that
width, which is the cost with the default of one update per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from timing import add_model_args
from jaxprune import config
from jaxprune.training import train
from jaxprune.models import init_variables

STEPS_PER_EPOCH = 391  # CIFAR-10 at batch 128, every image


def step_seconds(cfg, images, labels, repeats: int, first_step: int) -> float:
    tx = train.make_optimizer(cfg, STEPS_PER_EPOCH)
    fns = train.make_step_fns(train.build_model(cfg), tx, cfg, steps_per_epoch=STEPS_PER_EPOCH)
    base = train.create_train_state(init_variables(train.build_model(cfg), 0), tx, 0)
    times = []
    for i in range(repeats + 1):
        state = jax.tree.map(np.asarray, base)
        state = train.create_train_state({"params": state.params, "batch_stats": state.batch_stats}, tx, 0)
        state = state.replace(step=state.step + first_step)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        jax.block_until_ready(fns.train_step(state, images, labels))
        if i:  # the first call compiles
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.set_defaults(width=8)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.batch).astype(np.int32)
    cfg = config.TrainConfig(data="synthetic:1", width=args.width, batch_size=args.batch, epochs=10, progress=False)
    gradual = dict(prune_to=0.9, prune_every=STEPS_PER_EPOCH)
    plain = step_seconds(cfg, images, labels, args.repeats, 0)
    between = step_seconds(config.TrainConfig(**{**config.to_dict(cfg), **gradual}), images, labels, args.repeats, 0)
    update = step_seconds(config.TrainConfig(**{**config.to_dict(cfg), **gradual}), images, labels, args.repeats,
                          STEPS_PER_EPOCH - 1)  # the step after which t = 391: an update step
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}; ResNet18 width {args.width}, "
          f"batch {args.batch}, median of {args.repeats}")
    print(f"train step, no gradual pruning      {1e3 * plain:9.1f} ms")
    print(f"train step, gradual, no update      {1e3 * between:9.1f} ms  ({100 * (between / plain - 1):+.1f}%)")
    print(f"train step, gradual, masks updated  {1e3 * update:9.1f} ms  (update costs {1e3 * (update - between):.1f} ms)")
    epoch = STEPS_PER_EPOCH * plain
    extra = (update - between) + (STEPS_PER_EPOCH - 1) * (between - plain)
    print(f"one update per epoch: {100 * extra / epoch:.2f}% of a {epoch:.0f} s epoch "
          f"({100 * (update - between) / epoch:.2f}% for the update itself)")


if __name__ == "__main__":
    main()
