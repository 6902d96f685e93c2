"""Stage-2 (MaskGIT prior) train-step benchmark at the default SPEC config.

    python benchmarks/stage2.py [--methods=vibcreg,none] [--dataset=GunPoint]
        [--batch_size=160] [--steps=10] [--repeats=5] [--output=stage2.json]

Builds everything with the library (`stage2.build_prior`, `stage2.init_state`,
`stage2.make_train_step`, `training.compile_step` with the tokenizer variables as a frozen
argument) and times the jitted, donated update, which includes tokenising the batch with the
frozen stage-1 encoder. The tokenizer is a freshly initialised default stage-1 model: the cost
of a step does not depend on trained weights. `--methods` picks the stage-1 SSL method, which
selects the prior variant as `prior.variant=auto` does (none -> token_index, else
full_embedding). Batches are drawn with replacement from the train split.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import jax

from ssl_vqvae import sharding, stage2, training

# PyTorch reference on the same 2-core CPU: ms per step at batch 160 on GunPoint.
REFERENCE_MS = 337.0
REFERENCE_BATCH = 160
TARGET_SPEEDUP = 2.0


def bench(
    dataset: Any, method: str, args: argparse.Namespace, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Times the prior's update over a fresh tokenizer trained with `method`; returns a row."""
    config, tokenizer, tokenizer_variables, prior, convention, state = common.fresh_prior(
        dataset, method
    )
    host_batches, _ = common.sample_batches(dataset.train, args.batch_size, config.seed)
    batches = [sharding.shard_batch(batch, mesh) for batch in host_batches]
    optimizer = common.optimizer()
    step_fn = training.compile_step(
        stage2.make_train_step(prior, tokenizer, optimizer, config, convention),
        mesh,
        tokenizer_variables,
    )
    state = sharding.replicate(state, mesh)
    rng = jax.random.key(config.seed)
    timing = common.time_train_step(step_fn, state, batches, rng, args, f"{dataset.name}/{method}")
    row = {
        "dataset": dataset.name,
        "method": method,
        "variant": prior.variant,
        "masking": str(convention),
        "tokens": prior.num_tokens,
        "batch": args.batch_size,
        "params": training.count_params(state.params),
        **timing,
        "samples_per_s": 1000 * args.batch_size / timing["ms"],
        **common.memory(),
    }
    reference = REFERENCE_MS if args.batch_size == REFERENCE_BATCH else None
    common.with_reference(row, reference, TARGET_SPEEDUP)
    return row


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0], batch_size=160, steps=10, repeats=5)
    parser.add_argument("--methods", type=common.ssl_methods, default=["vibcreg", "none"])
    parser.add_argument("--dataset", default="GunPoint")
    args = parser.parse_args()
    notes = [
        "tokenizer = freshly initialised default stage-1 model (step cost is weight-independent)",
        f"batches of {args.batch_size} drawn with replacement from the train split; the step "
        "includes tokenising the batch with the frozen encoder",
    ]
    dataset = common.load_dataset(args.dataset, args.data_root, notes)
    rows = []
    if dataset is not None:
        mesh = sharding.make_mesh()
        for method in args.methods:
            rows.append(bench(dataset, method, args, mesh))
            print(f"{args.dataset}/{method}: {rows[-1]['ms']:.1f} ms/step", flush=True)
    common.report("stage2", args, rows, ("dataset", "method", "variant", "batch"), notes)


if __name__ == "__main__":
    main()
