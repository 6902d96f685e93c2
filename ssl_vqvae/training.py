"""Training machinery shared by stage 1, stage 2 and the evaluation classifier.

One pytree (`TrainState`) holds everything that changes during training; a stage supplies a
pure `train_step(state, batch, rng) -> (state, metrics)` and this module jit-compiles it over
the mesh (state replicated, batch split along "data", state buffers donated), runs the loop,
logs, evaluates, checkpoints and resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from ssl_vqvae import sharding
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.metric_log import MetricWriter, check_finite
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


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """A train step jitted over a mesh, called as `step(state, batch, rng)`.

    Attributes:
      jitted: the `jax.jit` function `(state, batch, rng, *frozen) -> (state, metrics)` (for
        lowering, cost analysis and profiling).
      frozen: the replicated trailing arguments passed on every call.
    """

    jitted: Any
    frozen: tuple[Any, ...]

    def __call__(self, state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> Any:
        return self.jitted(state, batch, rng, *self.frozen)


def compile_step(step_fn: Callable, mesh: Mesh, *frozen: Any) -> CompiledStep:
    """Jits a train step data-parallel over `mesh`, donating the incoming state.

    Args:
      step_fn: `(state, batch, rng, *frozen) -> (state, metrics)`.
      frozen: replicated pytrees passed as trailing arguments on every call (e.g. the frozen
        stage-1 tokenizer in stage 2); passing them as arguments, not closing over them, keeps
        them out of the compiled program as constants.

    Returns:
      a `CompiledStep`: `(state, batch, rng) -> (state, metrics)`.
    """
    replicated = sharding.replicated(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(replicated, sharding.batch_sharded(mesh), replicated)
        + (replicated,) * len(frozen),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    return CompiledStep(jitted, tuple(sharding.replicate(frozen, mesh)))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, evaluate and checkpoint (in steps).

    Besides every `checkpoint_every` steps, a checkpoint is saved once
    `checkpoint_every_minutes` have passed since the last one (<= 0: never on time), so that a
    long step interval never leaves hours of training unsaved.
    """

    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    checkpoint_every_minutes: float = 10.0
    description: str = "train"
    learning_rate: Callable[[int], Any] | None = None  # logged as train/learning_rate


class Interrupted(SystemExit):
    """`fit` stopped on SIGINT / SIGTERM after checkpointing; exit status 128 + signal number.

    A SystemExit, so that `except Exception` in callers does not swallow the request to stop.
    """


class _StopSignals:
    """Turns SIGINT and SIGTERM into a request (`signum`) to stop after the step in flight.

    Later signals are ignored, so a second Ctrl-C cannot cut the final save short. The previous
    handlers come back on exit. Signal handlers can only be set from the main thread; elsewhere
    the signals keep their handlers.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, previous in self._previous.items():
            # None: a handler not set from Python, which cannot be put back; use the default.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)


def _any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag ORed over all processes, so that every process saves and stops at one step."""
    if jax.process_count() == 1:
        return flags
    gathered = multihost_utils.process_allgather(np.asarray(flags))
    return tuple(bool(flag) for flag in np.any(gathered, axis=0))


