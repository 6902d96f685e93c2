"""Shared helpers for the benchmark rows: setup, batches, the timing loop, compile timing,
XLA cost and memory analysis, and the table.

A row is a `Case`: a jitted function, the arguments of its first call, and how to call it over
and over. `run_case` measures it the same way for every row:

1. cold compile: `jitted.lower(*args).compile()` with an empty persistent compilation cache;
2. warm compile: `jax.clear_caches()`, then lower and compile again, now served by the
   persistent cache that step 1 filled (cache hits and misses are counted to prove it);
3. XLA's cost analysis (FLOPs) and memory analysis of the compiled executable;
4. the timing loop (`measure`): one first call timed alone, `WARMUP_CALLS` untimed calls, then
   `repeats` blocks of `steps` calls through the compiled executable, each block ended by
   `jax.block_until_ready`. Each block gives one ms/call sample in wall time and in
   `time.process_time` (CPU time of every thread of this process: a busy machine inflates wall
   time, not CPU time; cpu > wall means several cores worked);
5. optionally a `jax.profiler` trace of a few more calls.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import fnmatch
import itertools
import json
import os
import pathlib
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from ssl_vqvae import augment, config_lib, data, stage1, stage2, train_state, validation
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE

WARMUP_CALLS = 2
NUM_BATCHES = 4  # distinct host batches cycled through, so no step sees identical inputs
MIB = 2**20
# An arbitrary schedule horizon: the learning-rate value does not change the cost of a step.
SCHEDULE_UPDATES = 1000
CACHE_EVENT = "/jax/compilation_cache/"
EIGEN_THREAD_NAME = "XLAEigen"  # XLA:CPU's intra-op thread pool names its threads tf_XLAEigen


@dataclasses.dataclass(frozen=True)
class Context:
    """What every row is built from.

    Attributes:
      dataset: the UCR dataset whose series feed the rows.
      mesh: all devices of the backend, one "data" axis (as training uses).
      config_arg: None for the SPEC model sizes, "tiny" for the smoke-test sizes.
    """

    dataset: data.UCRDataset
    mesh: jax.sharding.Mesh
    config_arg: str | None


@dataclasses.dataclass
class Case:
    """One benchmark row.

    Attributes:
      info: identifying fields of the row (dataset, batch, parameter count, ...).
      samples: series processed per call (for samples/s).
      jitted: the jitted function that is timed.
      args: the arguments of its first call (also used to lower it).
      make_call: given the compiled executable, returns a zero-argument function that runs one
        call and returns arrays to wait on (it threads donated state and cycles the inputs).
      check: raises if the outputs of the last call are not finite.
      total_flops: the FLOPs of one call, from the compiled executable; by default XLA's cost
        analysis, which counts a while-loop body once whatever its trip count, so rows with
        loops supply their own.
      extra: more result fields, measured after the timing loop; called with the compiled
        executable, the steps and repeats of the timing and its median ms/call.
    """

    info: dict[str, Any]
    samples: int
    jitted: Any
    args: tuple[Any, ...]
    make_call: Callable[[Any], Callable[[], Any]]
    check: Callable[[], None]
    total_flops: Callable[[Any], float] = lambda compiled: analysed_flops(compiled)
    extra: Callable[[Any, int, int, float], dict[str, Any]] = lambda *timing: {}


def environment() -> dict[str, Any]:
    """What the numbers were measured on (call after the backend is up)."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def cpu_model() -> str:
    """The host CPU's model name (as `lscpu` shows it), or the platform's best guess."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def threads() -> dict[str, int | None]:
    """CPU count, the cores this process may run on, and this process's OS threads.

    `xla_eigen_threads` counts the threads named like XLA:CPU's intra-op (Eigen) pool; the
    thread counts are None where thread names cannot be read (not Linux).
    """
    tasks = pathlib.Path("/proc/self/task")
    eigen = total = None
    if tasks.is_dir():
        names = [(task / "comm").read_text() for task in tasks.iterdir()]
        eigen, total = sum(EIGEN_THREAD_NAME in name for name in names), len(names)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": affinity,
        "xla_eigen_threads": eigen,
        "process_threads": total,
    }


def sample_batches(
    split: data.Split, batch_size: int, seed: int, augmentations: Sequence[str] = ()
) -> tuple[list[dict[str, np.ndarray]], float]:
    """NUM_BATCHES batches drawn WITH replacement (a split may hold fewer series than a batch).

    Returns the batches ({"x", "y"[, "x_aug"]}, as `pipeline.BatchRows` makes them) and the
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


