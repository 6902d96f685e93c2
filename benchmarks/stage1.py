"""Stage-1 (tokenizer) train-step rows: `python -m benchmarks --rows='stage1_*'`.

Builds everything with the library (`stage1.build_model`, `stage1.init_state`,
`stage1.make_train_step`, `training.compile_step` over a mesh of all devices) and times the
jitted, donated update on real UCR series. Batches are drawn WITH replacement from the train
split (GunPoint has only 50 train series); the augmented view is made on the host beforehand,
as `pipeline.BatchIterator` does, and its host cost per batch is the row's `aug_ms`, not part
of the step time.
"""

from __future__ import annotations

import common
import jax

from ssl_vqvae import augment, config_lib, sharding, stage1, training

BATCH_SIZE = 128  # SPEC §2.7


def case(context: common.Context, method: str) -> common.Case:
    """The update of a fresh tokenizer trained with ssl.method=`method`."""
    dataset, mesh = context.dataset, context.mesh
    config = config_lib.stage1(method, context.config_arg)
    augmentations = (
        () if method == "none" else augment.resolve_augmentations(config.ssl.augmentations)
    )
    host_batches, aug_ms = common.sample_batches(
        dataset.train, BATCH_SIZE, config.seed, augmentations
    )
    keys = ("x", "x_aug") if augmentations else ("x",)
    batches = [sharding.shard_batch({k: b[k] for k in keys}, mesh) for b in host_batches]

    model = stage1.build_model(config, dataset.length, dataset.channels)
    optimizer = common.optimizer()
    rng = jax.random.key(config.seed)
    state = stage1.init_state(model, optimizer, batches[0]["x"], rng)
    state = sharding.replicate(state, mesh)
    step = training.compile_step(stage1.make_train_step(model, optimizer, config.ssl), mesh)
    info = {"dataset": dataset.name, "length": dataset.length, "method": method, "aug_ms": aug_ms}
    return common.train_case(step, state, batches, rng, info)
