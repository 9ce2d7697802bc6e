"""Several processes (hosts) in one JAX job: joining it, who writes, and agreeing.

Every process runs the same command and the same program; the mesh spans the
devices of all of them (`jaxprune.devices`). Files are written by process 0
alone (config, metrics, results, report, lock), except Orbax checkpoints,
which every process writes its part of. With one process every function here
is trivial, so single-host code paths are unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np


_joined = False  # set by `initialize`; asking JAX would start its backend (and claim a GPU)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Joins the job with `jax.distributed.initialize`.

    Arguments left empty come from the environment (JAX_COORDINATOR_ADDRESS,
    and ours: JAX_NUM_PROCESSES, JAX_PROCESS_ID, which JAX itself does not
    read) or from a cluster JAX recognises (SLURM, Open MPI, Kubernetes,
    Cloud TPU). Must run before anything uses a JAX device.
    """
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0))
    process_id = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
    kwargs: dict[str, Any] = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    global _joined
    _joined = jax.process_count() > 1


def count() -> int:
    return jax.process_count() if _joined else 1


def primary() -> bool:
    """Whether this process writes the job's files (process 0; always, with one process)."""
    return not _joined or jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the same point (no-op with one process)."""
    if _joined:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process (each passes its own; only process 0's counts)."""
    if not _joined:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def to_host(tree: Any) -> Any:
    """numpy values of a pytree of (possibly process-spanning) arrays, on every process."""
    if not _joined:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)
