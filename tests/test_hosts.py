"""Several hosts: a study run by two local processes joined with jax.distributed (CPU, gloo)."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxprune import cli

pytestmark = pytest.mark.slow  # every test here trains or starts processes that import jax

CLI = [sys.executable, "-c", "import sys; from jaxprune import cli; sys.exit(cli.main())"]
STUDY = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude",
         "--targets", "0.5", "0.75", "--baseline-epochs", "1", "--parallel-runs", "2", "--no-report",
         "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_job(args, n, root, tag="p", devices_per_process=1):
    """Starts the CLI as an n-process job on this machine; each process's output goes to root/<tag><i>.out."""
    # JAX_PLATFORMS=cpu: these are forced host devices; on a GPU machine the
    # default backend would otherwise be its one GPU.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    port = free_port()
    return [
        subprocess.Popen(
            [*CLI, *args, "--distributed", "--coordinator-address", f"127.0.0.1:{port}",
             "--num-processes", str(n), "--process-id", str(i)],
            env=env, stdout=open(root / f"{tag}{i}.out", "w"), stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]


def finish(procs, timeout):
    """Return codes, every process killed once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def both(root, tag):
    """Both processes' output, for a failure message: the cause is often in the other one's."""
    return "\n".join(f"--- {tag}{i}.out:\n" + (root / f"{tag}{i}.out").read_text()[-2500:] for i in (0, 1))


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_processes_run_one_study_survive_a_lost_host_and_match_one_process(tmp_path):
    workdir = ["--workdir", str(tmp_path / "two")]
    procs = start_job([*STUDY, *workdir], 2, tmp_path, tag="cut")
    out0 = tmp_path / "cut0.out"
    deadline = time.monotonic() + 240
    while "[2/5]" not in out0.read_text() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert "[2/5]" in out0.read_text(), both(tmp_path, "cut")
    procs[1].send_signal(signal.SIGKILL)  # a host dies mid-study
    codes = finish(procs, 200)
    text = out0.read_text()
    assert codes[0] != 0, both(tmp_path, "cut")
    # Process 0 ends with a line saying so: ours, or JAX's when it notices first.
    assert "rerun the same command on every host" in text or "another task died" in text, both(tmp_path, "cut")

    # The same command on every host resumes the study and finishes it.
    codes = finish(start_job([*STUDY, *workdir], 2, tmp_path), 300)
    text = (tmp_path / "p0.out").read_text()
    assert codes == [0, 0], both(tmp_path, "p")
    assert "5 phases (2 finished)" in text or "5 phases (3 finished)" in text, text
    # Process 0 alone reports and writes; process 1 prints nothing of the study.
    assert "[5/5]" in text and "results:" in text
    assert "study:" not in (tmp_path / "p1.out").read_text()

    # The same study in one process over 2 devices: each run is on a device of
    # its own, as in the job, so the numbers are the same programs' (seen: equal).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = subprocess.run([*CLI, *STUDY, "--workdir", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = rows(tmp_path / "one" / "results.csv"), rows(tmp_path / "two" / "results.csv")
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert [x[k] for k in ("schedule", "target", "round", "epoch", "sparsity")] == \
            [y[k] for k in ("schedule", "target", "round", "epoch", "sparsity")]
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-6)
        assert float(x["test_acc"]) == pytest.approx(float(y["test_acc"]), abs=1e-9)

    # Each phase's checkpoint restores in a single plain process (this one).
    for r in b:
        name = "baseline" if r["schedule"] == "baseline" else (
            f"{r['schedule']}-{r['method']}-{float(r['target']):.2f}/round-{int(r['round']):02d}")
        assert cli.main(["evaluate", str(tmp_path / "two" / name)]) == 0


def test_distributed_options_without_distributed_are_refused(capsys):
    assert cli.main(["study", "--preset", "tiny", "--num-processes", "2"]) == 2
    assert "--num-processes needs --distributed" in capsys.readouterr().err


def test_sigterm_to_one_host_stops_both_after_the_same_epoch_and_a_rerun_completes(tmp_path):
    # A scheduler's SIGTERM may reach one host only (or each at its own moment):
    # the processes agree on the stop, so none waits for the others in a collective.
    args = ["train", "--preset", "tiny", "--data", "synthetic:256,64", "--epochs", "4", "--no-progress",
            "--workdir", str(tmp_path / "run")]
    procs = start_job(args, 2, tmp_path, tag="t")
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), both(tmp_path, "t")
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # process 1 alone
    codes = finish(procs, 240)
    assert codes == [143, 143], both(tmp_path, "t")
    for i in (0, 1):
        text = (tmp_path / f"t{i}.out").read_text()
        assert "stopped by SIGTERM after saving the last epoch" in text and "Traceback" not in text, text[-3000:]
    saved = len(metrics.read_text().splitlines()) - 1
    assert 1 <= saved < 4
    codes = finish(start_job(args, 2, tmp_path, tag="r"), 300)
    assert codes == [0, 0], both(tmp_path, "r")
    assert len(metrics.read_text().splitlines()) == 1 + 4