def optimizer() -> optax.GradientTransformation:
    """AdamW under a cosine schedule, as every trainer of the library builds it."""
    optim = config_lib.load_config_file("stage1_vqvae").optim
    schedule = train_state.reference_cosine_schedule(optim.learning_rate, SCHEDULE_UPDATES, 1)
    return train_state.make_optimizer(schedule, optim.weight_decay)


def fresh_tokenizer(
    dataset: data.UCRDataset, method: str, config_arg: str | None
) -> tuple[VQVAE, dict[str, Any]]:
    """A freshly initialised stage-1 model and its variables (for `model.apply`)."""
    config = config_lib.load_config_file(f"{config_lib.STAGE1_CONFIGS[method]}:{config_arg or ''}")
    model = stage1.build_model(validation.validate(config), dataset.length, dataset.channels)
    return model, init_state(model, optimizer(), dataset.train.x[:1]).model_variables()


def init_state(
    model: Any, optimizer: optax.GradientTransformation, example: np.ndarray
) -> train_state.TrainState:
    """The trainers' fresh state of `model` for inputs shaped like `example`.

    Jitted with the initialisation key, as `train_state.StateFactory.initialise` does it: run
    eagerly, variables initialised from one another (the quantiser's `embed_sum` from its
    codebook) share one buffer, which a step donating the state refuses.
    """
    spec = jax.ShapeDtypeStruct(example.shape, jnp.float32)
    init = train_state.module_init(model, optimizer, spec, train=False)
    return jax.jit(init)(train_state.initialisation_key(jax.random.key(0)))


def fresh_prior(
    dataset: data.UCRDataset, method: str, config_arg: str | None
) -> tuple[Any, VQVAE, dict[str, Any], MaskGITTransformer, str, Any]:
    """The stage-2 setup over a fresh tokenizer trained with ssl.method=`method`.

    The cost of a step or of a fixed number of decoding steps does not depend on the weights.
    Returns (stage-2 settings, tokenizer, its variables, prior, masking convention, train state).
    """
    config = validation.validate(config_lib.load_config_file(f"stage2_maskgit:{config_arg or ''}"))
    tokenizer, tokenizer_variables = fresh_tokenizer(dataset, method, config_arg)
    variant = stage2.resolve_variant(config.prior, method)
    convention = stage2.masking_convention(config.prior.masking, variant)
    prior = stage2.build_prior(config.prior, tokenizer, dataset.num_classes, variant)
    codebook = tokenizer.apply(tokenizer_variables, method="codebook")
    state = stage2.init_prior(prior, optimizer())(jax.random.key(0), codebook)
    return config, tokenizer, tokenizer_variables, prior, convention, state


def unwrap_step(step: Callable) -> tuple[Any, tuple[Any, ...]]:
    """The jitted function and the frozen arguments behind a `train_state.compile_step` result."""
    if not isinstance(step, train_state.CompiledStep):
        raise TypeError("expected the function returned by train_state.compile_step")
    return step.jitted, step.frozen


