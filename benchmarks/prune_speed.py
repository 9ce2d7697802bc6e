"""Times one pruning round over ResNet18-sized params (and a larger size).

    python benchmarks/prune_speed.py [--repeats 7] [--scale 4] [--argsort]

Prints the median wall time of one `jaxprune.prune` round (after a warm-up
round that compiles) for each score (magnitude, random, lamp) and each
distribution (global, uniform, erk), with its ratio to global magnitude, on
whatever device JAX uses by default. For scale it also times, on the same data:
numpy.partition alone (a floor for any exact selection on the host),
torch.nn.utils.prune.global_unstructured when torch is installed, and with
--argsort a plain jnp.argsort over all weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from timing import median_seconds
from jaxprune.masks import selection
from jaxprune.models import ResNet18


def gaussian_params(width: int, seed: int = 0):
    shapes = jax.eval_shape(
        lambda: ResNet18(width=width).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(np.float32)), shapes
    )


def median_ms(fn, repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats)


# (distribution, score) pairs timed; the first is the reference for the ratios.
ROUNDS = [
    ("global", "magnitude"),
    ("global", "random"),
    ("global", "lamp"),
    ("uniform", "magnitude"),
    ("erk", "magnitude"),
    ("erk", "lamp"),
]


def time_jaxprune(params, repeats: int, rounds=ROUNDS) -> dict[tuple[str, str], float]:
    # Start from a mask that already has pruned weights, as in a study's later rounds.
    masks = jaxprune.prune_global(params, jaxprune.init_masks(params), 0.5)
    key = jax.random.key(0)
    return {
        (d, s): median_ms(lambda: jaxprune.prune(params, masks, 0.1, distribution=d, score=s, key=key), repeats)
        for d, s in rounds
    }


def time_torch(params, repeats: int) -> float | None:
    try:
        import torch
        from torch.nn.utils import prune
    except ImportError:
        return None
    kernels = [
        np.array(p)  # a writable copy, as torch wants
        for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(jaxprune.prunable(params)))
        if f
    ]

    def one_round():
        modules = []
        for k in kernels:
            m = torch.nn.Module()
            m.weight = torch.nn.Parameter(torch.from_numpy(k))
            modules.append(m)
        t0 = time.perf_counter()
        prune.global_unstructured(
            [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=0.1
        )
        return time.perf_counter() - t0

    one_round()
    return 1e3 * statistics.median(one_round() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per figure (median is printed)")
    parser.add_argument("--scale", type=int, default=2, help="width multiple of the larger model (2 -> ~4x the weights)")
    parser.add_argument("--argsort", action="store_true", help="also time a full jnp.argsort (slow on CPU)")
    parser.add_argument("--no-jax-kernel", action="store_true", help="skip timing the jax (GPU) kernel when on a CPU")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}")
    print(f"median of {args.repeats} rounds after warm-up; prune 10% of the remaining weights\n")
    rows = []
    for width in (64, 64 * args.scale):
        params = gaussian_params(width)
        n = sum(
            p.size for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(jaxprune.prunable(params))) if f
        )
        t = time_jaxprune(params, args.repeats)
        for (d, s), ms in t.items():
            rows.append((f"jaxprune {d} {s}, width {width}", n, ms, ms / t[ROUNDS[0]]))
        if width == 64:
            if device.platform == "cpu" and not args.no_jax_kernel:
                with mock.patch.object(selection, "_all_on_cpu", lambda arrays: False):
                    tj = time_jaxprune(params, max(3, args.repeats // 2), ROUNDS[:1])
                rows.append(("  same, jax (GPU) kernel forced on CPU", n, tj[ROUNDS[0]], None))
            flat = np.concatenate([np.abs(np.asarray(p)).reshape(-1) for p in jax.tree.leaves(params) if p.ndim >= 2])
            rows.append(("  for scale: numpy.partition alone", flat.size,
                         median_ms(lambda: np.partition(flat, flat.size // 10), args.repeats), None))
            rows.append(("  for scale: numpy.sort alone (what LAMP avoids)", flat.size,
                         median_ms(lambda: np.sort(flat), max(1, args.repeats // 3)), None))
            tt = time_torch(params, args.repeats)
            if tt is not None:
                rows.append(("  for scale: torch global_unstructured", n, tt, None))
            if args.argsort:
                x = jnp.asarray(flat)
                rows.append(("  for scale: jnp.argsort", flat.size,
                             median_ms(lambda: jnp.argsort(x), max(1, args.repeats // 3)), None))
        del params
    print(f"{'what':48s} {'weights':>12s} {'ms/round':>10s} {'ns/weight':>10s} {'x global mag':>13s}")
    for name, n, ms, ratio in rows:
        r = f"{ratio:13.2f}" if ratio is not None else ""
        print(f"{name:48s} {n:12,d} {ms:10.1f} {1e6 * ms / n:10.2f} {r}")


if __name__ == "__main__":
    main()
