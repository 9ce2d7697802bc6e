"""Wall time of a study's phases spread over 1, 2 and 4 devices, and over 2 processes.

    python benchmarks/study_devices.py [--devices 1 2 4] [--runs 4] [--width 4]
                                       [--train-images 2048] [--epochs 2] [--processes]

Trains one baseline (one device), then the one-shot phases to `--runs`
targets as one vmapped group (`--parallel-runs RUNS`) with `--devices N`
for each N: N <= RUNS devices each train RUNS/N of the runs (see
`jaxprune.devices.layout`). Each configuration runs in a fresh process with
`--xla_force_host_platform_device_count` set to the largest N, so on a CPU
the "devices" share its cores: the figures show what the machinery costs,
not a speed-up. With --processes, the same group also runs as a 2-process
job (one device each, `--distributed` on 127.0.0.1). Prints seconds per
configuration, the first epoch's compilation included, beside
`--parallel-runs 1` on one device.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from jaxprune import cli; sys.exit(cli.main())"]


def run(args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts to time")
    p.add_argument("--runs", type=int, default=4, help="one-shot phases trained together (--parallel-runs)")
    p.add_argument("--width", type=int, default=4, help="ResNet18 width (64 = full)")
    p.add_argument("--train-images", type=int, default=2048, help="synthetic training images")
    p.add_argument("--epochs", type=int, default=2, help="epochs per phase (--round-epochs)")
    p.add_argument("--processes", action="store_true", help="also time a 2-process job, one device each")
    a = p.parse_args()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(a.devices)}"}
    targets = [f"{0.5 + 0.4 * i / max(1, a.runs - 1):.3f}" for i in range(a.runs)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = ["--preset", "smoke", "--data", f"synthetic:{a.train_images},512", "--width", str(a.width),
                  "--no-progress"]
        run(["train", *common, "--epochs", "1", "--devices", "1", "--workdir", str(tmp / "base")], env)
        study = ["study", *common, "--baseline", str(tmp / "base"), "--methods", "magnitude", "--schedules",
                 "oneshot", "--targets", *targets, "--round-epochs", str(a.epochs), "--no-report"]
        print(f"{a.runs} one-shot phases x {a.epochs} epochs, width {a.width}, {a.train_images} images; "
              f"{os.cpu_count()} CPU cores")
        s = run([*study, "--devices", "1", "--workdir", str(tmp / "serial")], env)
        print(f"  --parallel-runs 1, 1 device:             {s:7.1f} s")
        for n in a.devices:
            s = run([*study, "--parallel-runs", str(a.runs), "--devices", str(n), "--workdir", str(tmp / f"d{n}")], env)
            print(f"  --parallel-runs {a.runs}, {n} device(s):          {s:7.1f} s")
        if a.processes:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            one = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
            t = time.perf_counter()
            procs = [subprocess.Popen(
                [*CLI, *study, "--parallel-runs", str(a.runs), "--workdir", str(tmp / "hosts"), "--distributed",
                 "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                env=one, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
            codes = [q.wait(timeout=1800) for q in procs]
            print(f"  --parallel-runs {a.runs}, 2 processes x 1 device: {time.perf_counter() - t:7.1f} s (exit {codes})")


if __name__ == "__main__":
    main()
