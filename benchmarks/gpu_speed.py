"""The speed figures of a time-boxed GPU call, in one process, each printed as soon as it is taken.

    python benchmarks/gpu_speed.py [--width 64] [--batch 128] [--dtypes bfloat16 float32]
                                   [--runs 2 6] [--steps 20] [--repeats 5] [--torch]
                                   [--profile-dtype bfloat16] [--profile-dir DIR] [--top 12]

For each dtype, on JAX's default device, with study_speed.py's setup (random
uint8 images already on the device, random 90%-sparse masks, the masked train
step dispatched as `jaxprune train` dispatches it):
- one run: images/s and ms/step;
- the same step without masking, timed alternately with it (A/B): what
  masking costs;
- each --runs n, vmapped over a run axis: images/s summed over the runs;
- with --torch, the write-up's PyTorch stack (torch_reference.py) on the same
  device, and the ratios;
- for --profile-dtype: one dispatch of one run and one of the most runs traced
  with jax.profiler into --profile-dir and summarised (profile_summary.py):
  the top kernels, library kernels against XLA's fusions, the vmapped
  program's convolutions in its optimized HLO, and XLA's FLOPs of n vmapped
  runs against n x one run's (~1: the grouped convolutions run as grouped
  kernels; ~n: XLA expanded them into dense ones, the grouped fallback).

Each program is compiled once (the time is printed) and reused for timing,
tracing and its HLO: about half the compilations of study_speed.py, which
also measures FLOP rates, evaluation and the study's projection. Timings are
medians of --repeats dispatches of --steps steps after a warm-up dispatch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_summary  # noqa: E402
from study_speed import Bench  # noqa: E402
from timing import add_model_args, median_seconds  # noqa: E402
from jaxprune.training import train  # noqa: E402


class Program:
    """--steps train steps of `runs` runs (vmapped when runs > 1), compiled once; calling it runs them."""

    def __init__(self, bench: Bench, runs: int, masked: bool = True):
        a = bench.args
        fns = train.make_step_fns(bench.model, bench.tx, bench.cfg, runs=runs > 1, masked=masked)
        chunk = train.dispatch_steps(bench.cfg, a.steps)  # the whole scan on accelerators, 1 on a CPU
        if runs > 1:
            self.state = jax.tree.map(lambda *xs: jnp.stack(xs), *bench.states[:runs])
            batches = jnp.tile(jnp.arange(a.steps * a.batch, dtype=jnp.int32).reshape(1, a.steps, a.batch), (runs, 1, 1))
        else:
            self.state = jax.tree.map(jnp.copy, bench.states[0])
            batches = jnp.arange(a.steps * a.batch, dtype=jnp.int32).reshape(a.steps, a.batch)
        self.chunks = [batches[..., s : s + chunk, :] for s in range(0, a.steps, chunk)]
        self.images, self.labels = bench.images, bench.labels
        t0 = time.perf_counter()
        self.compiled = fns.train_chunk.lower(self.state, self.images, self.labels, self.chunks[0]).compile()
        self.compile_s = time.perf_counter() - t0
        self.runs, self.images_per_call = runs, runs * a.steps * a.batch

    def __call__(self):
        s = self.state
        for batches in self.chunks:
            s, loss, _ = self.compiled(s, self.images, self.labels, batches)
        self.state = s
        return loss


def ab_seconds(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of two functions timed alternately (drift hits both alike), after a warm-up each."""
    for fn in (first, second):
        jax.block_until_ready(fn())
    times = ([], [])
    for _ in range(repeats):
        for fn, t in zip((first, second), times):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            t.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def label(text: str) -> str:
    return f"  {text:<31}"


def show(text: str) -> None:
    print(text, flush=True)


