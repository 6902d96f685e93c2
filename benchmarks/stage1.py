"""Stage-1 (tokenizer) train-step benchmark at the default SPEC config.

    python benchmarks/stage1.py [--methods=none,barlowtwins,vibcreg] [--datasets=GunPoint,FordA]
        [--batch_size=128] [--steps=10] [--repeats=5] [--output=stage1.json]

Builds everything with the library (`stage1.build_model`, `stage1.init_state`,
`stage1.make_train_step`, `training.compile_step` over a mesh of all devices) and times the
jitted, donated update on real UCR series. Batches are drawn WITH replacement from the train
split (GunPoint has only 50 train series); the augmented view is made on the host beforehand,
as `pipeline.BatchIterator` does, and its host cost is reported separately (`aug ms`).
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import jax

from ssl_vqvae import augment, config_lib, sharding, stage1, training

# PyTorch reference on the same 2-core CPU, ms per step at batch 128 on GunPoint.
REFERENCE_BATCH = 128
REFERENCE_MS = {
    ("GunPoint", "none"): 158.0,
    ("GunPoint", "barlowtwins"): 872.0,
    ("GunPoint", "vibcreg"): 932.0,
}
TARGET_SPEEDUP = 3.0


def bench(
    dataset: Any, method: str, args: argparse.Namespace, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Times one (dataset, method) pair; returns a result row."""
    config = config_lib.stage1(method)
    augmentations = (
        () if method == "none" else augment.resolve_augmentations(config.ssl.augmentations)
    )
    host_batches, aug_ms = common.sample_batches(
        dataset.train, args.batch_size, config.seed, augmentations
    )
    keys = ("x", "x_aug") if augmentations else ("x",)
    batches = [sharding.shard_batch({k: b[k] for k in keys}, mesh) for b in host_batches]

    model = stage1.build_model(config, dataset.length, dataset.channels)
    optimizer = common.optimizer()
    rng = jax.random.key(config.seed)
    state = stage1.init_state(model, optimizer, batches[0]["x"], rng)
    state = sharding.replicate(state, mesh)
    step_fn = training.compile_step(stage1.make_train_step(model, optimizer, config.ssl), mesh)
    timing = common.time_train_step(step_fn, state, batches, rng, args, f"{dataset.name}/{method}")
    row = {
        "dataset": dataset.name,
        "length": dataset.length,
        "method": method,
        "batch": args.batch_size,
        "params": training.count_params(state.params),
        "aug_ms": aug_ms,
        **timing,
        "samples_per_s": 1000 * args.batch_size / timing["ms"],
        **common.memory(),
    }
    reference = REFERENCE_MS.get((dataset.name, method))
    if args.batch_size != REFERENCE_BATCH:
        reference = None
    common.with_reference(row, reference, TARGET_SPEEDUP)
    return row


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0], batch_size=128, steps=10, repeats=5)
    parser.add_argument("--methods", type=common.ssl_methods, default=list(config_lib.SSL_METHODS))
    parser.add_argument("--datasets", type=common.csv, default=["GunPoint", "FordA"])
    args = parser.parse_args()
    mesh = sharding.make_mesh()
    notes = [
        f"batches of {args.batch_size} drawn with replacement from each train split; "
        "'aug ms' = host (numpy) time to augment one batch, not part of ms/step"
    ]
    rows = []
    for name in args.datasets:
        dataset = common.load_dataset(name, args.data_root, notes)
        if dataset is None:
            continue
        for method in args.methods:
            rows.append(bench(dataset, method, args, mesh))
            print(
                f"{name}/{method}: {rows[-1]['ms']:.1f} ms/step "
                f"(compile {rows[-1]['compile_s']:.1f} s)",
                flush=True,
            )
    common.report("stage1", args, rows, ("dataset", "method", "batch", "aug_ms"), notes)


if __name__ == "__main__":
    main()
