"""What the report's mask views cost at the write-up's full size (ResNet18, width 64,
11,164,352 prunable weights), on real checkpoints.

    python benchmarks/mask_overlap_speed.py [--width 64] [--phases 4] [--repeats 3]

Writes `--phases` finished checkpoints through `jaxprune.checkpoint.RunCheckpoints`
(params drawn N(0, 0.05), random masks at 50%), then times, per phase:

- reading its masks alone (`phase_masks.read`: Orbax's partial restore, numpy, bit-packed)
  against restoring the whole model item (params, batch stats and masks) as
  evaluation does;
- one Jaccard overlap of two packed masks, and one per-layer profile.

Prints the median of `--repeats` and the bytes each way holds in memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
from disk_usage import state_at  # noqa: E402  (a checkpointable state with masks at a count)

from jaxprune.training import checkpoint, train  # noqa: E402
from jaxprune import config, masks
from jaxprune.report import phase_masks
from jaxprune.study import driver as study


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--phases", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = config.TrainConfig(width=args.width, data="synthetic:1")
    total = study.prunable_total(cfg)
    abstract = checkpoint.abstract_model(train.abstract_state(cfg))
    print(f"resnet18 width {args.width}: {total:,} prunable weights, {args.phases} finished phases at 50%, "
          f"median of {args.repeats}; {jax.devices()[0].platform}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for i in range(args.phases):
            folder = Path(tmp) / f"phase{i}"
            with checkpoint.RunCheckpoints(folder) as ck:
                ck.save(1, state_at(cfg, total // 2, i), {"metrics": {"test_acc": 0.5}})
                ck.close(finished=True)
            folders.append(folder)
        t_masks, packed = zip(*(median_time(lambda f=f: phase_masks.read(f, cfg), args.repeats) for f in folders))
        t_full, _ = zip(*(median_time(lambda f=f: jax.block_until_ready(checkpoint.restore_model(f, 1, abstract)[0]),
                                      args.repeats) for f in folders))
        t_jac, j = median_time(lambda: masks.overlap.jaccard(packed[0].bits, packed[1].bits), args.repeats)
        t_prof, _ = median_time(lambda: phase_masks.layer_profile({(0, "", "", "", "", 0.5, 1): packed[0]}), args.repeats)
    bits = sum(v.nbytes for v in packed[0].bits.values())
    print(f"read masks only (partial restore, packed): {statistics.median(t_masks):.2f} s per phase, "
          f"{bits / 1e6:.2f} MB kept in memory")
    print(f"restore the whole model item:              {statistics.median(t_full):.2f} s per phase, "
          f"{4 * total / 1e6:.1f} MB of float32 kernels alone")
    print(f"one Jaccard overlap of two phases: {1e3 * t_jac:.1f} ms (value {j:.4f}; random masks at 50%: about 1/3)")
    print(f"one per-layer profile: {1e3 * t_prof:.1f} ms")


if __name__ == "__main__":
    main()
