"""FCN train-step rows (`fcn`, `cas`): the evaluation classifier of SPEC §5.1 and §5.3.

Both train `evaluation.classifier`'s FCN with its own step (`classifier.make_loss_fn` through
`train_state.make_train_step` and `compile_step`); they differ in their data as
`classifier.fit_classifier` sees it:

* `fcn`: the FID/IS feature extractor, trained on the real train split, whose global batch is
  `classifier.BATCH_SIZE` capped at the split size (50 on GunPoint);
* `cas`: the CAS classifier, trained on the synthetic train set (`cas.MIN_SYNTHETIC_TRAIN` or
  more series of length 2 * floor(L / 2), as the decoder emits them), full batches of
  `classifier.BATCH_SIZE`. Real train series stand in for the synthetic ones: the cost of a
  step does not depend on the values.

`--tiny` shrinks the FCN's channels.
"""

from __future__ import annotations

import common
import jax

from ssl_vqvae import data, pipeline, sharding, train_state
from ssl_vqvae.evaluation import cas, classifier
from ssl_vqvae.evaluation.fcn import FCN

TINY_CHANNELS = (8, 16, 8)
SEED = 0


def _case(context: common.Context, split: data.Split, num_examples: int, row: str) -> common.Case:
    """The FCN update on batches drawn from `split`, sized as for `num_examples` series."""
    dataset, mesh = context.dataset, context.mesh
    channels = TINY_CHANNELS if context.config_arg == "tiny" else FCN.channels
    model = FCN(num_classes=dataset.num_classes, channels=channels)
    batch_size = pipeline.global_batch_size(classifier.BATCH_SIZE, num_examples, mesh.size)
    host_batches, _ = common.sample_batches(split, batch_size, SEED)
    batches = [sharding.shard_batch(batch, mesh) for batch in host_batches]
    optimizer = common.optimizer()
    rng = jax.random.key(SEED)
    state = sharding.replicate(common.init_state(model, optimizer, split.x[:batch_size]), mesh)
    step = train_state.compile_step(
        train_state.make_train_step(classifier.make_loss_fn(model), optimizer), mesh
    )
    info = {"dataset": dataset.name, "length": int(split.x.shape[1]), "data": row}
    return common.train_case(step, state, batches, rng, info)


def fcn_case(context: common.Context) -> common.Case:
    train = context.dataset.train
    return _case(context, train, len(train), "real train split")


def cas_case(context: common.Context) -> common.Case:
    train = context.dataset.train
    counts = cas.synthetic_class_counts(train.y, context.dataset.num_classes)
    length = 2 * (context.dataset.length // 2)
    synthetic = data.Split(train.x[:, :length], train.y)
    return _case(context, synthetic, int(counts.sum()), "synthetic-sized train set")
