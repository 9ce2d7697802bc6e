"""Do `jaxprune train`'s printed epoch times add up, and does each blame its own epoch?

    python benchmarks/epoch_seconds.py [-- TRAIN ARGS ...]

Runs `jaxprune train ... --no-progress` in a subprocess (default: ResNet18 at width 8
on 5,000 synthetic images, 4 epochs; pass your own arguments after `--`, e.g.
`-- --model cifar_resnet_20 --data cifar10-bin:DIR --epochs 2 --schedule cosine`) and
stamps each line it prints with the time it arrived. Prints, per epoch, the printed
seconds and images/s beside the measured interval between the epoch lines' arrivals
(the host prints epoch e once epoch e+1 is dispatched, so after the first epoch this
interval is one epoch of the loop), then:

- each epoch's images/s against the run's median (the printed figures should be
  within 1.5x of it: compilation is counted apart);
- the printed compile time plus the epochs' seconds against the command's wall
  time (the rest is starting Python and JAX, loading data, and the last save).

Works on releases that print no compile line (it is then counted as 0).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH = re.compile(r": epoch (\d+)/(\d+), .*?, ([\d.]+) s \(([\d,]+) images/s\)")
COMPILED = re.compile(r": compiled in ([\d.]+) s")
DEFAULT = ["--width", "8", "--data", "synthetic:5000,1000", "--epochs", "4", "--schedule", "cosine"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_args", nargs="*", help="arguments for `jaxprune train` (after --)")
    args = p.parse_args()
    train_args = args.train_args or DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "jaxprune", "train", *train_args, "--no-progress", "--workdir", f"{tmp}/run"]
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
            print(f"{lines[-1][0]:8.1f} s | {line.rstrip()}", flush=True)
        wall = time.perf_counter() - t0
        if proc.wait() != 0:
            sys.exit(f"epoch_seconds: jaxprune train exited {proc.returncode}")

    compiled = sum(float(m.group(1)) for _, l in lines if (m := COMPILED.search(l)))
    epochs = [(t, int(m.group(1)), float(m.group(3)), float(m.group(4).replace(",", "")))
              for t, l in lines if (m := EPOCH.search(l))]
    print(f"\n{'epoch':>5} {'printed s':>10} {'printed img/s':>14} {'line interval s':>16}")
    for i, (t, e, s, ips) in enumerate(epochs):
        gap = f"{t - epochs[i - 1][0]:16.1f}" if i else f"{'(first)':>16}"
        print(f"{e:5d} {s:10.1f} {ips:14,.0f} {gap}")
    median = statistics.median(ips for *_, ips in epochs)
    worst = max(max(ips / median, median / ips) for *_, ips in epochs)
    total = compiled + sum(s for _, _, s, _ in epochs)
    print(f"\nimages/s: median {median:,.0f}; the farthest epoch is {worst:.2f}x from it (want <= 1.5x)")
    print(f"compiled {compiled:.1f} s + epochs {total - compiled:.1f} s = {total:.1f} s of {wall:.1f} s wall "
          f"({100 * total / wall:.0f}%; the rest: start-up, data, last save)")


if __name__ == "__main__":
    main()
