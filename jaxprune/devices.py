"""Where arrays live: a 1-D mesh over the devices that share the work.

Data parallelism is expressed with ``jax.sharding``: the train state and the
data set are replicated, each batch is split along the ``data`` axis, and
XLA inserts the all-reduces (gradients, BatchNorm statistics over the global
batch), so the program is the single-device one. With several hosts,
``jax.distributed.initialize()`` (see `initialize_distributed`) makes every
device of every host part of the mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def mesh(n_devices: int = 0) -> Mesh:
    """A mesh over the first `n_devices` devices (0 = all devices, on every host)."""
    devices = jax.devices()
    if n_devices:
        if n_devices > len(devices):
            raise ValueError(f"--devices {n_devices} but only {len(devices)} are present")
        devices = devices[:n_devices]
    return Mesh(np.array(devices), (DATA,))


def replicated(m: Mesh) -> NamedSharding:
    return NamedSharding(m, P())


def batch_split(m: Mesh, axis: int = 0) -> NamedSharding:
    """Splits dimension `axis` (the batch) across the mesh."""
    return NamedSharding(m, P(*([None] * axis), DATA))


def put_replicated(tree: Any, m: Mesh) -> Any:
    """A full copy of every leaf on every device of the mesh (works across hosts)."""
    sharding = replicated(m)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if isinstance(x, jax.Array) and jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def abstract_replicated(abstract: Any, m: Mesh) -> Any:
    """ShapeDtypeStructs with the replicated sharding: restore targets for Orbax."""
    sharding = replicated(m)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)


def initialize_distributed() -> bool:
    """Joins a multi-host job when JAX's coordinator settings are in the environment.

    Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run
    under a cluster JAX detects: SLURM, Open MPI, Cloud TPU). Returns whether
    it initialised. Not exercised by the test suite, which has one host.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JAXPRUNE_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
