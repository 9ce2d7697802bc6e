"""--executor ray: a tiny study's phases as Ray tasks on a local Ray (2 CPUs), against the local run.

A pytest session of its own (tests/test_ray.py starts it), in which Ray starts before JAX does
anything: Ray forks its processes from the driver, which must not hold JAX's threads by then.

    JAXPRUNE_RAY_SESSION=1 python -m pytest tests/raycluster
"""

import csv
import os

import pytest

from jaxprune import cli
from jaxprune.training import rundir

ray = pytest.importorskip("ray")

ARGS = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude", "--baseline-epochs", "2",
        "--round-epochs", "2", "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as jaxprune.study.ray_executor.init does
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]  # where another driver joins this cluster (--ray-address)
    ray.shutdown()


def results(w):
    with open(w / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in rundir.TIMING_FIELDS} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, local_ray):
    """The reference: the same study by the local executor, at both targets."""
    w = tmp_path_factory.mktemp("local") / "study"
    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--workdir", str(w)]) == 0
    return results(w)


def test_a_study_on_ray_equals_the_local_run_bit_for_bit(tmp_path, local_ray, local_run, capsys):
    w = tmp_path / "study"
    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--executor", "ray", "--workdir", str(w)]) == 0
    out = capsys.readouterr().out
    assert "[5/5] " in out and out.count("best test accuracy") == 5
    assert results(w) == local_run
    assert not list(w.glob(".ray-probe-*"))  # the shared-directory probe cleans up


def test_begun_on_one_executor_and_finished_on_the_other(tmp_path, local_ray, local_run):
    a, b = tmp_path / "local-then-ray", tmp_path / "ray-then-local"
    assert cli.main([*ARGS, "--targets", "0.5", "--workdir", str(a)]) == 0
    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--executor", "ray", "--workdir", str(a)]) == 0
    assert cli.main([*ARGS, "--targets", "0.5", "--executor", "ray", "--workdir", str(b)]) == 0
    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--workdir", str(b)]) == 0
    assert results(a) == results(b)
    # Growing kept the first invocation's chain to 50%; every other phase is the local run's.
    grown = [r for r in results(a) if not (r["schedule"] == "iterative" and r["target"] == "0.5")]
    assert grown == local_run and len(results(a)) == len(local_run) + 2  # that chain: 1 round of 2 epochs


def test_a_worker_killed_mid_phase_is_retried_and_resumes_from_its_checkpoint(tmp_path, local_ray, local_run,
                                                                              monkeypatch):
    # The worker dies at its first checkpoint commit (the baseline's epoch 1 of 2); the retried task
    # finds epoch 1 saved, trains epoch 2 only, and the study ends as the local one did.
    marker = tmp_path / "killed"
    monkeypatch.setenv("JAXPRUNE_FAULT", "checkpoint-committed:1:kill-once")
    monkeypatch.setenv("JAXPRUNE_FAULT_PATH", str(marker))
    w = tmp_path / "study"
    assert cli.main([*ARGS, "--targets", "0.5", "0.75", "--executor", "ray", "--workdir", str(w)]) == 0
    assert marker.exists()  # the kill happened
    assert results(w) == local_run
    assert [r["epoch"] for r in rundir.read_metrics(w / "baseline")] == [1, 2]


def test_a_diverging_phase_skips_its_dependents_and_names_them(tmp_path, local_ray, capsys):
    w = tmp_path / "study"
    code = cli.main([*ARGS, "--targets", "0.5", "0.75", "--lr", "1e30", "--executor", "ray", "--workdir", str(w)])
    out = capsys.readouterr().out
    assert code == 1
    assert "baseline: diverged at epoch 1" in out
    assert out.count("[not trained]") == 4 and "it descends from baseline, which diverged" in out


def _interrupted(args, tmp_path, tag):
    """Runs the CLI in a process of its own and sends it SIGINT once its first phase has finished."""
    import subprocess
    import sys
    import time

    log = tmp_path / f"{tag}.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jaxprune", *args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "[1/5]" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(2)
        code = proc.wait(timeout=300)
    return code, log.read_text()


def test_interrupted_on_ray_finished_locally_and_the_other_way_round(tmp_path, local_ray, local_run):
    # The interrupted driver is a process of its own that joins this session's cluster (--ray-address).
    for first, then in ((["--executor", "ray", "--ray-address", local_ray], []), ([], ["--executor", "ray"])):
        w = tmp_path / ("ray-first" if first else "local-first")
        code, text = _interrupted([*ARGS, "--targets", "0.5", "0.75", *first, "--workdir", str(w)], tmp_path, w.name)
        assert code == 130 and "Traceback" not in text, text[-3000:]
        assert "[5/5]" not in text  # it stopped before the end
        assert cli.main([*ARGS, "--targets", "0.5", "0.75", *then, "--workdir", str(w)]) == 0
        assert results(w) == local_run, w.name


def test_vmapped_groups_on_ray_equal_the_local_groups(tmp_path, local_ray):
    # --parallel-runs 2: after the baseline, the one-shot phase and the iterative chain's first
    # round train as one task (vmapped, run axis 2), as the local run groups them.
    a, b = tmp_path / "local", tmp_path / "ray"
    args = [*ARGS, "--targets", "0.5", "--parallel-runs", "2"]
    assert cli.main([*args, "--workdir", str(a)]) == 0
    assert cli.main([*args, "--executor", "ray", "--workdir", str(b)]) == 0
    assert results(b) == results(a) and len(results(a)) == 2 + 2 * 2
