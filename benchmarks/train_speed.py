"""Images per second of the masked train step and of the input pipeline alone.

    python benchmarks/train_speed.py [--width 64] [--batch 128] [--dtype bfloat16]
                                     [--steps 50] [--repeats 5] [--sparsity 0.9]

Runs on JAX's default device with random uint8 images already on it, as in
training. Each figure is the median over --repeats timed dispatches of
--steps steps, after a warm-up that compiles. The train step is the real one
(augment, normalise, forward, backward, masked SGD update), run the way
`jaxprune train` runs it (whole scans on accelerators, one step per dispatch
on a CPU). Achieved TFLOP/s use XLA's own FLOP count of the compiled step.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from timing import add_model_args, median_seconds
from jaxprune import config
from jaxprune.data import sources as data
from jaxprune.training import train
from jaxprune.models import init_variables


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--steps", type=int, default=50, help="steps per timed dispatch (the scan length on accelerators)")
    p.add_argument("--repeats", type=int, default=5, help="timed dispatches; the median is printed")
    p.add_argument("--sparsity", type=float, default=0.9, help="global random sparsity of the masks")
    args = p.parse_args()

    cfg = config.TrainConfig(
        data="synthetic:1", width=args.width, dtype=args.dtype, batch_size=args.batch, progress=False,
        steps_per_dispatch=args.steps,
    )
    n = args.steps * args.batch
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    batches = jnp.arange(n, dtype=jnp.int32).reshape(args.steps, args.batch)

    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"ResNet18 width {args.width}, batch {args.batch}, {args.dtype}, {args.steps} steps per dispatch, "
          f"median of {args.repeats}\n")

    model = train.build_model(cfg)
    tx = train.make_optimizer(cfg, 10_000)
    fns = train.make_step_fns(model, tx, cfg)
    variables = init_variables(model, 0)
    masks = jaxprune.prune_global(
        variables["params"], jaxprune.init_masks(variables["params"]), args.sparsity,
        method="random", key=jax.random.key(0),
    )
    state = train.create_train_state(variables, tx, 0, masks)

    per_dispatch = train.dispatch_steps(cfg, args.steps) if dev.platform != "cpu" else 1

    def run_train():
        nonlocal state
        for start in range(0, args.steps, per_dispatch):
            state, loss, _ = fns.train_chunk(state, images, labels, batches[start : start + per_dispatch])
        return loss

    t_train = median_seconds(run_train, args.repeats)

    @jax.jit
    def pipeline(key):
        def body(acc, i):
            x = data.normalize(data.augment(jax.random.fold_in(key, i), images[batches[i]]))
            return acc + x.sum(), None
        return jax.lax.scan(body, jnp.zeros(()), jnp.arange(args.steps))[0]

    t_pipe = median_seconds(lambda: pipeline(jax.random.key(1)), args.repeats)

    flops = None
    try:
        cost = fns.train_step.lower(state, images[: args.batch], labels[: args.batch]).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best-effort across backends
        pass

    ips = n / t_train
    print(f"{'train step (masked, augmented)':34s} {ips:12,.0f} images/s   {1e3 * t_train / args.steps:8.2f} ms/step")
    print(f"{'input pipeline alone':34s} {n / t_pipe:12,.0f} images/s")
    if flops:
        print(f"{'XLA FLOPs per step':34s} {flops / 1e9:12,.1f} GFLOP  ({flops / args.batch / 1e9:.2f} GFLOP/image)")
        print(f"{'achieved':34s} {flops * args.steps / t_train / 1e12:12,.3f} TFLOP/s")
    print(f"{'epoch of 50,000 images':34s} {50_000 / ips:12,.1f} s")


if __name__ == "__main__":
    main()
