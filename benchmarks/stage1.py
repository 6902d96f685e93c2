"""Stage-1 (tokenizer) train-step rows: `python -m benchmarks --rows='stage1_*'`.

Builds everything with the library (`stage1.build_model`, `train_state.module_init`,
`stage1.make_loss_fn` through `train_state.make_train_step` and `compile_step` over a mesh of
all devices) and times the
jitted, donated update on real UCR series. Batches are drawn WITH replacement from the train
split (GunPoint has only 50 train series); the augmented view is made on the host beforehand,
as `pipeline.BatchRows` does, and its host cost per batch is the row's `aug_ms`, not part
of the step time.
"""

from __future__ import annotations

import common
import jax

from ssl_vqvae import augment, config_lib, sharding, stage1, train_state, validation

BATCH_SIZE = 128  # SPEC §2.7


def case(context: common.Context, method: str) -> common.Case:
    """The update of a fresh tokenizer trained with ssl.method=`method`."""
    dataset, mesh = context.dataset, context.mesh
    config = config_lib.load_config_file(
        f"{config_lib.STAGE1_CONFIGS[method]}:{context.config_arg or ''}"
    )
    augmentations = (
        () if method == "none" else augment.resolve_augmentations(config.ssl.augmentations)
    )
    host_batches, aug_ms = common.sample_batches(
        dataset.train, BATCH_SIZE, config.seed, augmentations
    )
    keys = ("x", "x_aug") if augmentations else ("x",)
    batches = [sharding.shard_batch({k: b[k] for k in keys}, mesh) for b in host_batches]

    settings = validation.validate(config)
    model = stage1.build_model(settings, dataset.length, dataset.channels)
    optimizer = common.optimizer()
    rng = jax.random.key(config.seed)
    state = sharding.replicate(common.init_state(model, optimizer, host_batches[0]["x"]), mesh)
    loss_fn = stage1.make_loss_fn(model, settings.ssl)
    step = train_state.compile_step(train_state.make_train_step(loss_fn, optimizer), mesh)
    info = {"dataset": dataset.name, "length": dataset.length, "method": method, "aug_ms": aug_ms}
    return common.train_case(step, state, batches, rng, info)
