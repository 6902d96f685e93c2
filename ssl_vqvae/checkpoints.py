"""Orbax checkpointing of a whole training run (the only module that imports Orbax).

A checkpoint step holds four items, so that a consumer reads only what it needs:
- `model`: the module's variables (`params` plus collections such as `batch_stats`);
- `model_spec`: JSON describing how to rebuild the module (see `artifacts.ModelSpec`);
- `train`: what only training needs (step counter, optimizer state);
- `record`: JSON the loop needs to resume exactly (data-iterator position, loop-side state).

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
while saving leaves the previous checkpoints untouched; a step folder damaged afterwards
(truncated or missing files) is detected on restore, and a resuming run falls back to the
previous step.
"""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from ssl_vqvae.errors import MissingInputError, UserError

# At least two, so that a damaged newest checkpoint leaves an intact one to fall back to.
MIN_TO_KEEP = 2
# Longest explanation quoted from a failed read (Orbax / TensorStore messages run to pages).
REASON_CHARS = 200
# (pattern, replacement): what TensorStore adds to every read error before the cause.
TENSORSTORE_NOISE = (
    (r'Error opening "\w+" driver: ', ""),
    (r' in OCDBT database at local file "[^"]*"', ""),
    (r'local file "[^"]*/([^"/]+)"', r'file "\1"'),
)

ARRAY_ITEMS = ("model", "train")
JSON_ITEMS = ("model_spec", "record")

# What a damaged checkpoint raises: TensorStore errors and malformed JSON are ValueErrors,
# missing files OSErrors, missing tree entries KeyErrors.
READ_ERRORS = (ValueError, OSError, KeyError)