def profile(prog: Program, logdir: Path, top: int) -> None:
    try:
        with jax.profiler.trace(str(logdir)):
            jax.block_until_ready(prog())
    except Exception as e:  # a profiler that cannot start must not cost the figures after it
        show(f"  -- profile: jax.profiler.trace failed: {type(e).__name__}: {e}")
        return
    title = "1 run" if prog.runs == 1 else f"{prog.runs} runs vmapped"
    steps = sum(b.shape[-2] for b in prog.chunks)
    show(f"  -- profile, {title}: {steps} step(s) in {len(prog.chunks)} dispatch(es), traced into "
         f"{logdir.parent.name}/{logdir.name}")
    for line in profile_summary.summarise_trace(logdir, top):
        show(f"  {line}")
    show("  convolutions in the optimized HLO:")
    for line in profile_summary.conv_census(prog.compiled.as_text() or ""):
        show(f"  {line}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, "images per step, per run")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=("float32", "bfloat16"))
    p.add_argument("--runs", type=int, nargs="*", default=[2, 6], help="vmapped runs to time (each > 1)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed dispatch")
    p.add_argument("--repeats", type=int, default=5, help="timed dispatches; medians are printed")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference (needs torch)")
    p.add_argument("--torch-workers", type=int, default=4, help="DataLoader workers of the torch reference")
    p.add_argument("--profile-dtype", default="bfloat16", help="the dtype whose step is traced ('none': no trace)")
    p.add_argument("--profile-dir", default="profile", help="where the traces go (DIR/<dtype>-runs-N)")
    p.add_argument("--top", type=int, default=12, help="kernels listed per trace")
    args = p.parse_args()
    if any(n < 2 for n in args.runs):
        p.error("--runs: vmapped settings have 2 runs or more")

    dev = jax.devices()[0]
    show(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    show(f"ResNet18 width {args.width}, batch {args.batch} per run, 90% random masks, {args.steps} steps per "
         f"dispatch, median of {args.repeats}")
    for dtype in args.dtypes:
        show(f"\n== {dtype}")
        bench = Bench(argparse.Namespace(width=args.width, batch=args.batch, steps=args.steps,
                                         runs=max(args.runs, default=1), repeats=args.repeats), dtype)
        one = Program(bench, 1)
        ips = one.images_per_call / median_seconds(one, args.repeats)
        show(f"{label('1 run, masked')}{ips:12,.0f} images/s   {1e3 * args.batch / ips:8.2f} ms/step   "
             f"(compiled in {one.compile_s:.1f} s)")
        plain = Program(bench, 1, masked=False)
        t_masked, t_plain = ab_seconds(one, plain, args.repeats)
        show(f"{label('1 run, unmasked (A/B)')}{one.images_per_call / t_plain:12,.0f} images/s   vs "
             f"{one.images_per_call / t_masked:,.0f} masked: masking costs {100 * (t_masked / t_plain - 1):+.1f}%")
        del plain
        many = {1: ips}
        progs = {}
        for n in args.runs:
            progs[n] = Program(bench, n)
            many[n] = progs[n].images_per_call / median_seconds(progs[n], args.repeats)
            show(f"{label(f'{n} runs vmapped, summed')}{many[n]:12,.0f} images/s   ({many[n] / ips:.2f}x one run; "
                 f"compiled in {progs[n].compile_s:.1f} s)")
        if args.torch:
            import torch_reference

            tips = torch_reference.images_per_second(args.width, args.batch, dtype, args.steps,
                                                     workers=args.torch_workers)
            show(f"{label('torch reference (same device)')}{tips:12,.0f} images/s   jaxprune is {ips / tips:.2f}x "
                 f"(one run), {max(many.values()) / tips:.2f}x (best vmapped)")
        if dtype == args.profile_dtype:
            profile(one, Path(args.profile_dir) / f"{dtype}-runs-1", args.top)
            if progs:
                n = max(progs)
                profile(progs[n], Path(args.profile_dir) / f"{dtype}-runs-{n}", args.top)
                f1, fn = profile_summary.flops(one.compiled), profile_summary.flops(progs[n].compiled)
                if f1 and fn:
                    ratio = fn / (n * f1)
                    verdict = ("~1: the grouped convolutions run as grouped kernels" if ratio < n ** 0.5
                               else f"~{n}: the grouped convolutions were expanded into dense ones (the fallback)")
                    show(f"  XLA FLOPs of {n} vmapped runs / ({n} x one run's): {ratio:.2f} ({verdict})")
                else:
                    show("  XLA FLOPs: no cost analysis on this backend")
        del one, progs, bench


if __name__ == "__main__":
    main()
