"""Training machinery shared by stage 1, stage 2 and the evaluation classifier.

One pytree (`TrainState`) holds everything that changes during training; a stage supplies a
pure `train_step(state, batch, rng) -> (state, metrics)` and this module jit-compiles it over
the mesh (state replicated, batch split along "data", state buffers donated), runs the loop,
logs, evaluates, checkpoints and resumes.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from ssl_vqvae import sharding
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.metrics import MetricWriter, check_finite
from ssl_vqvae.pipeline import BatchIterator

Metrics = dict[str, jax.Array]
StepFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[Any, Metrics]]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes.

    Attributes:
      step: int32 [] number of optimizer steps taken.
      params: trainable parameters.
      opt_state: optimizer state.
      variables: the model's mutable, non-trainable collections (e.g. `batch_stats`, `vq`).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    variables: dict[str, Any]


def create_train_state(
    params: Any, variables: Mapping[str, Any], optimizer: optax.GradientTransformation
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        variables=dict(variables),
    )


def make_optimizer(
    learning_rate: optax.Schedule, weight_decay: float
) -> optax.GradientTransformation:
    """AdamW (default betas and eps, decoupled weight decay) as in every reference trainer.

    Always driven by a schedule (use `optax.constant_schedule` for a fixed rate), so the
    optimizer state has one structure whatever the rate: checkpoints restore into it.
    """
    if not callable(learning_rate):
        raise TypeError(f"learning_rate must be a schedule, got {learning_rate!r}")
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def reference_cosine_schedule(
    peak: float, num_updates: int, steps_per_epoch: int
) -> Callable[[jax.Array | int], jax.Array]:
    """The reference's cosine-annealed learning rate of each optimiser update (SPEC §2.7).

    The reference steps `CosineAnnealingLR(T_max = epochs * (S + 1), eta_min = 0)` once per batch
    inside `training_step` (before that batch's optimiser step) and once more at every epoch end,
    S batches per epoch. Update g (0-based) therefore runs at scheduler step
    `t = g + 1 + floor(g / S)`, and the last update of the run sits one step before `T_max`, at
    a rate of ~0. A step budget that is not a whole number of epochs ends with a partial epoch;
    `T_max = n + ceil(n / S)` keeps the same rule for it.

    Args:
      peak: the initial learning rate.
      num_updates: optimiser updates in the whole run (n).
      steps_per_epoch: S, batches per epoch.

    Returns:
      `schedule(g) -> lr`, usable by optax (g is the update count) and on the host.
    """
    if num_updates < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"num_updates={num_updates} and steps_per_epoch={steps_per_epoch} must be >= 1"
        )
    t_max = num_updates + -(-num_updates // steps_per_epoch)

    def schedule(update: jax.Array | int) -> jax.Array:
        update = jnp.asarray(update)
        t = update + 1 + update // steps_per_epoch
        return peak * 0.5 * (1.0 + jnp.cos(jnp.pi * t / t_max))

    return schedule


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def compile_step(step_fn: Callable, mesh: Mesh, *frozen: Any) -> Callable:
    """Jits a train step data-parallel over `mesh`, donating the incoming state.

    Args:
      step_fn: `(state, batch, rng, *frozen) -> (state, metrics)`.
      frozen: replicated pytrees passed as trailing arguments on every call (e.g. the frozen
        stage-1 tokenizer in stage 2); passing them as arguments, not closing over them, keeps
        them out of the compiled program as constants.

    Returns:
      `(state, batch, rng) -> (state, metrics)`.
    """
    replicated = sharding.replicated(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(replicated, sharding.batch_sharded(mesh), replicated)
        + (replicated,) * len(frozen),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    frozen = sharding.replicate(frozen, mesh)
    return lambda state, batch, rng: jitted(state, batch, rng, *frozen)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, evaluate and checkpoint (in steps)."""

    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    description: str = "train"
    learning_rate: Callable[[int], Any] | None = None  # logged as train/learning_rate


def fit(
    *,
    workdir: pathlib.Path,
    state: TrainState,
    train_step: Callable,
    batches: BatchIterator,
    mesh: Mesh,
    rng: jax.Array,
    loop: LoopConfig,
    evaluate: Callable[[TrainState, int], Mapping[str, float]] | None = None,
    finalize: Callable[[TrainState], tuple[TrainState, Mapping[str, float]]] | None = None,
) -> TrainState:
    """Runs (or resumes) training to `loop.num_steps`.

    Args:
      workdir: this stage's folder; checkpoints go to `workdir/checkpoints`, metrics to
        `workdir/metrics.jsonl` and `workdir/tensorboard`.
      state: a freshly initialised state; replaced by the latest checkpoint when one exists.
      train_step: a step compiled by `compile_step`.
      batches: the host-side stream; its position is checkpointed with the state.
      rng: base key; the step folds in the step number itself.
      evaluate: called every `loop.eval_every` steps and at the end with (state, step); returns
        scalars that are logged (and may write plots).
      finalize: called once after the last step's evaluation, before its checkpoint, with the
        state; returns the state to save and return (e.g. with mutated statistics) and scalars
        logged like the evaluation's. Not called when a resumed run has nothing left to do.
    """
    checkpointer = Checkpointer(workdir / "checkpoints")
    writer = MetricWriter(workdir)
    state = sharding.replicate(state, mesh)
    start = 0
    if checkpointer.latest_step() is not None:
        state, record = checkpointer.restore(state, sharding.replicated(mesh))
        batches.set_state(record["batches"])
        start = int(state.step)
        print(f"[{loop.description}] resumed from step {start} ({checkpointer.directory})")
    if start >= loop.num_steps:
        print(f"[{loop.description}] already trained to step {start}; nothing to do")
    window: list[Metrics] = []
    window_start, window_time = start, time.perf_counter()
    progress = tqdm(
        range(start, loop.num_steps),
        initial=start,
        total=loop.num_steps,
        desc=loop.description,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        for step in progress:
            batch = sharding.shard_batch(next(batches), mesh)
            state, metrics = train_step(state, batch, rng)
            window.append(metrics)
            done = step + 1
            if done % loop.log_every == 0 or done == loop.num_steps:
                averaged = {k: float(v) for k, v in _mean_metrics(window).items()}
                check_finite(averaged, window_start + 1, done)
                elapsed = time.perf_counter() - window_time
                averaged["steps_per_second"] = len(window) / max(elapsed, 1e-9)
                if loop.learning_rate is not None:
                    averaged["learning_rate"] = float(loop.learning_rate(step))
                writer.write(done, {f"train/{k}": v for k, v in averaged.items()})
                progress.set_postfix(
                    loss=f"{averaged['loss']:.4f}", steps_s=f"{averaged['steps_per_second']:.2f}"
                )
                window, window_start, window_time = [], done, time.perf_counter()
            if evaluate is not None and (done % loop.eval_every == 0 or done == loop.num_steps):
                results = evaluate(state, done)
                check_finite(results, done, done)
                writer.write(done, {f"eval/{k}": v for k, v in results.items()})
                progress.write(
                    f"[{loop.description}] step {done}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
                )
            if finalize is not None and done == loop.num_steps:
                state, results = finalize(state)
                check_finite(results, done, done)
                writer.write(done, {f"eval/{k}": v for k, v in results.items()})
            if done % loop.checkpoint_every == 0 or done == loop.num_steps:
                checkpointer.save(done, state, {"batches": batches.get_state()})
    finally:
        progress.close()
        checkpointer.close()
        writer.close()
    return state


def _mean_metrics(window: list[Metrics]) -> dict[str, jax.Array]:
    stacked = jax.device_get(window)
    return {key: np.mean([m[key] for m in stacked]) for key in stacked[0]}


def restore_state(workdir: pathlib.Path, abstract_state: Any, mesh: Mesh) -> TrainState:
    """Restores the latest checkpoint of a finished (or interrupted) stage."""
    checkpointer = Checkpointer(workdir / "checkpoints")
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(
                f"no checkpoint in {checkpointer.directory}; train that stage first"
            )
        state, _ = checkpointer.restore(abstract_state, sharding.replicated(mesh))
    finally:
        checkpointer.close()
    return state
