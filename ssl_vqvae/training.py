"""The training loop shared by stage 1, stage 2 and the evaluation classifier.

A stage supplies a `StateFactory` (how to make a fresh `TrainState`), its `ModelSpec`, a step
compiled by `train_state.compile_step` and an `Evaluator`; `fit` restores or initialises the
state, runs the steps, logs, evaluates, checkpoints (the `model` / `train` / `record` items of
`checkpoints`) and resumes, and stops cleanly on SIGINT / SIGTERM.
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

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from ssl_vqvae import processes, sharding
from ssl_vqvae.artifacts import CHECKPOINT_DIR, ModelSpec
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.input_pipeline import TrainBatches
from ssl_vqvae.metric_log import MetricWriter, check_finite
from ssl_vqvae.profiling import PROFILE_DIR, StepProfiler
from ssl_vqvae.train_state import Metrics, StateFactory, TrainState


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
    profile_steps: int = 0  # > 0: a profiler trace of this many steps (see `profiling`)


class Evaluator:
    """Base of `fit`'s evaluation callbacks: `evaluator(state, step) -> {name: scalar}`.

    An evaluator that keeps statistics across evaluations (e.g. the CAS accuracy EMA) returns
    them from `loop_state` and takes them back in `restore_loop_state`; `fit` stores them in
    each checkpoint's record, so a resumed run continues them exactly.
    """

    def __call__(self, state: TrainState, step: int) -> Mapping[str, float]:
        raise NotImplementedError

    def loop_state(self) -> dict[str, Any]:
        return {}

    def restore_loop_state(self, record: dict[str, Any]) -> None:
        del record


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
    factory: StateFactory,
    spec: ModelSpec,
    train_step: Callable,
    batches: TrainBatches,
    mesh: Mesh,
    rng: jax.Array,
    loop: LoopConfig,
    evaluate: Evaluator | Callable[[TrainState, int], Mapping[str, float]] | None = None,
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
      factory: makes the fresh state; only traced abstractly when a checkpoint is restored.
      spec: how to rebuild the model, stored with every checkpoint (see `artifacts`).
      train_step: a step compiled by `train_state.compile_step`.
      batches: the stream of batches on `mesh`; its position is checkpointed with the state,
        and its background work stops when `fit` returns.
      rng: base key; the step folds in the step number itself.
      evaluate: called every `loop.eval_every` steps and at the end with (state, step); returns
        scalars that are logged (and may write plots); its loop state is checkpointed.
      finalize: called once after the last step's evaluation, before its checkpoint, with the
        state; returns the state to save and return (e.g. with mutated statistics) and scalars
        logged like the evaluation's. Not called when a resumed run has nothing left to do.
    """
    prefix = f"[{loop.description}]"
    with (
        _StopSignals() as stop,
        # Closing waits for the last save, also when a second signal arrives meanwhile.
        contextlib.closing(Checkpointer(workdir / CHECKPOINT_DIR)) as checkpointer,
        contextlib.closing(batches),
    ):
        state, start, window = _resume(checkpointer, factory, batches, evaluate, mesh, prefix)
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
            disable=not processes.is_main(),
        )
        profiler = StepProfiler(workdir / PROFILE_DIR, loop.profile_steps, start)
        with (
            contextlib.closing(progress),
            contextlib.closing(MetricWriter(workdir, resume_step=start)) as writer,
            contextlib.closing(profiler),
        ):
            for step in progress:
                batch = next(batches)
                profiler.before(step)
                state, metrics = train_step(state, batch, rng)
                profiler.after(step, state)
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
                        "evaluator": (
                            evaluate.loop_state() if isinstance(evaluate, Evaluator) else {}
                        ),
                    }
                    arrays = {"model": state.model_variables(), "train": state.train_only()}
                    checkpointer.save(done, arrays, spec.to_json(), resume_record)
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
    checkpointer: Checkpointer,
    factory: StateFactory,
    batches: TrainBatches,
    evaluate: Any,
    mesh: Mesh,
    prefix: str,
) -> tuple[TrainState, int, list[Metrics]]:
    """Restores the newest readable checkpoint, or initialises, and says which in one line.

    The state is first traced abstractly, so a resumed run allocates only what it restores.

    Returns:
      (state placed on the mesh, the step it has taken, the per-step metrics of the steps since
      the last train record).
    """
    abstract = factory.abstract()
    restored = checkpointer.restore_newest_intact(
        {"model": abstract.model_variables(), "train": abstract.train_only()},
        sharding.replicated(mesh),
        lambda line: print(f"{prefix} {line}"),
    )
    if restored is None:
        print(f"{prefix} started fresh (no checkpoint in {checkpointer.directory})")
        return factory.initialise(mesh), 0, []
    step, items = restored
    record = items["record"]
    batches.set_state(record["batches"])
    if isinstance(evaluate, Evaluator):
        evaluate.restore_loop_state(record["evaluator"])
    print(f"{prefix} resumed from step {step} (checkpoint {checkpointer.step_path(step)})")
    return TrainState.from_items(items["model"], items["train"]), step, list(record["log_window"])


def _host_floats(window: list[Metrics]) -> list[dict[str, float]]:
    """Per-step metrics as JSON-ready floats (exact: float32 -> float64)."""
    return [{key: float(value) for key, value in m.items()} for m in jax.device_get(window)]


def _mean_metrics(window: list[Metrics]) -> dict[str, float]:
    """Per-metric mean over steps, in float64, whether the window was restored or not."""
    stacked = _host_floats(window)
    return {key: float(np.mean([m[key] for m in stacked])) for key in stacked[0]}
