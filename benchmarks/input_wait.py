"""Input-wait rows: the stage-1 VIbCReg update fed by the training input pipeline.

`python -m benchmarks --rows='stage1_vibcreg*'`. One call is one step of the training loop:
take the next batch from `input_pipeline.TrainBatches` (batch 128, the config's augmentation,
"warp": window warp + amplitude resize, the most expensive one), run the donated update and
wait for its loss. Waiting for every step is the strict case: the step loop has no queue of
dispatched steps to hide a late batch behind, so any time it waits for data shows up.

Fields besides the common ones (`common.run_case`):
  wait_ms, wait_p90_ms, wait_max_ms: time blocked in `next(batches)` per timed step (median,
    90th percentile, max): the time the step waited for data;
  premade_ms: the same loop over 4 batches already on the devices (median ms/step);
  input_overhead: ms / premade_ms - 1, what feeding the step from the pipeline costs;
  host_ms: making one batch on the host (rows + augmentation), alone, median of 5;
  startup_ms: the wait for the first batch (starting the thread and any worker processes).

Rows: `stage1_vibcreg_input` (2 batches prefetched by a thread, which also makes them),
`stage1_vibcreg_input_workers` (made in 2 grain worker processes) and
`stage1_vibcreg_input_sync` (no prefetch: each batch made when asked for, as the synchronous
iterator did). GunPoint has 50 train series: its train split is repeated to hold a batch of 128.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import common
import jax
import numpy as np

from ssl_vqvae import (
    augment,
    config_lib,
    data,
    pipeline,
    sharding,
    stage1,
    train_state,
    validation,
)
from ssl_vqvae.input_pipeline import TrainBatches

BATCH_SIZE = 128  # SPEC §2.7
METHOD = "vibcreg"
HOST_SAMPLES = 5


def repeated(split: data.Split, size: int) -> data.Split:
    """`split` repeated until it holds at least `size` series."""
    copies = math.ceil(size / len(split))
    return data.Split(np.concatenate([split.x] * copies), np.concatenate([split.y] * copies))


def host_ms(rows: pipeline.BatchRows) -> float:
    """Median ms to make one batch on the host, with nothing else running."""
    times = []
    for index in range(HOST_SAMPLES):
        start = time.perf_counter()
        rows(index)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def case(context: common.Context, prefetch: int, workers: int) -> common.Case:
    """The stage-1 VIbCReg update fed by `TrainBatches(prefetch=..., workers=...)`."""
    dataset, mesh = context.dataset, context.mesh
    config = config_lib.load_config_file(
        f"{config_lib.STAGE1_CONFIGS[METHOD]}:{context.config_arg or ''}"
    )
    augmentations = augment.resolve_augmentations(config.ssl.augmentations)
    split = repeated(dataset.train, BATCH_SIZE)
    batch_size = pipeline.global_batch_size(BATCH_SIZE, len(split), mesh.size)
    rows = pipeline.BatchRows(split, batch_size, config.seed, augmentations)
    batches = TrainBatches(
        split, batch_size, config.seed, mesh, augmentations, workers=workers, prefetch=prefetch
    )

    settings = validation.validate(config)
    model = stage1.build_model(settings, dataset.length, dataset.channels)
    optimizer = common.optimizer()
    state = sharding.replicate(common.init_state(model, optimizer, split.x[:1]), mesh)
    loss_fn = stage1.make_loss_fn(model, settings.ssl)
    step = train_state.compile_step(train_state.make_train_step(loss_fn, optimizer), mesh)
    jitted, frozen = common.unwrap_step(step)
    rng = jax.random.key(config.seed)
    outputs: dict[str, Any] = {"state": state, "metrics": {}}
    waits: list[float] = []

    def run_step(compiled: Any, batch: dict[str, jax.Array]) -> jax.Array:
        outputs["state"], outputs["metrics"] = compiled(outputs["state"], batch, rng, *frozen)
        return jax.block_until_ready(outputs["metrics"]["loss"])

    def make_call(compiled: Any) -> Any:
        def call() -> jax.Array:
            start = time.perf_counter()
            batch = next(batches)
            waits.append(time.perf_counter() - start)
            return run_step(compiled, batch)

        return call

    def extra(compiled: Any, steps: int, repeats: int, ms: float) -> dict[str, Any]:
        timed = 1000 * np.asarray(waits[1 + common.WARMUP_CALLS :][: steps * repeats])
        ready = itertools.cycle([next(batches) for _ in range(common.NUM_BATCHES)])
        batches.close()
        premade = common.measure(lambda: run_step(compiled, next(ready)), steps, repeats)
        return {
            "wait_ms": float(np.median(timed)),
            "wait_p90_ms": float(np.percentile(timed, 90)),
            "wait_max_ms": float(np.max(timed)),
            "wait_samples_ms": timed.tolist(),
            "premade_ms": premade["ms"],
            "input_overhead": ms / premade["ms"] - 1,
        }

    def check() -> None:
        loss = float(outputs["metrics"]["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"stage-1 {METHOD} loss is {loss} after the benchmark")

    info = {
        "dataset": dataset.name,
        "length": dataset.length,
        "method": METHOD,
        "augmentations": ",".join(augmentations),
        "prefetch": prefetch,
        "workers": workers,
        "host_ms": host_ms(rows),
        "batch": batch_size,
        "params": train_state.count_params(state.params),
    }
    start = time.perf_counter()
    first = next(batches)
    info["startup_ms"] = 1000 * (time.perf_counter() - start)
    args = (state, first, rng, *frozen)
    return common.Case(info, batch_size, jitted, args, make_call, check, extra=extra)
