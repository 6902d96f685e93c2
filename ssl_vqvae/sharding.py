"""Data parallelism over a one-axis `("data",)` device mesh.

The step functions are written as single-device math; `jax.jit` with these shardings lets XLA
split the batch over every device (one CPU, 8 GPUs or a TPU pod with `jax.distributed`) and
insert the cross-device reductions (e.g. for BatchNorm statistics and losses) itself.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with the single axis "data"."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def process_rows(size: int, process_index: int, process_count: int) -> slice:
    """The contiguous rows of a global batch of `size` rows that process `process_index` holds.

    np.array_split's rule (the first `size % process_count` processes hold one row more); the
    mesh orders devices by process, so these are the rows of the process's own devices.
    """
    base, extra = divmod(size, process_count)
    start = process_index * base + min(process_index, extra)
    return slice(start, start + base + (process_index < extra))


def put_process_rows(
    rows: dict[str, np.ndarray], mesh: Mesh, global_size: int
) -> dict[str, jax.Array]:
    """Global arrays of `global_size` rows split over the mesh, from this process's rows.

    Each process passes only its `process_rows` of the global batch.
    """
    if global_size % mesh.size:
        raise ValueError(f"batch of {global_size} does not split over {mesh.size} devices")
    sharding = batch_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(
            sharding, local, (global_size, *local.shape[1:])
        )
        for key, local in rows.items()
    }


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a global host batch on the mesh, split along its leading axis.

    Every process builds the same global batch and contributes its own rows, so the same code
    serves one host and many.
    """
    size = len(next(iter(batch.values())))
    rows = process_rows(size, jax.process_index(), jax.process_count())
    return put_process_rows({key: value[rows] for key, value in batch.items()}, mesh, size)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