def _resume_hint() -> str:
    """`rerun the same command: <command>` (the command only when it fits on one line)."""
    command = shlex.join(sys.orig_argv)
    return "rerun the same command" + ("" if "\n" in command else f": {command}")


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

    Resuming restores the newest readable checkpoint (a damaged newer one is reported and
    deleted) and drops the metric records logged after it, so an interrupted and resumed run
    ends with the state and the log of an uninterrupted one. SIGINT / SIGTERM stop the run
    after the step in flight: its checkpoint is saved, one line on stderr says where and how to
    resume, and `Interrupted` (exit status 128 + signal number) is raised.

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
    prefix = f"[{loop.description}]"
    with (
        _StopSignals() as stop,
        # Closing waits for the last save, also when a second signal arrives meanwhile.
        contextlib.closing(Checkpointer(workdir / "checkpoints")) as checkpointer,
    ):
        state, start, window = _resume(checkpointer, state, batches, mesh, prefix)
        if start >= loop.num_steps:
            print(f"{prefix} already trained to step {start}; nothing to do")
        saved_step = start
        # Steps since the last train record (restored ones included) and those timed here.
        window_start, timed_start, window_time = start - len(window), start, time.perf_counter()
        last_save_time = time.monotonic()
        progress = tqdm(
            range(start, loop.num_steps),
            initial=start,
            total=loop.num_steps,
            desc=loop.description,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        with (
            contextlib.closing(progress),
            contextlib.closing(MetricWriter(workdir, resume_step=start)) as writer,
        ):
            for step in progress:
                batch = sharding.shard_batch(next(batches), mesh)
                state, metrics = train_step(state, batch, rng)
                window.append(metrics)
                done = step + 1
                if done % loop.log_every == 0 or done == loop.num_steps:
                    averaged = _mean_metrics(window)
                    check_finite(averaged, window_start + 1, done)
                    elapsed = time.perf_counter() - window_time
                    averaged["steps_per_second"] = (done - timed_start) / max(elapsed, 1e-9)
                    if loop.learning_rate is not None:
                        averaged["learning_rate"] = float(loop.learning_rate(step))
                    writer.write(done, {f"train/{k}": v for k, v in averaged.items()})
                    progress.set_postfix(
                        loss=f"{averaged['loss']:.4f}",
                        steps_s=f"{averaged['steps_per_second']:.2f}",
                    )
                    window, window_start, timed_start = [], done, done
                    window_time = time.perf_counter()
                if evaluate is not None and (done % loop.eval_every == 0 or done == loop.num_steps):
                    results = evaluate(state, done)
                    check_finite(results, done, done)
                    writer.write(done, {f"eval/{k}": v for k, v in results.items()})
                    progress.write(
                        f"{prefix} step {done}: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
                    )
                if finalize is not None and done == loop.num_steps:
                    state, results = finalize(state)
                    check_finite(results, done, done)
                    writer.write(done, {f"eval/{k}": v for k, v in results.items()})
                minutes = (time.monotonic() - last_save_time) / 60
                stopping, overdue = _any_process(
                    stop.signum is not None, 0 < loop.checkpoint_every_minutes <= minutes
                )
                if (
                    done % loop.checkpoint_every == 0
                    or done == loop.num_steps
                    or overdue
                    or stopping
                ):
                    resume_record = {
                        "batches": batches.get_state(),
                        "log_window": _host_floats(window),
                    }
                    checkpointer.save(done, state, resume_record)
                    saved_step, last_save_time = done, time.monotonic()
                if stopping:
                    # Processes that were not signalled themselves stop as if by SIGTERM.
                    stop.signum = stop.signum or signal.SIGTERM
                    break
    if stop.signum is not None:
        print(
            f"{prefix} stopped by {signal.Signals(stop.signum).name}: saved step {saved_step} "
            f"in {checkpointer.step_path(saved_step)}; to resume, {_resume_hint()}",
            file=sys.stderr,
        )
        raise Interrupted(128 + stop.signum)
    return state


def _resume(
    checkpointer: Checkpointer, state: TrainState, batches: BatchIterator, mesh: Mesh, prefix: str
) -> tuple[TrainState, int, list[Metrics]]:
    """Restores the newest readable checkpoint (if any) and says so in one line.

    Returns:
      (state placed on the mesh, the step it has taken, the per-step metrics of the steps since
      the last train record).
    """
    state = sharding.replicate(state, mesh)
    restored = checkpointer.restore_newest_intact(
        state, sharding.replicated(mesh), lambda line: print(f"{prefix} {line}")
    )
    if restored is None:
        print(f"{prefix} started fresh (no checkpoint in {checkpointer.directory})")
        return state, 0, []
    step, state, record = restored
    batches.set_state(record["batches"])
    print(f"{prefix} resumed from step {step} (checkpoint {checkpointer.step_path(step)})")
    # Checkpoints written before the window was saved resume with an empty one.
    return state, step, list(record.get("log_window", []))


def _host_floats(window: list[Metrics]) -> list[dict[str, float]]:
    """Per-step metrics as JSON-ready floats (exact: float32 -> float64)."""
    return [{key: float(value) for key, value in m.items()} for m in jax.device_get(window)]


def _mean_metrics(window: list[Metrics]) -> dict[str, float]:
    """Per-metric mean over steps, in float64, whether the window was restored or not."""
    stacked = _host_floats(window)
    return {key: float(np.mean([m[key] for m in stacked])) for key in stacked[0]}


def restore_state(workdir: pathlib.Path, abstract_state: Any, mesh: Mesh) -> TrainState:
    """Restores the latest checkpoint of a finished (or interrupted) stage, read-only."""
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        state, _ = checkpointer.restore(abstract_state, sharding.replicated(mesh))
    finally:
        checkpointer.close()
    return state
