"""The one timing rule every benchmark here uses."""

from __future__ import annotations

import statistics
import time

import jax


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call that compiles.

    Waits for the device (jax.block_until_ready) inside each timed call.
    """
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_model_args(parser, batch_help: str = "images per step") -> None:
    """--width and --batch, the same in every benchmark that trains ResNet18."""
    parser.add_argument("--width", type=int, default=64, help="ResNet18 width (64 = full size)")
    parser.add_argument("--batch", type=int, default=128, help=batch_help)
