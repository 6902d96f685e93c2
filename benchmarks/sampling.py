"""Generation benchmark: MaskGIT decoding + tokenizer decoder at the default SPEC config.

    python benchmarks/sampling.py [--methods=vibcreg,none] [--dataset=GunPoint]
        [--batch_size=128] [--steps=1] [--repeats=10] [--output=sampling.json]

Times one call of the library's jitted generator (`generate.make_generator`) that turns
`--batch_size` class ids into series with `sampling.num_steps` (T = 10) decoding steps:
class-conditional at guidance scale 1.0 evaluated both ways: "conditional, 2 passes" (null and
conditional pass per step, as the reference) and "conditional" (what the library runs:
`generate.guidance_argument` skips the null pass at scale 1, the same logits), and unconditional
(null class, one pass per step). Lowering and
compilation are timed separately (`jitted.lower(...).compile()`); the timed calls run the
compiled executable. Prior and tokenizer are freshly initialised: with a fixed number of
decoding steps the cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import generate, sharding, stage2

# PyTorch reference on the same 2-core CPU: seconds for 128 class-conditional samples, T = 10.
REFERENCE_S = 1.56
REFERENCE_BATCH = 128
TARGET_SPEEDUP = 5.0


def bench_mode(
    generator: Any, arguments: tuple[Any, ...], keys: list[jax.Array], args: argparse.Namespace
) -> dict[str, Any]:
    """Compile time and steady-state timing of `generator(*arguments[:3], key, arguments[3])`."""
    params, tokenizer_variables, class_ids, scale = arguments
    start = time.perf_counter()
    lowered = generator.lower(params, tokenizer_variables, class_ids, keys[0], scale)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cycle = itertools.cycle(keys)
    series = jnp.zeros(())

    def call() -> jax.Array:
        nonlocal series
        series = compiled(params, tokenizer_variables, class_ids, next(cycle), scale)
        return series

    timing = common.measure(call, args.steps, args.repeats)
    if not np.all(np.isfinite(np.asarray(series))):
        raise FloatingPointError("generated series hold NaN or inf")
    return {**timing, "lower_s": lower_s, "compile_s": lower_s + compile_s}


def bench(
    dataset: Any, method: str, args: argparse.Namespace, mesh: jax.sharding.Mesh
) -> list[dict[str, Any]]:
    """Conditional and unconditional generation over a fresh tokenizer/prior pair."""
    config, tokenizer, tokenizer_variables, prior, _, state = common.fresh_prior(dataset, method)
    generator = generate.make_generator(prior, tokenizer, stage2.decoding_config(config))
    params = sharding.replicate(state.params, mesh)
    tokenizer_variables = sharding.replicate(tokenizer_variables, mesh)
    keys = [jax.random.key(i) for i in range(common.NUM_BATCHES)]
    conditional = np.arange(args.batch_size) % dataset.num_classes
    modes = {
        "conditional, 2 passes": (conditional, jnp.float32(config.sampling.guidance_scale)),
        "conditional": (conditional, generate.guidance_argument(config.sampling.guidance_scale)),
        "unconditional": (np.full(args.batch_size, prior.num_classes), None),
    }
    rows = []
    for mode, (class_ids, scale) in modes.items():
        ids = sharding.shard_batch({"y": class_ids.astype(np.int32)}, mesh)["y"]
        timing = bench_mode(generator, (params, tokenizer_variables, ids, scale), keys, args)
        row = {
            "dataset": dataset.name,
            "method": method,
            "variant": prior.variant,
            "mode": mode,
            "guidance": scale is not None,
            "decode_steps": config.sampling.num_steps,
            "batch": args.batch_size,
            **timing,
            "samples_per_s": 1000 * args.batch_size / timing["ms"],
            **common.memory(),
        }
        reference = (
            1000 * REFERENCE_S
            if mode.startswith("conditional") and args.batch_size == REFERENCE_BATCH
            else None
        )
        common.with_reference(row, reference, TARGET_SPEEDUP)
        rows.append(row)
        print(f"{dataset.name}/{method}/{mode}: {row['ms']:.1f} ms per call", flush=True)
    return rows


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0], batch_size=128, steps=1, repeats=10)
    parser.add_argument("--methods", type=common.ssl_methods, default=["vibcreg", "none"])
    parser.add_argument("--dataset", default="GunPoint")
    args = parser.parse_args()
    notes = [
        "ms/step = ms per generate() call of --batch_size series (T decoding steps + decoder)",
        "compile s = lower+compile via jitted.lower(...).compile(); lower_s is in the JSON",
        "prior and tokenizer freshly initialised (cost is weight-independent at fixed T)",
    ]
    dataset = common.load_dataset(args.dataset, args.data_root, notes)
    rows = []
    if dataset is not None:
        mesh = sharding.make_mesh()
        for method in args.methods:
            rows.extend(bench(dataset, method, args, mesh))
    common.report("sampling", args, rows, ("dataset", "method", "mode", "batch"), notes)


if __name__ == "__main__":
    main()
