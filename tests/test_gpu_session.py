"""benchmarks/gpu_session.sh, the scripted GPU session, rehearsed on the CPU with tiny settings:
a lent GPU's 15 minutes must not be spent finding a typo in it.

The three calls run as the device tool runs them: from a copy of the checkout that holds only
that call's data piece (.data/c1, .data/c2, .data/c3), each into an empty $OUT, the pieces
accumulating in one JAXPRUNE_GPU_DATA (the warm machine). After every call $OUT must fit what
the tool brings back: at most 8 plain files of at most 16 MiB, no deeper than $OUT/a/b/file,
names of letters, digits, '.', '_', '-'. The deadlines are set, not waited for: a limit whose
signal falls a few seconds into the step, with a grace long enough that whatever the command is
doing then, the outcome is the same.
"""

import csv
import gzip
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from jaxprune.data import sources as data

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
PIECES = {"c1": ["data_batch_1", "data_batch_2"], "c2": ["data_batch_3", "data_batch_4"],
          "c3": ["data_batch_5", "test_batch"]}
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
TINY_TEST = "import jax, jax.numpy as jnp\n\n\ndef test_jit_runs():\n    assert float(jax.jit(lambda x: 2 * x.sum())(jnp.ones(3))) == 6.0\n"
TINY_SPEED = {  # gpu_speed.py and epoch_idle.py at width 2 (no torch: its CPU backward can hang here)
    "JAXPRUNE_GPU_TORCH": "0",
    "JAXPRUNE_GPU_SPEED": "--width 2 --batch 8 --steps 2 --repeats 1 --runs 2 --dtypes float32 --profile-dtype float32",
    "JAXPRUNE_GPU_IDLE": "--width 2 --batch 16 --train-images 64 --test-images 32 --epochs 3",
}


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pieces(tmp_path):
    """The three CIFAR-10 pieces, 32 random images per file (so not 30,730,000 bytes)."""
    rng = np.random.default_rng(0)
    for piece, names in PIECES.items():
        folder = tmp_path / "pieces" / piece
        folder.mkdir(parents=True)
        for name in names:
            data.write_cifar10_bin(folder / f"{name}.bin", rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
                                   rng.integers(0, 10, 32).astype(np.uint8))
    return tmp_path / "pieces"


