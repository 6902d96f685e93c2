"""The trainer skeleton of both stages: checks, data stream, schedule, records, then `fit`.

A stage supplies its model, a `loss_fn` and an `Evaluator`; `prepare` does everything that can
refuse a run without writing anything, `StageRun.begin` writes the records, and `StageRun.fit`
compiles the generic step and runs the loop.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from ssl_vqvae import input_pipeline, layout, sharding, train_state, training
from ssl_vqvae.artifacts import ModelSpec
from ssl_vqvae.data import Split


class Schedule:
    """Step counts and learning rates derived from epochs for a dataset (SPEC §2.7)."""

    def __init__(self, train_settings: Any, steps_per_epoch: int, peak_learning_rate: float):
        self.steps_per_epoch = steps_per_epoch
        if train_settings.num_steps > 0:
            self.num_steps = int(train_settings.num_steps)
        else:
            self.num_steps = int(train_settings.num_epochs) * steps_per_epoch
        self.eval_every = max(1, int(train_settings.eval_every_epochs) * steps_per_epoch)
        self.learning_rate = train_state.reference_cosine_schedule(
            peak_learning_rate, self.num_steps, steps_per_epoch
        )

    def loop_config(self, train_settings: Any, description: str) -> training.LoopConfig:
        """How `training.fit` runs a stage under this schedule."""
        return training.LoopConfig(
            num_steps=self.num_steps,
            log_every=train_settings.log_every,
            eval_every=self.eval_every,
            checkpoint_every=train_settings.checkpoint_every,
            checkpoint_every_minutes=train_settings.checkpoint_every_minutes,
            description=description,
            learning_rate=self.learning_rate,
            profile_steps=train_settings.profile_steps,
        )


@dataclasses.dataclass(frozen=True)
class StageRun:
    """A checked stage run: its folder, devices, data stream, schedule and optimizer.

    Attributes:
      stage: "stage1" or "stage2".
      check: what `layout.check_run_dir` found.
      settings: the validated settings (see `validation.validate`).
      mesh: the device mesh.
      batches: the training batch stream (on `mesh`).
      eval_batch_size: global batch size of evaluation passes.
      schedule: step counts and the learning rate.
      optimizer: AdamW under that schedule.
      rng: the run's base key (`seed`).
    """

    stage: str
    check: layout.RunCheck
    settings: Any
    mesh: Mesh
    batches: input_pipeline.TrainBatches
    eval_batch_size: int
    schedule: Schedule
    optimizer: optax.GradientTransformation
    rng: jax.Array

    @property
    def run_dir(self) -> pathlib.Path:
        return self.check.run_dir

    def begin(self, config: ml_collections.ConfigDict, **resolved: Any) -> None:
        """Writes the records (after every check passed): the request and the resolved values."""
        run_id = layout.begin_run(self.check, self.stage)
        layout.write_config(config, self.run_dir)
        layout.write_resolved(self.run_dir, {"run_id": run_id, **resolved})

    def fit(
        self,
        *,
        spec: ModelSpec,
        init: Callable[..., train_state.TrainState],
        init_inputs: tuple[Any, ...] = (),
        loss_fn: train_state.LossFn,
        frozen: tuple[Any, ...] = (),
        evaluate: training.Evaluator | None = None,
        finalize: Callable | None = None,
    ) -> train_state.TrainState:
        """Compiles the generic step of `loss_fn` and trains (or resumes) to the budget."""
        step = train_state.compile_step(
            train_state.make_train_step(loss_fn, self.optimizer), self.mesh, *frozen
        )
        return training.fit(
            workdir=self.run_dir,
            factory=train_state.StateFactory(init, self.rng, init_inputs),
            spec=spec,
            train_step=step,
            batches=self.batches,
            mesh=self.mesh,
            rng=jax.random.fold_in(self.rng, 1),
            loop=self.schedule.loop_config(self.settings.train, self.stage),
            evaluate=evaluate,
            finalize=finalize,
        )


def prepare(
    stage: str,
    config: ml_collections.ConfigDict,
    settings: Any,
    workdir: str,
    overwrite: bool,
    train_split: Split,
    augmentations: tuple[str, ...] = (),
) -> StageRun:
    """Everything before the first write: refuses a bad folder, sizes batches and schedule."""
    check = layout.check_run_dir(workdir, stage, config, overwrite)
    mesh = sharding.make_mesh()
    batch_size, eval_batch_size = layout.batch_sizes(settings.data, len(train_split), mesh.size)
    batches = input_pipeline.TrainBatches(
        train_split, batch_size, settings.seed, mesh, augmentations
    )
    schedule = Schedule(settings.train, batches.steps_per_epoch, settings.optim.learning_rate)
    optimizer = train_state.make_optimizer(schedule.learning_rate, settings.optim.weight_decay)
    return StageRun(
        stage,
        check,
        settings,
        mesh,
        batches,
        eval_batch_size,
        schedule,
        optimizer,
        jax.random.key(settings.seed),
    )
