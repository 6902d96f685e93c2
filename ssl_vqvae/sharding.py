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


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a global host batch on the mesh, split along its leading axis.

    Every process builds the same global batch (the pipeline is deterministic) and contributes
    its own contiguous slice, so the same code serves one host and many.
    """
    sharding = batch_sharded(mesh)
    num_processes, index = jax.process_count(), jax.process_index()

    def put(array: np.ndarray) -> jax.Array:
        if array.shape[0] % mesh.size:
            raise ValueError(f"batch of {array.shape[0]} does not split over {mesh.size} devices")
        local = np.array_split(array, num_processes)[index]
        return jax.make_array_from_process_local_data(sharding, local, array.shape)

    return {key: put(value) for key, value in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
