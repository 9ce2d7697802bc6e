"""--executor ray: the Ray tests run in a session of their own (tests/raycluster), where Ray
starts before JAX; here, that session, and what happens without Ray."""

import builtins
import importlib.util

import pytest

from jaxprune import cli
from tests.conftest import run_session


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
def test_the_ray_session_passes(tmp_path):
    """tests/raycluster: results equal to the local run, an executor switched mid-study, a worker
    killed mid-phase, divergence, and an interrupted driver."""
    # RAY_ENABLE_UV_RUN_RUNTIME_ENV=0: under `uv run` (scripts/test) Ray would start its workers with
    # `uv run` in a copy of the working directory, where they never registered (CI hung).
    run_session("raycluster", tmp_path, {"JAXPRUNE_RAY_SESSION": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
                passed=6, timeout=900)


def test_without_ray_the_executor_is_one_line(tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    args = ["study", "--preset", "tiny", "--executor", "ray", "--workdir", str(tmp_path / "w")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxprune study: error: --executor ray needs Ray, an optional extra: pip install 'jaxprune[ray]'"]
    assert not (tmp_path / "w").exists()


class _FakeRay:
    """Just what check_shared calls: two live nodes, and a 'remote' task that runs here, writing
    its probe into `lands_in` (a node whose file system is not the driver's writes elsewhere)."""

    def __init__(self, lands_in):
        self.lands_in = lands_in

    def nodes(self):
        return [{"NodeManagerHostname": "here", "Alive": True}, {"NodeManagerHostname": "other", "Alive": True}]

    def remote(self, fn):
        lands_in = self.lands_in

        class Task:
            def options(self, **kw):
                return self

            def remote(self, workdir, token):
                return fn(str(lands_in or workdir), token)

        return Task()

    def get(self, value):
        return value


def test_a_study_directory_a_node_does_not_share_is_one_line(tmp_path):
    from jaxprune.study import ray_executor

    shared = tmp_path / "study"
    shared.mkdir()
    ray_executor.check_shared(_FakeRay(None), shared, {})  # the probe lands where the driver reads it
    assert list(shared.iterdir()) == []  # and is removed
    elsewhere = tmp_path / "node-local"
    elsewhere.mkdir()
    with pytest.raises(ray_executor.RayError, match=r"does not see it; give a --workdir on a file system every node"):
        ray_executor.check_shared(_FakeRay(elsewhere), shared, {})
