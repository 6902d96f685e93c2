"""Orbax checkpointing of a whole training run (the only module that imports Orbax).

A checkpoint holds the train-state pytree and a small JSON record (data-iterator position and
anything else the trainer needs to resume exactly).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Sharding


class Checkpointer:
    """Saves and restores `(state, record)` pairs under `directory`, keeping the newest few."""

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Writes a checkpoint for `step` (asynchronously; `close` waits for it)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
        )

    def restore(
        self, abstract_state: Any, sharding: Sharding, step: int | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restores into the shapes of `abstract_state` (e.g. from `jax.eval_shape`).

        Args:
          abstract_state: pytree of arrays or `jax.ShapeDtypeStruct`s.
          sharding: where the restored arrays are placed.
          step: the step to restore; the latest when None.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["record"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
