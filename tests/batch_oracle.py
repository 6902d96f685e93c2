"""The synchronous batch iterator that `input_pipeline.TrainBatches` replaced: the test oracle.

Kept as it was, to prove that the grain pipeline makes the same stream bit for bit (batch order,
epoch boundaries, augmentations) and resumes at the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ssl_vqvae import augment
from ssl_vqvae.data import Split


class BatchIterator:
    """Endless stream of shuffled fixed-size batches `{"x", "y"[, "x_aug"]}` from one split.

    Args:
      split: the data to batch.
      batch_size: global batch size (see `global_batch_size`).
      seed: seeds the per-epoch permutations and the augmentations.
      augmentations: names from `ssl_vqvae.augment`; when given, every batch also holds
        `x_aug`, one augmented view of each series (SPEC §3.1).
    """

    def __init__(self, split: Split, batch_size: int, seed: int, augmentations: Sequence[str] = ()):
        if batch_size > len(split):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(split)} series of the split"
            )
        self._split = split
        self._batch_size = batch_size
        self._seed = seed
        self._augmentations = tuple(augmentations)
        self.epoch = 0
        self.position = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self._split) / self._batch_size)

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(self._split))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        aug_rng = np.random.default_rng([self._seed, self.epoch, self.position, 1])
        indices = []
        needed = self._batch_size
        while needed:
            order = self._permutation(self.epoch)[self.position : self.position + needed]
            indices.append(order)
            needed -= len(order)
            self.position += len(order)
            if self.position == len(self._split):
                self.epoch, self.position = self.epoch + 1, 0
        index = np.concatenate(indices)
        batch = {"x": self._split.x[index], "y": self._split.y[index]}
        if self._augmentations:
            batch["x_aug"] = augment.augmented_view(batch["x"], self._augmentations, aug_rng)
        return batch
