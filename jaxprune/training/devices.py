"""Where arrays live: a 2-D mesh (runs x data) over the devices that share the work.

Two kinds of parallelism, combined:

- **runs**: independent runs (a study's phases) vmapped over a leading run
  axis, that axis split over the mesh's ``runs`` dimension, so each device
  group trains its own runs and only the data set is shared;
- **data**: each run's batch split along the ``data`` dimension; XLA inserts
  the all-reduces (gradients, BatchNorm statistics over the global batch), so
  the program is the single-device one.

A single run's state and the data set are replicated. With several hosts,
``jax.distributed.initialize()`` (see `hosts.initialize`) makes every
device of every host part of the mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxprune.runtime.errors import UserError

RUNS = "runs"
DATA = "data"


class LayoutError(UserError):
    """Devices, run axis and batch size that do not fit together (a user's mistake)."""


def layout(n_devices: int = 0, run_axis: int = 1, batch_size: int = 0, available: int | None = None) -> tuple[int, int]:
    """(run_shards, data_shards): how `n_devices` devices share `run_axis` runs of `batch_size`.

    With R runs on N devices, one of the two must divide the other: N <= R
    devices each train R/N of the runs (N x 1); N > R devices form R groups
    of N/R, each splitting one run's batch (R x N/R). The data shards must
    divide the batch. n_devices 0 (auto) takes the most devices that fit
    these rules; an explicit count that does not fit raises LayoutError.
    """
    available = jax.device_count() if available is None else available
    run_axis = max(1, run_axis)

    def shape(n: int) -> tuple[int, int] | None:
        if n <= run_axis:
            r, d = (n, 1) if run_axis % n == 0 else (0, 0)
        else:
            r, d = (run_axis, n // run_axis) if n % run_axis == 0 else (0, 0)
        return (r, d) if r and (not batch_size or batch_size % d == 0) else None

    if n_devices:
        if n_devices > available:
            raise LayoutError(
                f"--devices {n_devices} but only {available} "
                f"{'device is' if available == 1 else 'devices are'} present"
            )
        if n_devices <= run_axis and run_axis % n_devices:
            raise LayoutError(
                f"--parallel-runs {run_axis} does not split over --devices {n_devices}: "
                f"use a device count that divides {run_axis}, or a multiple of it"
            )
        if n_devices > run_axis and n_devices % run_axis:
            raise LayoutError(
                f"--devices {n_devices} do not split into groups for --parallel-runs {run_axis}: "
                f"use a multiple of {run_axis} devices, or one that divides it"
            )
        found = shape(n_devices)
        if found is None:
            d = n_devices // run_axis
            raise LayoutError(
                f"--batch-size {batch_size} does not split evenly over {d} devices per run; "
                f"use a multiple of {d} or set --devices"
            )
        return found
    for n in range(available, 0, -1):
        found = shape(n)
        if found is not None:
            return found
    return (1, 1)


def mesh(n_devices: int = 0, run_shards: int = 1) -> Mesh:
    """A (runs, data) mesh over the first `n_devices` devices (0 = all, on every host):
    `run_shards` rows, each a group of devices that splits one run's batch."""
    devices = jax.devices()
    if n_devices:
        if n_devices > len(devices):
            raise LayoutError(f"--devices {n_devices} but only {len(devices)} are present")
        devices = devices[:n_devices]
    if len(devices) % run_shards:
        raise LayoutError(f"{len(devices)} devices do not split into {run_shards} groups")
    # Consecutive devices (one host's, first) form a row: a run's batch is split
    # within a host where it fits, and runs are spread across hosts.
    return Mesh(np.array(devices).reshape(run_shards, -1), (RUNS, DATA))


def mesh_for(n_devices: int, batch_size: int, run_axis: int = 1) -> Mesh:
    """The mesh `layout` chooses for a run axis (1 = a single run)."""
    r, d = layout(n_devices, run_axis, batch_size)
    return mesh(r * d, r)


def data_shards(m: Mesh) -> int:
    return m.shape[DATA]


def replicated(m: Mesh) -> NamedSharding:
    return NamedSharding(m, P())


def batch_split(m: Mesh, axis: int = 0) -> NamedSharding:
    """Splits dimension `axis` (the batch) across the mesh's data dimension."""
    return NamedSharding(m, P(*([None] * axis), DATA))


def run_split(m: Mesh) -> NamedSharding:
    """Splits the leading (run) axis of stacked runs across the mesh's runs dimension."""
    return NamedSharding(m, P(RUNS))


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

