"""``--executor ray``: a study's unfinished phases as Ray tasks, each after its parent's.

The plan is a graph (a seed's baseline before its one-shot phases, each iterative round after
the one before); every phase resumes from its own checkpoints. So each pending phase becomes a
task that takes its parent's task's result as an argument (Ray runs it once that is ready), and:

- a task whose worker or node dies is retried (``max_retries``) and resumes from the phase's
  last saved epoch, as a local rerun would;
- a phase that fails for a reason of its own is not retried (``retry_exceptions=False``); one
  that diverges returns so, and its dependents return "skipped" without training;
- tasks return names and metrics, never weights: a task reads its parent's final weights from
  the study directory, which every node must see (checked at the start with a probe file);
- SIGINT or SIGTERM to the driver cancels the tasks (each phase keeps its saved epochs).

The driver holds the study's lock as a local run does; each phase's directory has its own.
The executor is not part of a study's identity: a study begun locally can be finished on Ray,
and the other way round. Ray is an optional extra (``pip install 'jaxprune[ray]'``).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from jaxprune.runtime import interrupt
from jaxprune.runtime.errors import UserError

EXTRA = "pip install 'jaxprune[ray]'"


class RayError(UserError):
    """Ray is missing, unreachable, or the study directory is not shared."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayError(f"--executor ray needs Ray, an optional extra: {EXTRA}") from None
    return ray


def init(address: str = "", num_cpus: int | None = None) -> None:
    """Starts or joins Ray before JAX starts in this process (its workers start their own JAX)."""
    # Under `uv run`, Ray would start its workers with `uv run` in a copy of the working directory,
    # where they failed to register (CI hung in the first task); they run this interpreter instead.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray = import_ray()
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _env(cfg, workdir: Path) -> dict[str, str]:
    """What each task's process gets: the study's compilation cache, and a memory share of the GPU
    when several phases share one (--gpus-per-phase below 1)."""
    env = {"JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(workdir / ".xla-cache")}
    for k in ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAXPRUNE_FAULT", "JAXPRUNE_FAULT_PATH", "JAX_PLATFORMS"):
        if k in os.environ:
            env[k] = os.environ[k]
    if 0 < cfg.gpus_per_phase < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * cfg.gpus_per_phase:.3f}"
    return env


def _train_group(cfg_dict: dict, workdir: str, phase_dicts: list[dict], parent_dicts: list[dict],
                 *parent_results: list[dict]) -> list[dict]:
    """One group of phases (a single phase unless --parallel-runs N > 1), in a Ray worker: their
    parents' final weights from disk, then `loop.train_runs` as the local driver calls it, with
    the same run axis. `parent_results`: what the tasks of the parents' groups returned (Ray
    passes them once those tasks are done). Returns one result per phase, in order."""
    from jaxprune.data import sources as data
    from jaxprune.study import config as config_lib, phases as phase_lib, planning
    from jaxprune.training import loop

    cfg = config_lib.from_dict(config_lib.StudyConfig, cfg_dict)
    root = Path(workdir)
    phases = [planning.Phase(**d) for d in phase_dicts]
    parents = {p.name: p for p in (planning.Phase(**d) for d in parent_dicts)}
    before = {r["name"]: r for rs in parent_results for r in rs}
    out: dict[str, dict] = {}
    for p in phases:  # a parent that diverged, or was skipped, trains none of its children
        r = before.get(p.parent)
        if r is not None and r["status"] != "trained":
            out[p.name] = {"name": p.name, "status": "skipped", "because": r.get("because") or r["name"]}
    group = [p for p in phases if p.name not in out]
    if group:
        finals = {name: phase_lib.load_final(root / name, planning.phase_config(cfg, parent))
                  for name, parent in parents.items() if any(p.parent == name for p in group)}
        dataset = data.load(cfg.train.data).prepared(cfg.train)
        specs = [phase_lib.phase_spec(cfg, root, p, finals.get(p.parent)) for p in group]
        results = loop.train_runs(specs, dataset=dataset, run_axis=cfg.parallel_runs)
        for p, spec, result in zip(group, specs, results):
            diverged = loop.stopped_by_divergence(spec.cfg, result.history)
            out[p.name] = {"name": p.name, "status": "diverged" if diverged else "trained",
                           "epoch": result.history[-1]["epoch"] if result.history else 0,
                           "best_test_acc": result.best_test_acc, "sparsity": p.sparsity}
    return [out[p.name] for p in phases]


