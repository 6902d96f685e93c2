"""Stage-2 (MaskGIT prior) train-step rows: `python -m benchmarks --rows='stage2_*'`.

Builds everything with the library (`stage2.build_prior`, `stage2.init_prior`,
`stage2.make_loss_fn` through `train_state.make_train_step` and `compile_step`, with the
tokenizer variables as a frozen argument) and times the jitted, donated update, which includes
tokenising the batch with the frozen stage-1 encoder. The tokenizer is a freshly initialised
stage-1 model: the cost of a step does not depend on trained weights. The stage-1 SSL method
selects the prior variant as `prior.variant=auto` does (none -> token_index, else
full_embedding). Batches are drawn with replacement from the train split.
"""

from __future__ import annotations

import common
import jax

from ssl_vqvae import sharding, stage2, train_state

BATCH_SIZE = 160  # as issue 13 measured the reference (SPEC: 256, capped by the train split)


def case(context: common.Context, method: str) -> common.Case:
    """The prior's update over a fresh tokenizer trained with ssl.method=`method`."""
    dataset, mesh = context.dataset, context.mesh
    config, tokenizer, tokenizer_variables, prior, convention, state = common.fresh_prior(
        dataset, method, context.config_arg
    )
    host_batches, _ = common.sample_batches(dataset.train, BATCH_SIZE, config.seed)
    batches = [sharding.shard_batch(batch, mesh) for batch in host_batches]
    optimizer = common.optimizer()
    loss_fn = stage2.make_loss_fn(prior, tokenizer, config.prior, convention)
    step = train_state.compile_step(
        train_state.make_train_step(loss_fn, optimizer), mesh, tokenizer_variables
    )
    state = sharding.replicate(state, mesh)
    rng = jax.random.key(config.seed)
    info = {
        "dataset": dataset.name,
        "method": method,
        "variant": prior.variant,
        "masking": str(convention),
        "tokens": prior.num_tokens,
    }
    return common.train_case(step, state, batches, rng, info)
