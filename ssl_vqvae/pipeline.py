"""The training stream's batches, made on the host (numpy): sizes, positions and rows.

Batches have a FIXED size so the jitted step compiles once: the stream concatenates one
shuffled permutation per epoch, `default_rng([seed, epoch]).permutation(N)` (every series is
seen once per epoch, a batch may straddle two epochs), instead of emitting a smaller last batch.
Global batch b covers stream positions [b B, (b + 1) B), so it is a pure function of b: grain
workers make batches in any process and a resumed run starts at any batch. The stream position
of a batch is two integers (`epoch`, `position`), saved in checkpoints.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ssl_vqvae import augment, sharding
from ssl_vqvae.data import Split
from ssl_vqvae.errors import UserError


def round_to_devices(size: int, num_devices: int) -> int:
    """`size` rounded down to a multiple of the device count (at least one per device)."""
    return max(num_devices, size - size % num_devices)


def global_batch_size(requested: int, num_examples: int, num_devices: int) -> int:
    """The largest multiple of `num_devices` that is <= min(requested, num_examples)."""
    if requested < 1:
        raise UserError(f"data.batch_size={requested}; expected a positive integer")
    if num_examples < num_devices:
        raise UserError(
            f"dataset has {num_examples} series, fewer than the {num_devices} devices of the mesh"
        )
    return round_to_devices(min(requested, num_examples), num_devices)


def batch_position(index: int, batch_size: int, num_examples: int) -> dict[str, int]:
    """`{"epoch", "position"}` in the stream at the start of global batch `index`."""
    epoch, position = divmod(index * batch_size, num_examples)
    return {"epoch": epoch, "position": position}


def batch_index(state: dict[str, int], batch_size: int, num_examples: int) -> int:
    """The global batch that starts at stream position `state` (inverse of `batch_position`)."""
    epoch, position = int(state["epoch"]), int(state["position"])
    start = epoch * num_examples + position
    if not 0 <= position < num_examples or epoch < 0 or start % batch_size:
        raise ValueError(
            f"stream position {state} is not the start of a batch of {batch_size} "
            f"over {num_examples} series"
        )
    return start // batch_size


@dataclasses.dataclass(frozen=True, eq=False)
class BatchRows:
    """One process's rows `{"x", "y"[, "x_aug"]}` of global batch `index`: `rows(index)`.

    The input pipeline's map step (picklable, so grain worker processes run it).

    Attributes:
      split: the data to batch.
      batch_size: global batch size (see `global_batch_size`); at most `len(split)`.
      seed: seeds the per-epoch permutations and the augmentations.
      augmentations: names from `ssl_vqvae.augment`; when given, the rows also hold `x_aug`,
        one augmented view of each series (SPEC §3.1). The views of a whole batch are drawn
        together from `default_rng([seed, epoch, position, 1])` at the batch's start (the
        augmentations draw per-batch vectors), so with several processes each augments the
        whole batch and keeps its rows: the stream does not depend on the process count.
      process_index, process_count: which `sharding.process_rows` of every batch to make.
    """

    split: Split
    batch_size: int
    seed: int
    augmentations: tuple[str, ...] = ()
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if not 1 <= self.batch_size <= len(self.split):
            raise ValueError(
                f"batch_size {self.batch_size} is not in [1, {len(self.split)}], "
                "the series of the split"
            )

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def _series(self, index: int, rows: slice) -> np.ndarray:
        """Indices into the split of `rows` of global batch `index`, in stream order."""
        stream = index * self.batch_size + np.arange(rows.start, rows.stop)
        epochs, positions = np.divmod(stream, len(self.split))
        return np.concatenate(
            [
                self._permutation(int(epoch))[positions[epochs == epoch]]
                for epoch in np.unique(epochs)
            ]
        )

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        rows = sharding.process_rows(self.batch_size, self.process_index, self.process_count)
        if not self.augmentations:
            series = self._series(index, rows)
            return {"x": self.split.x[series], "y": self.split.y[series]}
        series = self._series(index, slice(0, self.batch_size))
        start = batch_position(index, self.batch_size, len(self.split))
        rng = np.random.default_rng([self.seed, start["epoch"], start["position"], 1])
        x = self.split.x[series]
        views = augment.augmented_view(x, self.augmentations, rng)
        return {"x": x[rows], "y": self.split.y[series[rows]], "x_aug": views[rows]}