def _probe(workdir: str, token: str) -> str:
    path = Path(workdir) / f".ray-probe-{token}"
    path.write_text(token)
    return os.uname().nodename


def check_shared(ray, workdir: Path, env: dict[str, str]) -> None:
    """Every node sees the study directory: a task writes a probe file there, the driver reads it.
    A cluster of this machine alone shares it by construction, and is not probed."""
    here = os.uname().nodename
    if all(n.get("NodeManagerHostname") == here for n in ray.nodes() if n.get("Alive")):
        return
    token = uuid.uuid4().hex
    # The tasks' own runtime env, so the probe runs in a worker like theirs.
    node = ray.get(ray.remote(_probe).options(num_cpus=0, runtime_env={"env_vars": env}).remote(str(workdir), token))
    path = workdir / f".ray-probe-{token}"
    try:
        if not path.exists() or path.read_text() != token:
            raise RayError(f"a Ray task on {node} wrote into {workdir} but this driver does not see it; give a "
                           "--workdir on a file system every node shares")
    finally:
        path.unlink(missing_ok=True)


def run_phases(cfg, workdir: Path, phases: list, done: set[str], failed: dict[str, str],
               log: Callable[[str], None]) -> None:
    """Trains the `phases` not in `done` as Ray tasks (see the module docstring), a task per group
    the local driver would vmap together (`phases.groups`: one phase each at --parallel-runs 1);
    logs a line per phase. `failed`: phases that diverged before (each mapped to itself): their
    descendants are not trained."""
    from jaxprune.study import phases as phase_lib

    ray = import_ray()
    env = _env(cfg, workdir)
    check_shared(ray, workdir, env)
    task = ray.remote(_train_group).options(
        num_cpus=cfg.cpus_per_phase, num_gpus=cfg.gpus_per_phase, max_retries=3, retry_exceptions=False,
        runtime_env={"env_vars": env})
    by_name = {p.name: p for p in phases}
    cfg_dict = dataclasses.asdict(cfg)
    failed = dict(failed)
    pending = []
    for p in phases:  # plan order: parents come first
        if p.name in done:
            continue
        if p.parent in failed:
            failed[p.name] = failed[p.parent]
            log(f"[not trained] {p.name}: it descends from {failed[p.name]}, which diverged")
            continue
        pending.append(p)
    task_of: dict[str, Any] = {}  # a phase's name -> its group's task
    members: dict[Any, list[str]] = {}  # a task -> its phases' names
    for group in phase_lib.groups(cfg, pending, done):
        parents = sorted({p.parent for p in group if p.parent is not None})
        after = list(dict.fromkeys(task_of[name] for name in parents if name in task_of))  # each parent group once
        ref = task.remote(cfg_dict, str(workdir), [dataclasses.asdict(p) for p in group],
                          [dataclasses.asdict(by_name[name]) for name in parents if name in by_name], *after)
        task_of.update({p.name: ref for p in group})
        members[ref] = [p.name for p in group]
    pending_refs, finished = list(members), len(done)
    # SIGINT/SIGTERM only request a stop (raised inside Ray's own code, it would come out wrapped):
    # the wait below looks every half second, then cancels the tasks and leaves as a local run does.
    with interrupt.stop_at_safe_points():
        try:
            while pending_refs:
                interrupt.check()
                ready, pending_refs = ray.wait(pending_refs, num_returns=1, timeout=0.5)
                for ref in ready:
                    for r in _results(ray, ref, members[ref]):
                        if r["status"] != "skipped":
                            finished += 1
                        _log_result(r, f"[{finished}/{len(phases)}]", log)
        except BaseException:
            for ref in pending_refs:
                ray.cancel(ref)
            raise


def _results(ray, ref, group_of: list[str]) -> list[dict]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise RayError(f"{', '.join(group_of)}: {str(e.cause if e.cause else e).splitlines()[-1]}") from None


def _log_result(r: dict, counter: str, log: Callable[[str], None]) -> None:
    if r["status"] == "skipped":
        log(f"[not trained] {r['name']}: it descends from {r['because']}, which diverged")
    elif r["status"] == "diverged":
        log(f"{counter} {r['name']}: diverged at epoch {r['epoch']}")
    else:
        log(f"{counter} {r['name']}: sparsity {100 * r['sparsity']:.2f}%, best test accuracy "
            f"{100 * r['best_test_acc']:.2f}%")
