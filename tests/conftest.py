import atexit
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.models import ResNet18

# Weights kept after each of 22 rounds of global magnitude pruning by 10% of
# the remaining 11,164,352, as printed by torch.nn.utils.prune.global_unstructured
# (torch 2.13.0, L1Unstructured) on ResNet18-shaped tensors.
TORCH_KEPT_22_ROUNDS = [
    10047917, 9043125, 8138813, 7324932, 6592439, 5933195, 5339875, 4805887,
    4325298, 3892768, 3503491, 3153142, 2837828, 2554045, 2298641, 2068777,
    1861899, 1675709, 1508138, 1357324, 1221592, 1099433,
]


# One XLA compilation cache for the session and the subprocesses it starts
# (they inherit the environment), so each train step compiles once.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxprune-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
# Every compilation, not only those over 1 s: the many small ones (init, pruning,
# evaluation helpers) cost a process ~5 s each time it starts (seen: a smoke run's
# second start 16.3 s -> 11.0 s). Subprocesses read the variable.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_ignore_collect(collection_path, config):
    """tests/multidevice needs 4 devices, forced before JAX starts: it runs in a session
    of its own (tests/test_parallel.py starts it), never in a one-device session."""
    if collection_path.name == "multidevice" and jax.device_count() < 4:
        return True
    if collection_path.name == "raycluster" and not os.environ.get("JAXPRUNE_RAY_SESSION"):
        return True  # Ray must start before JAX in its session: tests/test_ray.py starts one
    return None


# The slow tier's longest tests (each 40 s to 2 min on a 2-core machine: sessions and studies of
# their own), collected first: pytest-xdist hands out tests in collection order, so these start
# at once on both workers, and the short ones fill in around them instead of one of these
# starting last and running alone.
LONG_FIRST = (
    "tests/test_ray.py::test_the_ray_session_passes",
    "tests/test_gpu_session.py::test_three_calls_back_to_back_bring_back_their_figures",
    "tests/test_parallel.py::test_the_forced_four_device_session_passes",
    "tests/test_study.py::test_smoke_study_end_to_end",
    "tests/test_hosts.py::test_two_processes_run_one_study_survive_a_lost_host_and_match_one_process",
    "tests/test_study_channels.py::test_a_vgg_channel_study_runs_reports_and_exports_a_twin_torch_loads_strictly",
)


def pytest_collection_modifyitems(config, items):
    rank = {nodeid: i for i, nodeid in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the rest keep their order


def run_session(folder: str, tmp_path, env: dict, passed: int, timeout: int) -> None:
    """Runs tests/<folder> as a pytest session of its own (a process whose environment a one-
    process session cannot have: forced devices, Ray started before JAX); asserts that all
    `passed` tests passed, and prints the session's tail."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"),
         str(Path(__file__).parent / folder)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )
    print(result.stdout[-5000:])
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert f"{passed} passed" in result.stdout


# A small finished study, trained once per session for the tests that only read it
# (or change a copy): a 1-epoch baseline and one-shot magnitude pruning to 50%.
SMALL_STUDY = ["study", "--preset", "tiny", "--data", "synthetic:256,64", "--methods", "magnitude",
               "--schedules", "oneshot", "--targets", "0.5", "--baseline-epochs", "1", "--no-progress", "--no-report"]


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """The SMALL_STUDY's directory. Read it, or `shutil.copytree` it to change it: other tests share it.
    Its baseline/ is a finished 1-epoch smoke run on the same data, fit to pass as --baseline."""
    from jaxprune import cli

    w = tmp_path_factory.mktemp("shared") / "study"
    assert cli.main([*SMALL_STUDY, "--workdir", str(w)]) == 0
    return w


@pytest.fixture(scope="session")
def resnet18_shapes():
    """Full-size ResNet18 variables as ShapeDtypeStructs (no compute)."""
    model = ResNet18()
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )


@pytest.fixture(scope="session")
def resnet18_gaussian_params(resnet18_shapes):
    """Full-size ResNet18 params filled with N(0, 1): distinct, trained-like magnitudes."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(np.float32)),
        resnet18_shapes["params"],
    )
