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
DEFAULT_TIMEOUT_S = 1800


def timeout_s() -> int:
    """How long a process waits for the others at a meeting point (a collective, a
    barrier, a stop agreement) before the job fails: JAXPRUNE_HOST_TIMEOUT_S (or
    --host-timeout), default 30 minutes. A slow or busy host is only slow; a dead one
    is noticed by JAX's heartbeat (100 s) much sooner."""
    return int(os.environ.get("JAXPRUNE_HOST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


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
    wait = timeout_s()
    # The backend's start exchanges device topologies across processes (global > local).
    jax.config.update("jax_cpu_get_local_topology_timeout_minutes", max(2, wait // 120))
    jax.config.update("jax_cpu_get_global_topology_timeout_minutes", max(5, wait // 60))
    # A slow host is only slow: it may join, and leave, up to `wait` seconds after
    # the others. A dead one is still noticed by the heartbeat (100 s).
    jax.distributed.initialize(**kwargs, initialization_timeout=wait, shutdown_timeout_seconds=wait)
    global _joined
    _joined = jax.process_count() > 1
    if _joined:
        # Meet on the coordination service (host to host, `wait` long) before the
        # first collective: gloo sets up its connections within a fixed 30 s, so a
        # process that reaches it late (a busy host) failed the job. Seen on a
        # loaded 2-core machine; reproduced with a peer 50 s late.
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier("jaxprune-joined", wait * 1000)
        sync("jaxprune-joined")


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


_stop_checks = 0  # calls of agreed_signal so far; the same count on every process


def agreed_signal(local: int | None) -> int | None:
    """The stop request every process acts on: the largest signal number any process
    has received, or None.

    In a multi-process job each call exchanges one small value per process
    through JAX's coordination service (host to host: it does not queue behind
    the epoch running on the device), so all processes stop after the same
    epoch even when the signal reaches them one epoch apart. Every process
    must call it the same number of times (the training loop does).
    """
    global _stop_checks
    if not _joined:
        return local
    _stop_checks += 1
    from jax._src import distributed  # the client Orbax's own barriers use

    client = distributed.global_state.client
    key = f"jaxprune/stop/{_stop_checks}"
    client.key_value_set(f"{key}/{jax.process_index()}", str(local or 0))
    values = [int(client.blocking_key_value_get(f"{key}/{i}", timeout_s() * 1000)) for i in range(jax.process_count())]
    return max(values) or None


# XLA:CPU's collective timeouts, as jaxlib 0.10 names them (an unknown flag aborts
# the process, so they are added only for the versions known to have them):
# gloo's per-operation wait, and the wait between the devices of one process,
# which aborted after 20 + 40 s when one device's thread fell behind on a busy CPU.
_CPU_COLLECTIVE_FLAGS = (
    "--xla_cpu_collective_timeout_seconds={t}",
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
    "--xla_cpu_collective_call_terminate_timeout_seconds={t}",
)


def request_collective_timeouts() -> None:
    """Adds XLA:CPU's collective timeouts (`timeout_s`) to XLA_FLAGS, before JAX starts
    its backend, unless the user set them; a no-op on jaxlib versions not known to have them."""
    try:
        from importlib.metadata import version

        known = version("jaxlib").startswith("0.10.")
    except Exception:
        known = False
    if not known:
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    extra = [f.format(t=timeout_s()) for f in _CPU_COLLECTIVE_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join([*flags, *extra])
