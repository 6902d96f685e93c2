"""The training input pipeline (grain): batches made in workers, put on the mesh ahead of time.

    MapDataset.range(next batch, inf).map(BatchRows)   this process's rows of each global batch
      .to_iter_dataset()                                in order, in this process
      .mp_prefetch(workers)                             or in `workers` grain processes
      .map(sharding.put_process_rows)                   global arrays on the mesh
      ThreadPrefetchIterDataset(prefetch)               a thread keeps `prefetch` batches ready

so while the step runs, the next batches are augmented and already on the devices. The stream
is `pipeline.BatchRows`'s, bit for bit what the synchronous iterator it replaces produced.

Checkpoints hold the position of the next batch, `{"epoch", "position"}`, as JSON in the
record: it names the same batch whatever the worker and process counts (grain's own iterator
state, and its Orbax handler's per-process files, depend on both), so a run resumes on another
device count, and older checkpoints, which hold the same two integers, still resume.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

import grain
import jax
from absl import flags
from grain.experimental import ThreadPrefetchIterDataset
from jax.sharding import Mesh

from ssl_vqvae import pipeline, sharding
from ssl_vqvae.data import Split

DEFAULT_PREFETCH = 2  # device batches kept ready: double buffering
# Batches are made from arrays in memory: no reader threads (they would only contend for the GIL).
_IN_ORDER = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class TrainBatches:
    """Endless stream of global training batches `{"x", "y"[, "x_aug"]}` placed on `mesh`.

    Args:
      split: the data to batch (every process holds all of it and makes only its rows).
      batch_size: global batch size (see `pipeline.global_batch_size`), a multiple of the
        mesh size.
      seed: seeds the per-epoch permutations and the augmentations.
      mesh: the ("data",) mesh the batches are split over.
      augmentations: names from `ssl_vqvae.augment`; batches then also hold `x_aug`.
      workers: grain worker processes making the batches; 0 makes them in this process (in
        the prefetch thread when `prefetch` > 0).
      prefetch: batches put on the mesh ahead of the step by a background thread; 0 makes
        each batch when it is asked for (no overlap with the step).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        seed: int,
        mesh: Mesh,
        augmentations: Sequence[str] = (),
        *,
        workers: int = 0,
        prefetch: int = DEFAULT_PREFETCH,
    ):
        if workers < 0 or prefetch < 0:
            raise ValueError(f"workers={workers}, prefetch={prefetch}: expected >= 0")
        if batch_size % mesh.size:
            raise ValueError(f"batch of {batch_size} does not split over {mesh.size} devices")
        self._rows = pipeline.BatchRows(
            split,
            batch_size,
            seed,
            tuple(augmentations),
            jax.process_index(),
            jax.process_count(),
        )
        self._mesh = mesh
        self._workers = workers
        self._prefetch = prefetch
        self._next = 0  # global index of the next batch returned
        self._iterator: grain.DatasetIterator | None = None

    @property
    def batch_size(self) -> int:
        return self._rows.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self._rows.split) / self.batch_size)

    def get_state(self) -> dict[str, int]:
        """The stream position of the next batch (JSON-ready)."""
        return pipeline.batch_position(self._next, self.batch_size, len(self._rows.split))

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues the stream at `state` (from `get_state`); batches made ahead are dropped."""
        index = pipeline.batch_index(state, self.batch_size, len(self._rows.split))
        self.close()
        self._next = index

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._iterator is None:
            self._iterator = iter(self._dataset())
        batch = next(self._iterator)
        self._next += 1
        return batch

    def close(self) -> None:
        """Stops the prefetch thread and the workers; the next `next` starts them again."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def _dataset(self) -> grain.IterDataset:
        dataset = grain.MapDataset.range(self._next, sys.maxsize).map(self._rows)
        dataset = dataset.to_iter_dataset(_IN_ORDER)
        if self._workers:
            _mark_flags_parsed()
            options = grain.MultiprocessingOptions(num_workers=self._workers)
            dataset = dataset.mp_prefetch(options)
        put = functools.partial(
            sharding.put_process_rows, mesh=self._mesh, global_size=self.batch_size
        )
        dataset = dataset.map(put)
        if self._prefetch:
            dataset = ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=self._prefetch)
        return dataset


def _mark_flags_parsed() -> None:
    """Lets grain 0.2.18's `mp_prefetch` read its absl flags outside an absl program.

    With a jaxlib that supports worker profiling it reads a flag's value without checking that
    flags were parsed, which raises (google/grain#1355, fixed after 0.2.18). Command-line
    programs parse their flags first; elsewhere every flag keeps its default.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
