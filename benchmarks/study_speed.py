"""How fast jaxprune trains, and how long the write-up's study would take here.

    python benchmarks/study_speed.py [--width 64] [--batch 128] [--dtypes float32 bfloat16]
                                     [--runs 3] [--steps 50] [--repeats 5] [--torch]

For each dtype, on JAX's default device, with random uint8 images already on
it and random 90%-sparse masks:
- the masked train step for one run: images/s, ms/step, achieved TFLOP/s
  (XLA's FLOP count of the compiled step) and the fraction of the device's
  peak (known for H100/H200, else --peak-tflops);
- the same step without masking, timed alternately with it (A/B), and the
  masking overhead in wall time and in XLA's cost model (bytes, FLOPs);
- 2 and --runs runs vmapped over a run axis: images/s summed over runs;
- evaluation of 10,000 images;
- the projected wall time of the write-up's study (90 + 3x90 + (7+14+22)x90
  = 4,230 epochs per method), one run at a time and with the chains and
  one-shot targets vmapped;
- with --torch, the write-up's own stack (benchmarks/torch_reference.py) timed
  in the same process on the same device, and the ratio.
Each figure is the median of --repeats dispatches of --steps steps after a
warm-up that compiles.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from timing import add_model_args, median_seconds
from jaxprune import config
from jaxprune.training import train
from jaxprune.models import init_variables

# Dense peak TFLOP/s by device kind: (bf16, f32 as TF32 tensor-core math, which
# XLA uses for f32 convolutions on these GPUs by default).
PEAKS = {"H100": (989.0, 494.5), "H200": (989.0, 494.5), "A100": (312.0, 156.0)}
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def peak_tflops(dtype: str, override: float | None) -> float | None:
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, (bf16, f32) in PEAKS.items():
        if name in kind:
            return bf16 if dtype == "bfloat16" else f32
    return None


class Bench:
    def __init__(self, args, dtype):
        self.args = args
        self.cfg = config.TrainConfig(
            data="synthetic:1", width=args.width, dtype=dtype, batch_size=args.batch, progress=False,
            steps_per_dispatch=args.steps if jax.default_backend() != "cpu" else 1,
        )
        n = args.steps * args.batch
        rng = np.random.default_rng(0)
        self.images = jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        self.labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
        self.test_x = jnp.asarray(rng.integers(0, 256, (TEST_IMAGES, 32, 32, 3), dtype=np.uint8))
        self.test_y = jnp.asarray(rng.integers(0, 10, TEST_IMAGES).astype(np.int32))
        self.model = train.build_model(self.cfg)
        self.tx = train.make_optimizer(self.cfg, 10_000)
        self.states = []
        for seed in range(max(3, args.runs)):
            v = init_variables(self.model, seed)
            masks = jaxprune.prune_global(
                v["params"], jaxprune.init_masks(v["params"]), 0.9, method="random", key=jax.random.key(seed)
            )
            self.states.append(train.create_train_state(v, self.tx, seed, masks))

    def _runner(self, runs: int, masked: bool):
        """A function running --steps train steps of `runs` runs (vmapped when runs > 1)."""
        a, cfg = self.args, self.cfg
        fns = train.make_step_fns(self.model, self.tx, cfg, runs=runs > 1, masked=masked)
        if runs > 1:
            state = jax.tree.map(lambda *xs: jnp.stack(xs), *self.states[:runs])
            batches = jnp.tile(jnp.arange(a.steps * a.batch, dtype=jnp.int32).reshape(1, a.steps, a.batch), (runs, 1, 1))
        else:
            state = jax.tree.map(jnp.copy, self.states[0])
            batches = jnp.arange(a.steps * a.batch, dtype=jnp.int32).reshape(a.steps, a.batch)
        chunk = train.dispatch_steps(cfg, a.steps)
        box = [state]

        def run():
            s = box[0]
            for start in range(0, a.steps, chunk):
                s, loss, _ = fns.train_chunk(s, self.images, self.labels, batches[..., start : start + chunk, :])
            box[0] = s
            return loss

        return run

    def step_cost(self, masked: bool = True) -> dict[str, float]:
        """XLA's cost model of one compiled train step of one run: 'flops', 'bytes accessed'."""
        a = self.args
        fns = train.make_step_fns(self.model, self.tx, self.cfg, masked=masked)
        try:
            cost = fns.train_step.lower(self.states[0], self.images[: a.batch], self.labels[: a.batch]).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            return {k: float(cost.get(k, 0.0)) for k in ("flops", "bytes accessed")}
        except Exception:  # best effort across backends and versions
            return {}

    def train_ips(self, runs: int = 1) -> float:
        """Images/s summed over `runs` vmapped runs."""
        a = self.args
        run = self._runner(runs, True)
        return runs * a.steps * a.batch / median_seconds(run, a.repeats)

    def masking_overhead(self) -> tuple[float, float]:
        """(masked, unmasked) images/s of one run, timed alternately so drift hits both alike."""
        a = self.args
        masked = self._runner(1, True)
        plain = self._runner(1, False)
        times = {True: [], False: []}
        for fn in (masked, plain):
            jax.block_until_ready(fn())  # compile
        for _ in range(a.repeats):
            for key, fn in ((True, masked), (False, plain)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                times[key].append(time.perf_counter() - t0)
        n = a.steps * a.batch
        return n / statistics.median(times[True]), n / statistics.median(times[False])

    def eval_seconds(self) -> float:
        fns = train.make_step_fns(self.model, self.tx, self.cfg)
        s = self.states[0]
        return median_seconds(lambda: fns.evaluate(s.params, s.batch_stats, s.masks, self.test_x, self.test_y), self.args.repeats)


def epoch_seconds(ips_total: float, runs: int, eval_s: float) -> float:
    """Wall time of one epoch of `runs` vmapped runs: training plus their evaluations."""
    return runs * TRAIN_IMAGES / ips_total + runs * eval_s


def project(t: dict[int, float], epochs: int = 90) -> tuple[float, float]:
    """(one run at a time, vmapped) seconds of the write-up's study for one method.

    t[n] is the wall time of one epoch of n vmapped runs. Vmapped: the 3
    one-shot targets together; the 7-, 14- and 22-round chains in lockstep
    (3 chains for rounds 1-7, 2 for rounds 8-14, 1 for rounds 15-22).
    """
    seq = (1 + 3 + 7 + 14 + 22) * epochs * t[1]
    par = epochs * (t[1] + t[3] + 7 * t[3] + 7 * t[2] + 8 * t[1])
    return seq, par


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, "images per step, per run")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    p.add_argument("--runs", type=int, default=3, help="also time this many runs vmapped (1, 2 and 3 always are)")
    p.add_argument("--steps", type=int, default=50, help="steps per timed dispatch")
    p.add_argument("--repeats", type=int, default=5, help="timed dispatches; medians are printed")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, when not known from its name")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference (needs torch)")
    p.add_argument("--torch-workers", type=int, default=4, help="DataLoader workers of the torch reference")
    args = p.parse_args()

    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"ResNet18 width {args.width}, batch {args.batch}, 90% random masks, {args.steps} steps per "
          f"dispatch, median of {args.repeats}\n")
    for dtype in args.dtypes:
        b = Bench(args, dtype)
        ips = b.train_ips(1)
        cost, cost_plain = b.step_cost(True), b.step_cost(False)
        flops = cost.get("flops")
        ips_masked, ips_plain = b.masking_overhead()
        many = {1: ips}
        for n in sorted({2, 3, args.runs} - {1}):
            many[n] = b.train_ips(n)
        eval_s = b.eval_seconds()
        t = {n: epoch_seconds(v, n, eval_s) for n, v in many.items()}
        print(f"== {dtype}")
        print(f"  train step, 1 run, masked      {ips:12,.0f} images/s   {1e3 * args.batch / ips:8.2f} ms/step")
        if flops:
            achieved = flops * ips / args.batch / 1e12
            peak = peak_tflops(dtype, args.peak_tflops)
            frac = f", {100 * achieved / peak:.1f}% of {peak:g} peak" if peak else " (peak unknown: --peak-tflops)"
            print(f"  XLA FLOPs per image            {flops / args.batch / 1e9:12.2f} GFLOP")
            print(f"  achieved                       {achieved:12.2f} TFLOP/s{frac}")
        print(f"  same, unmasked (A/B alternated) {ips_plain:11,.0f} images/s   vs {ips_masked:,.0f} masked: "
              f"masking costs {100 * (ips_plain / ips_masked - 1):+.1f}%")
        if cost.get("bytes accessed") and cost_plain.get("bytes accessed"):
            # The cost model is deterministic, unlike wall time on a shared machine.
            print(f"  masking in XLA's cost model    {100 * (cost['bytes accessed'] / cost_plain['bytes accessed'] - 1):+11.2f}% "
                  f"bytes, {100 * (cost['flops'] / cost_plain['flops'] - 1):+.3f}% FLOPs")
        for n, v in many.items():
            if n > 1:
                print(f"  {n} runs vmapped, summed        {v:12,.0f} images/s   ({v / ips:.2f}x one run)")
        print(f"  evaluation, 10,000 images      {TEST_IMAGES / eval_s:12,.0f} images/s")
        print(f"  one epoch, 1 run               {t[1]:12.2f} s (train 50,000 + test 10,000)")
        seq, par = project(t)
        print(f"  write-up study, one method, 4,230 epochs: {seq / 60:,.1f} min one run at a time, "
              f"{par / 60:,.1f} min vmapped")
        if args.torch:
            import torch_reference  # noqa: E402  (benchmarks/ is the working directory's sibling)

            tips = torch_reference.images_per_second(args.width, args.batch, dtype, args.steps,
                                                     workers=args.torch_workers)
            print(f"  torch reference (same device)  {tips:12,.0f} images/s   jaxprune is {ips / tips:.2f}x "
                  f"(one run), {max(many.values()) / tips:.2f}x (vmapped)")
        print()


if __name__ == "__main__":
    main()