def session(tmp_path, step, out, carry=(), args=None, **env):
    """One `run` call: the script's `step` from tmp_path/checkout (benchmarks/ copied, .data/ holding
    only the carried pieces) into the empty folder `out`; the machine's state (data, runs) in tmp_path."""
    checkout = tmp_path / "checkout"
    if not (checkout / "benchmarks").exists():
        shutil.copytree(ROOT / "benchmarks", checkout / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
        (checkout / "tests").mkdir(exist_ok=True)
        (checkout / "tests" / "test_tiny.py").write_text(TINY_TEST)
    shutil.rmtree(checkout / ".data", ignore_errors=True)
    for piece in carry:
        shutil.copytree(tmp_path / "pieces" / piece, checkout / ".data" / piece)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JAXPRUNE_GPU_", "JAXPRUNE_FAULT"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "JAX_PLATFORMS": "cpu", "OUT": str(out),
        "JAXPRUNE_GPU_DATA": str(tmp_path / "c10"), "JAXPRUNE_GPU_RUNS": str(tmp_path / "runs"),
        "JAXPRUNE_GPU_INSTALL": "0", **env,
    }
    argv = ["bash", str(checkout / "benchmarks" / "gpu_session.sh"), *([step] if args is None else args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def assert_fits(out):
    """What the device tool brings back from $OUT: <= 8 plain files, <= 16 MiB, <= $OUT/a/b/file, plain names."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert 0 < len(files) <= 8, files
    for p in files:
        rel = p.relative_to(out)
        assert p.is_file() and not p.is_symlink(), rel
        assert len(rel.parts) <= 3, rel
        assert all(NAME.match(part) for part in rel.parts), rel
        assert p.stat().st_size <= 16 * 2**20, rel


def members(out, step):
    """{name: bytes} of the files in $OUT/<step>.tar.gz."""
    with tarfile.open(out / f"{step}.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_usage_errors_exit_2_and_write_nothing(tmp_path):
    for args, words in (([], "usage: bash benchmarks/gpu_session.sh {speed|tests|baseline}"),
                        (["train"], "usage:"), (["speed", "tests"], "usage:")):
        r = session(tmp_path, None, tmp_path / "out", args=args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
    r = session(tmp_path, "speed", tmp_path / "out", JAXPRUNE_GPU_LIMIT_S="3m")
    assert r.returncode == 2 and "JAXPRUNE_GPU_LIMIT_S must be whole seconds" in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_or_wrong_pieces_exit_2_in_one_line(tmp_path, pieces):
    # A fresh machine given only the third piece: it says so in one line.
    r = session(tmp_path, "baseline", tmp_path / "out", carry=["c3"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "gpu_session: missing data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin in" in r.stderr
    assert "fresh machine" in r.stderr and not (tmp_path / "out").exists()
    # All six, but not the real data set's size: refused, unless told otherwise.
    r = session(tmp_path, "baseline", tmp_path / "out", carry=["c1", "c2"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is not 30,730,000 bytes" in r.stderr


def test_default_test_list_names_tests_that_exist():
    # pytest runs nothing when one node id is not found: a renamed test must not cost the GPU call.
    tests = re.search(r'^TESTS="([^"]*)"', SCRIPT.read_text(), re.M).group(1).split()
    assert len(tests) >= 10
    for test in tests:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        assert not name or re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), test


def test_profile_summary_reads_a_gpu_trace_and_says_when_there_is_none(tmp_path):
    ps = load_benchmark("profile_summary")
    assert ps.summarise_trace(tmp_path, 5) == [f"no trace file (*.xplane.pb, *.trace.json.gz) found under {tmp_path}"]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_summary.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("no trace file")
    # A Chrome trace shaped as a GPU one: a /device:GPU:0 process with a stream and a derived line.
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        *[{"ph": "X", "pid": 1, "tid": 7, "ts": i, "dur": 30.0, "name": "sm90_xmma_fprop_implicit_gemm_bf16",
           "args": {"hlo_op": "cudnn-conv.1"}} for i in range(3)],
        {"ph": "X", "pid": 1, "tid": 7, "ts": 5, "dur": 10.0, "name": "triton_gemm_fusion", "args": {"hlo_op": "fusion.2"}},
        {"ph": "X", "pid": 1, "tid": 8, "ts": 5, "dur": 500.0, "name": "cudnn-conv.1"},  # derived: not counted
        {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 900.0, "name": "PjitFunction(step)"},
    ]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    lines = ps.summarise_trace(tmp_path, 5)
    assert lines[0] == "trace: host.trace.json.gz (/device:GPU:0)"
    assert lines[1] == "kernel time 0.10 ms in 4 launches of 2 distinct kernels"
    assert lines[3].split()[:3] == ["0.090", "90.0%", "3"] and lines[3].endswith("[cudnn-conv.1]")
    assert "library kernels (cuDNN/cuBLAS/CUTLASS names): 90.0% of kernel time" in lines[5]
    assert "kernels of convolutions (name or hlo op contains 'conv'): 90.0%" in lines[6]
    # The optimized HLO's convolutions, by kind and group count.
    hlo = "\n".join([
        '  %cudnn-conv.1 = (bf16[6,8,8,64]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), window={size=3x3 pad=1_1x1_1}, '
        'dim_labels=b01f_o01i->b01f, feature_group_count=6, custom_call_target="__cudnn$convForward"',
        '  %cudnn-conv.2 = (f32[3,3,64,64]{3,2,1,0}, u8[0]{0}) custom-call(%c, %d), batch_group_count=6, '
        'custom_call_target="__cudnn$convBackwardFilter"',
        '  %convolution.3 = f32[8,8,8,64]{3,2,1,0} convolution(%e, %f), window={size=3x3}, feature_group_count=6',
        '  %add.4 = f32[8]{0} add(%g, %h)',
    ])
    assert ps.conv_census(hlo) == [
        "     1 x __cudnn$convBackwardFilter, batch_group_count=6",
        "     1 x __cudnn$convForward, feature_group_count=6",
        "     1 x convolution (XLA op), feature_group_count=6",
    ]


def test_out_that_does_not_fit_fails_loudly(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "bad name.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(16 * 2**20 + 1)  # sparse: no disk
    for i in range(6):
        (out / f"f{i}.txt").write_text("x")
    # No time for any command (the limit is all packing time): the step only packs, then checks $OUT.
    r = session(tmp_path, "speed", out, JAXPRUNE_GPU_LIMIT_S="10", JAXPRUNE_GPU_PACK_S="10")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "gpu_speed: skipped, no time left" in r.stdout and "epoch_idle: skipped, no time left" in r.stdout
    for words in ("a/b/c/deep.txt: deeper than $OUT/a/b/file", "bad name.txt: a name outside letters",
                  "big.bin: 16777217 bytes, over 16 MiB", "12 files, over 8", "FAILED, $OUT does not fit"):
        assert words in r.stderr, (words, r.stderr)


@pytest.mark.slow
def test_three_calls_back_to_back_bring_back_their_figures(tmp_path, pieces):
    # 1. speed, carrying .data/c1
    out = tmp_path / "out1"
    r = session(tmp_path, "speed", out, carry=["c1"], **TINY_SPEED)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_fits(out)
    assert sorted(p.name for p in out.iterdir()) == ["device.txt", "speed-summary.txt", "speed.tar.gz"]
    assert (out / "device.txt").read_text().startswith("cpu (cpu, ")
    summary = (out / "speed-summary.txt").read_text()
    for words in ("data pieces in", "data_batch_1.bin data_batch_2.bin", "== float32", "1 run, masked",
                  "1 run, unmasked (A/B)", "masking costs", "2 runs vmapped, summed", "-- profile, 1 run:",
                  "-- profile, 2 runs vmapped:", "kernel time", "convolutions in the optimized HLO",
                  "XLA FLOPs of 2 vmapped runs", "median device-idle between epochs", "elapsed:", "exit 0"):
        assert words in summary, (words, summary)
    assert "Warning" not in summary and "FAILED" not in summary and "stopped" not in summary
    assert r.stdout.rstrip().endswith("gpu_session speed: exit 0; outputs in " + str(out))
    files = members(out, "speed")
    assert {"speed/gpu_speed.txt", "speed/epoch_idle.txt", "speed/device.txt", "speed/summary.txt"} <= set(files)
    assert any(n.startswith("speed/profile/float32-runs-2/") and n.endswith(".xplane.pb") for n in files)
    log = files["speed/gpu_speed.txt"].decode()
    assert log.startswith("$ python3 benchmarks/gpu_speed.py --width 64 --dtypes bfloat16 float32 --runs 2 6 --profile-dir")
    assert "# exit 0" in log

    # 2. tests, carrying .data/c2 (the same warm machine: the pieces accumulate)
    out = tmp_path / "out2"
    r = session(tmp_path, "tests", out, carry=["c2"], JAXPRUNE_GPU_TESTS="tests/test_tiny.py")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_fits(out)
    summary = (out / "tests-summary.txt").read_text()
    assert "data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin" in summary
    assert re.search(r"=+ 1 passed.* =+", summary), summary
    files = members(out, "tests")
    assert "tests/junit.xml" in files and "tests/test_tiny.py::test_jit_runs PASSED" in files["tests/pytest.txt"].decode()

    # 3. baseline, carrying .data/c3: all six files are there now
    out = tmp_path / "out3"
    r = session(tmp_path, "baseline", out, carry=["c3"], JAXPRUNE_GPU_ANY_DATA="1",
                JAXPRUNE_GPU_ARGS="--width 2 --epochs 2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_fits(out)
    assert len(list((tmp_path / "c10" / "cifar-10-batches-bin").glob("*.bin"))) == 6
    summary = (out / "baseline-summary.txt").read_text()
    assert "epochs saved: 2; last: train loss" in summary and "training finished" in summary, summary
    files = members(out, "baseline")
    log = files["baseline/train.log"].decode()
    assert log.startswith("$ jaxprune train --preset seed --data cifar10-bin:") and "--dtype bfloat16" in log
    assert "# exit 0" in log
    rows = list(csv.DictReader(io.StringIO(files["baseline/seed/metrics.csv"].decode())))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads(files["baseline/seed/config.json"])
    assert not any("checkpoints" in n for n in files)


@pytest.mark.slow
def test_the_deadline_stops_training_which_saves_and_still_comes_back(tmp_path, pieces):
    # SIGTERM 8 s into the step (71 - 3 packing - 60 grace), whatever the trainer is doing then:
    # starting (it leaves at once) or training (it saves the epoch in flight). Either way it exits
    # 143, which the step counts as done, and the tar comes back.
    t0 = time.monotonic()
    out = tmp_path / "out"
    r = session(tmp_path, "baseline", out, carry=["c1", "c2", "c3"], JAXPRUNE_GPU_ANY_DATA="1",
                JAXPRUNE_GPU_ARGS="--width 2 --epochs 1000", JAXPRUNE_GPU_LIMIT_S="71", JAXPRUNE_GPU_PACK_S="3",
                JAXPRUNE_GPU_GRACE_S="60")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert time.monotonic() - t0 < 71
    assert_fits(out)
    files = members(out, "baseline")
    log = files["baseline/train.log"].decode()
    assert "# stopped by the deadline: SIGTERM at +8 s of the step's 71 s" in log and "# exit 143" in log
    summary = (out / "baseline-summary.txt").read_text()
    assert "training stopped by the deadline (SIGTERM, exit 143)" in summary
    # Whatever was saved is whole epochs from the first (none, if the SIGTERM came while starting).
    if "baseline/seed/metrics.csv" in files:
        epochs = [int(r["epoch"]) for r in csv.DictReader(io.StringIO(files["baseline/seed/metrics.csv"].decode()))]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 1000
        if epochs:
            assert f"epochs saved: {epochs[-1]};" in summary


@pytest.mark.slow
def test_the_deadline_interrupts_pytest_which_still_comes_back(tmp_path):
    # SIGINT at +10 s (27 - 2 packing - 15 for pytest to stop), during a 60-s test or before it
    # (at +6 s, on a loaded machine, the script's preamble once took all of it: "no time left").
    (tmp_path / "checkout" / "tests").mkdir(parents=True)
    (tmp_path / "checkout" / "tests" / "test_sleep.py").write_text(
        "import time\n\n\ndef test_sleeps():\n    time.sleep(60)\n")
    t0 = time.monotonic()
    out = tmp_path / "out"
    r = session(tmp_path, "tests", out, JAXPRUNE_GPU_TESTS="tests/test_sleep.py", JAXPRUNE_GPU_LIMIT_S="27",
                JAXPRUNE_GPU_PACK_S="2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert time.monotonic() - t0 < 27
    assert_fits(out)
    summary = (out / "tests-summary.txt").read_text()
    assert "pytest: stopped by the deadline (SIGINT)" in summary, summary
    log = members(out, "tests")["tests/pytest.txt"].decode()
    assert "# stopped by the deadline: SIGINT at +10 s of the step's 27 s" in log