class Checkpointer:
    """Saves and restores checkpoint items (see module docstring) under `directory`.

    Args:
      directory: the checkpoint folder, one subfolder per step.
      max_to_keep: how many of the newest steps to keep (at least `MIN_TO_KEEP`).
      read_only: for consumers of a finished run: creates and cleans up nothing (and must not
        call `save` or `restore_newest_intact`).
    """

    def __init__(
        self, directory: str | pathlib.Path, max_to_keep: int = MIN_TO_KEEP, read_only: bool = False
    ):
        if max_to_keep < MIN_TO_KEEP:
            raise ValueError(
                f"max_to_keep={max_to_keep}; keep at least {MIN_TO_KEEP} checkpoints so that a "
                "damaged newest one can fall back to the previous"
            )
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            # Named handlers also let `read_stored` read a checkpoint's tree metadata.
            item_handlers={
                **{name: ocp.StandardCheckpointHandler() for name in ARRAY_ITEMS},
                **{name: ocp.JsonCheckpointHandler() for name in JSON_ITEMS},
            },
            # Not Orbax's read_only mode, which logs warnings on every use.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not read_only,
                # Temporary folders of saves cut short by a kill (a reader leaves them alone:
                # a trainer may be writing them).
                cleanup_tmp_directories=not read_only,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_path(self, step: int) -> pathlib.Path:
        """The folder of one step's checkpoint (Orbax's default step naming)."""
        return self.directory / str(step)

    def save(
        self, step: int, arrays: dict[str, Any], model_spec: dict[str, Any], record: dict[str, Any]
    ) -> None:
        """Writes a checkpoint for `step` (asynchronously; `close` waits for it).

        Args:
          arrays: `{"model": variables, "train": train-only state}` pytrees.
          model_spec: how to rebuild the module (JSON).
          record: what the loop needs to resume (JSON).
        """
        if set(arrays) != set(ARRAY_ITEMS):
            raise ValueError(f"arrays: expected items {ARRAY_ITEMS}, got {sorted(arrays)}")
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{name: ocp.args.StandardSave(tree) for name, tree in arrays.items()},
                model_spec=ocp.args.JsonSave(model_spec),
                record=ocp.args.JsonSave(record),
            ),
        )

    def restore(
        self, abstract: dict[str, Any], sharding: Sharding, step: int | None = None
    ) -> dict[str, Any]:
        """Restores the array items named in `abstract`, plus both JSON items.

        Args:
          abstract: `{item: pytree of arrays or jax.ShapeDtypeStruct}` for some of ARRAY_ITEMS;
            an item given as None is restored with the shapes it was stored with.
          sharding: where the restored arrays are placed.
          step: the step to restore; the latest when None.

        Returns:
          `{item: restored}` for the requested array items and every JSON item.

        Raises:
          MissingInputError: there is no checkpoint.
          UserError: the checkpoint cannot be read (one line: which step, why).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingInputError(f"no checkpoint in {self.directory}; train that stage first")
        try:
            return self._read(abstract, sharding, step)
        except READ_ERRORS as error:
            raise UserError(
                f"checkpoint {self.step_path(step)} is unreadable ({_reason(error)}); rerun "
                "that stage's training command to redo its last steps from an earlier checkpoint"
            ) from error

    def restore_newest_intact(
        self, abstract: dict[str, Any], sharding: Sharding, report: Callable[[str], None]
    ) -> tuple[int, dict[str, Any]] | None:
        """Restores the newest readable checkpoint, for resuming a run.

        Each unreadable newer checkpoint is reported in one line through `report` and deleted,
        so that the resumed run can save its step again.

        Returns:
          (step, `{item: restored}` as `restore`), or None when the folder holds no checkpoint.

        Raises:
          UserError: checkpoints exist but none can be read.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        for newer, step in enumerate(steps):
            try:
                items = self._read(abstract, sharding, step)
            except READ_ERRORS as error:
                fallback = (
                    f"using the previous one (step {steps[newer + 1]})"
                    if newer + 1 < len(steps)
                    else "no earlier checkpoint left"
                )
                report(
                    f"checkpoint {self.step_path(step)} is unreadable ({_reason(error)}); "
                    + fallback
                )
                continue
            for damaged in steps[:newer]:
                self._manager.delete(damaged)
            return step, items
        if steps:
            raise UserError(
                f"no readable checkpoint in {self.directory} (steps {sorted(steps)}); move that "
                "folder away to train from scratch"
            )
        return None

    def read_stored(self, step: int | None = None) -> dict[str, Any]:
        """Every item of a checkpoint as stored, with no abstract state needed (arrays as host
        numpy), e.g. to compare runs leaf by leaf. `step`: the latest when None."""
        step = self.latest_step() if step is None else step
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.device_get(self._read(dict.fromkeys(ARRAY_ITEMS), device, step))

    def _read(self, abstract: dict[str, Any], sharding: Sharding, step: int) -> dict[str, Any]:
        unknown = set(abstract) - set(ARRAY_ITEMS)
        if unknown:
            raise ValueError(f"abstract: unknown items {sorted(unknown)}; expected {ARRAY_ITEMS}")
        try:
            stored = self._manager.item_metadata(step)
            targets = {
                name: jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                    stored[name] if tree is None else tree,
                )
                for name, tree in abstract.items()
            }
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{name: ocp.args.StandardRestore(tree) for name, tree in targets.items()},
                    **{name: ocp.args.JsonRestore() for name in JSON_ITEMS},
                ),
            )
        except READ_ERRORS:
            _drop_stray_read_callbacks()
            raise
        return {name: restored[name] for name in (*targets, *JSON_ITEMS)}

    def close(self) -> None:
        """Waits until the pending save (if any) is complete on disk, then releases Orbax."""
        self._manager.wait_until_finished()
        self._manager.close()


def _drop_stray_read_callbacks() -> None:
    """Silences the TensorStore reads still in flight when Orbax gives up on a damaged checkpoint.

    Orbax closes its event loop on the first failed read; the other reads then complete into the
    closed loop and raise "Event loop is closed", which Python prints as tracebacks through
    `sys.unraisablehook`, long after our one-line report. This hook (installed once a read has
    failed) drops exactly those and hands every other unraisable exception to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_stray_read_callbacks", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_stray_read_callbacks = True
    sys.unraisablehook = hook


def _reason(error: BaseException) -> str:
    """`Type: first line of the message`, without TensorStore's specs, driver chain and paths."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec")[0] if lines else ""
    for pattern, replacement in TENSORSTORE_NOISE:
        text = re.sub(pattern, replacement, text)
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