def train_case(
    step: Callable,
    state: train_state.TrainState,
    batches: Sequence[dict[str, jax.Array]],
    rng: jax.Array,
    info: dict[str, Any],
) -> Case:
    """A row timing a `train_state.compile_step` update `(state, batch, rng) -> (state, metrics)`.

    Each call donates the previous state and takes the next of `batches`; `check` requires a
    finite loss after the last call.
    """
    jitted, frozen = unwrap_step(step)
    outputs: dict[str, Any] = {"state": state, "metrics": {}}

    def make_call(compiled: Callable[..., Any]) -> Callable[[], Any]:
        cycle = itertools.cycle(batches)

        def call() -> Any:
            outputs["state"], outputs["metrics"] = compiled(
                outputs["state"], next(cycle), rng, *frozen
            )
            return outputs["state"]

        return call

    def check() -> None:
        loss = float(outputs["metrics"]["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"{info}: loss is {loss} after the benchmark")

    samples = int(batches[0]["x"].shape[0])
    info = {**info, "batch": samples, "params": train_state.count_params(state.params)}
    return Case(info, samples, jitted, (state, batches[0], rng, *frozen), make_call, check)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(call: Callable[[], Any], steps: int, repeats: int) -> dict[str, Any]:
    """Times `call()` (one call; returns arrays to wait on), see the module docstring."""
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
    return {
        "first_call_ms": 1000 * first_wall,
        "first_call_cpu_ms": 1000 * first_cpu,
        **_spread("ms", wall_ms),
        **_spread("cpu_ms", cpu_ms),
    }


def _spread(name: str, values: Sequence[float]) -> dict[str, Any]:
    """Median, interquartile range, min, max and the samples themselves."""
    q25, q75 = np.percentile(values, [25, 75])
    return {
        name: float(np.median(values)),
        f"{name}_iqr": float(q75 - q25),
        f"{name}_min": float(np.min(values)),
        f"{name}_max": float(np.max(values)),
        f"{name}_samples": [float(v) for v in values],
    }


_CACHE_EVENTS: collections.Counter[str] = collections.Counter()


def _record_cache_event(event: str, **kwargs: Any) -> None:
    """`jax.monitoring` listener: counts persistent-compilation-cache hits and misses."""
    del kwargs
    if event.startswith(CACHE_EVENT):
        _CACHE_EVENTS[event.removeprefix(CACHE_EVENT)] += 1


jax.monitoring.register_event_listener(_record_cache_event)


def _compile(jitted: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    """Lowers and compiles `jitted` for `args`, timing both and counting cache hits."""
    before = collections.Counter(_CACHE_EVENTS)
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return {
        "compiled": compiled,
        "lower_s": lowered_at - start,
        "compile_s": done - lowered_at,
        "s": done - start,
        **{key: _CACHE_EVENTS[key] - before[key] for key in ("cache_hits", "cache_misses")},
    }


def program_devices(compiled: Any) -> int:
    """How many devices the compiled SPMD program runs on (one copy of it on each)."""
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    return len(set().union(*(s.device_set for s in shardings)))


def analysed_flops(compiled: Any) -> float:
    """XLA's FLOP count of one call of the compiled program, summed over its devices.

    The cost analysis describes the per-device program (after SPMD partitioning).
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost["flops"]) * program_devices(compiled)


def while_loops(compiled: Any) -> int:
    """While loops in the optimised HLO: XLA's cost analysis counts their bodies only once."""
    return compiled.as_text().count(" while(")


def xla_memory(compiled: Any) -> dict[str, float | None]:
    """XLA's buffer sizes of the compiled program (per device), in MiB."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"xla_mib": None}
    sizes = {
        "xla_argument_mib": stats.argument_size_in_bytes / MIB,
        "xla_output_mib": stats.output_size_in_bytes / MIB,
        "xla_alias_mib": stats.alias_size_in_bytes / MIB,
        "xla_temp_mib": stats.temp_size_in_bytes / MIB,
    }
    live = sizes["xla_argument_mib"] + sizes["xla_output_mib"] - sizes["xla_alias_mib"]
    return {"xla_mib": live + sizes["xla_temp_mib"], **sizes}


def memory() -> dict[str, float | None]:
    """This process's RSS high-water mark and, where the backend reports it, the device's peak
    bytes in use, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / MIB if sys.platform == "darwin" else rss / 1024  # bytes vs KiB
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"peak_rss_mib": rss_mib, "device_peak_mib": None if peak is None else peak / MIB}


def run_case(
    case: Case,
    steps: int,
    repeats: int,
    profile_dir: pathlib.Path | None = None,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """Measures one row as the module docstring describes; returns its result fields.

    Point the persistent compilation cache at an empty folder first
    (`ssl_vqvae.compilation_cache.enable`): the cold compile must miss the cache and the warm
    one hit it (the counts are in the result).
    """
    cold = _compile(case.jitted, case.args)
    compiled = cold.pop("compiled")
    jax.clear_caches()
    warm = _compile(case.jitted, case.args)
    del warm["compiled"]

    flops = case.total_flops(compiled)
    call = case.make_call(compiled)
    timing = measure(call, steps, repeats)
    case.check()
    extra = case.extra(compiled, steps, repeats, timing["ms"])
    if profile_dir is not None:
        with jax.profiler.trace(str(profile_dir)):
            for _ in range(profile_steps):
                jax.block_until_ready(call())
    seconds = timing["ms"] / 1000
    return {
        **case.info,
        **{f"cold_{key}": value for key, value in cold.items()},
        **{f"warm_{key}": value for key, value in warm.items()},
        "steps": steps,
        "repeats": repeats,
        **timing,
        **extra,
        "samples_per_s": case.samples / seconds,
        "flops": flops,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
        "analysed_flops": analysed_flops(compiled),
        "program_devices": program_devices(compiled),
        "hlo_while_loops": while_loops(compiled),
        **xla_memory(compiled),
        **memory(),
        **threads(),
    }


COLUMNS = (  # (row key, header, format)
    ("row", "row", "{}"),
    ("batch", "batch", "{}"),
    ("cold_s", "cold s", "{:.1f}"),
    ("warm_s", "warm s", "{:.2f}"),
    ("ms", "ms/call", "{:.1f}"),
    ("ms_iqr", "IQR", "{:.1f}"),
    ("cpu_ms", "cpu ms", "{:.1f}"),
    ("cpu_ms_iqr", "IQR", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.0f}"),
    ("gflop", "GFLOP", "{:.2f}"),
    ("gflops", "GFLOP/s", "{:.1f}"),
    ("mfu", "MFU", "{:.3f}"),
    ("peak_rss_mib", "RSS MiB", "{:.0f}"),
    ("xla_mib", "XLA MiB", "{:.0f}"),
    ("device_peak_mib", "dev MiB", "{:.0f}"),
    ("wait_ms", "wait ms", "{:.2f}"),
    ("wait_p90_ms", "wait p90", "{:.2f}"),
    ("input_overhead", "vs premade", "{:+.1%}"),
)


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """COLUMNS of `rows` as aligned text lines (missing values show as '-')."""
    cells = [[header for _, header, _ in COLUMNS]]
    for row in rows:
        cells.append([_cell(row.get(key), fmt) for key, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def write_results(
    path: pathlib.Path,
    module: str,
    args: dict[str, Any],
    env: dict[str, Any],
    rows: Sequence[dict[str, Any]],
) -> None:
    """A side-by-side script's JSON: date, the command that ran `module`, its arguments, the
    environment and the rows."""
    payload = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "-m", module, *sys.argv[1:]]),
        "args": args,
        "environment": env,
        "rows": list(rows),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def select_rows(parser: argparse.ArgumentParser, args: argparse.Namespace, rows: Sequence[str]):
    """Refuses `--steps` / `--repeats` / `--torch_threads` below 1 (one line, via `parser`) and
    replaces `args.rows`, comma-separated names or shell patterns, by the rows they match."""
    if min(args.steps or 1, args.repeats, args.torch_threads or 1) < 1:
        parser.error("--steps, --repeats and --torch_threads must be >= 1")
    patterns = [p.strip() for p in args.rows.split(",") if p.strip()]
    args.rows = [name for name in rows if any(fnmatch.fnmatch(name, p) for p in patterns)]
    if not args.rows:
        parser.error(f"--rows matches no row; rows: {', '.join(rows)}")
