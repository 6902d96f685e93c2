"""Batched, sharded inference over a whole array of series (no training, no datasets).

Every evaluator and the public API run a jitted `fn(variables, x)` over N series: in
fixed-size batches (the last one padded, so one program serves every batch), split over the
mesh's devices, results gathered on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_vqvae import processes, sharding


def padded_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Walks equally long arrays in order with fixed-size batches, padding the last one.

    Yields:
      (batch, num_valid): the last batch repeats its final row to keep the shape static; only
      its first `num_valid` rows are real.
    """
    length = len(next(iter(arrays.values())))
    for start in range(0, length, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), length - 1)
        num_valid = int(min(batch_size, length - start))
        yield {key: value[index] for key, value in arrays.items()}, num_valid


def apply_in_batches(
    fn: Callable[[Any, jax.Array], jax.Array],
    variables: Any,
    x: np.ndarray,
    batch_size: int,
    mesh: Mesh,
) -> np.ndarray:
    """Runs a jitted `fn(variables, x_batch)` over all rows of `x`, sharded over `mesh`.

    Args:
      fn: a jitted function of (variables, [batch_size, ...]) -> [batch_size, ...].
      x: host array [N, ...].
      batch_size: rows per call, a multiple of the mesh size.

    Returns:
      the outputs of the N rows, concatenated on the host (in every process).
    """
    outputs = []
    for batch, num_valid in padded_batches({"x": x}, batch_size):
        sharded = sharding.shard_batch(batch, mesh)["x"]
        outputs.append(processes.to_host(fn(variables, sharded))[:num_valid])
    return np.concatenate(outputs)
