"""Device-idle time between epochs of the real training loop.

    python benchmarks/epoch_idle.py [--width 64] [--batch 128] [--dtype bfloat16]
                                    [--train-images 50000] [--test-images 10000] [--epochs 6]

Trains one run with `jaxprune.loop.train_runs` on synthetic CIFAR-shaped data
(checkpoints, metric logs and all, in a temporary directory) and records, per
epoch, when its dispatch started and ended on the host and when its results
became ready on the device (a watcher thread blocks on them). The device is
idle between epochs e and e+1 for max(0, dispatch_start(e+1) - ready(e)):
the loop dispatches epoch e+1 before it reads epoch e's metrics, writes its
rows and saves its checkpoint, so this should be ~0. Printed per epoch and as
a median fraction of the epoch time, after the first epoch (which compiles).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import jax

from timing import add_model_args
from jaxprune import config
from jaxprune.data import sources as data
from jaxprune.training import loop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--train-images", type=int, default=50_000, help="training images per epoch")
    p.add_argument("--test-images", type=int, default=10_000, help="test images evaluated per epoch")
    p.add_argument("--epochs", type=int, default=6, help="epochs to train (the first compiles)")
    args = p.parse_args()

    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    cfg = config.TrainConfig(
        data="synthetic:1", width=args.width, dtype=args.dtype, batch_size=args.batch, epochs=args.epochs,
        progress=False,
    ).validate()
    dataset = data.synthetic(args.train_images, args.test_images)
    trace: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        loop.train_runs([loop.RunSpec(cfg, Path(tmp) / "run")], dataset=dataset, trace=trace)
    print(f"ResNet18 width {args.width}, batch {args.batch}, {args.dtype}, {args.train_images:,} train + "
          f"{args.test_images:,} test images per epoch\n")
    print("epoch  epoch time (s)  idle before it (ms)  idle %")
    fractions = []
    for prev, cur in zip(trace, trace[1:]):
        epoch_s = cur["ready"] - prev["ready"]
        idle = max(0.0, cur["dispatch_start"] - prev["ready"])
        if cur["epoch"] > 2:  # epochs 1 and 2 include compilation
            fractions.append(idle / epoch_s)
        print(f"{cur['epoch']:5d}  {epoch_s:14.2f}  {1e3 * idle:19.2f}  {100 * idle / epoch_s:6.2f}")
    if fractions:
        print(f"\nmedian device-idle between epochs (epochs 3+): {100 * statistics.median(fractions):.2f}% of an epoch")


if __name__ == "__main__":
    main()
