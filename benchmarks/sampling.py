"""Generation rows (MaskGIT decoding + decoder): `python -m benchmarks --rows='sampling_*'`.

Times one call of the library's jitted generator (`generate.make_generator`) that turns
class ids into series with `sampling.num_steps` (T = 10) decoding steps, class-conditional,
either with one prior pass per step (what the library runs at guidance scale 1:
`generate.guidance_argument` skips the null pass, the logits are the same) or with two
(classifier-free guidance: null and conditional pass, as the reference does). Prior and
tokenizer are freshly initialised: with a fixed number of decoding steps the cost does not
depend on the weights. The stage-1 method is VIbCReg, so the prior is the full-embedding one
(NC-VQVAE).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import generate, sharding, train_state
from ssl_vqvae.decoding import decoding_config

METHOD = "vibcreg"


def case(context: common.Context, num_samples: int, two_passes: bool) -> common.Case:
    """One `generate()` call for `num_samples` class-conditional series."""
    dataset, mesh = context.dataset, context.mesh
    config, tokenizer, tokenizer_variables, prior, _, state = common.fresh_prior(
        dataset, METHOD, context.config_arg
    )
    decoding = decoding_config(config.sampling, None)
    generator = generate.make_generator(prior, tokenizer, decoding)
    params = sharding.replicate(state.model_variables(), mesh)
    tokenizer_variables = sharding.replicate(tokenizer_variables, mesh)
    class_ids = (np.arange(num_samples) % dataset.num_classes).astype(np.int32)
    ids = sharding.shard_batch({"y": class_ids}, mesh)["y"]
    scale = jnp.float32(config.sampling.guidance_scale) if two_passes else None
    keys = [jax.random.key(i) for i in range(common.NUM_BATCHES)]
    outputs: dict[str, jax.Array] = {}

    def make_call(compiled: Any) -> Any:
        cycle = itertools.cycle(keys)

        def call() -> jax.Array:
            outputs["series"] = compiled(params, tokenizer_variables, ids, next(cycle), scale)
            return outputs["series"]

        return call

    def check() -> None:
        if not np.all(np.isfinite(np.asarray(outputs["series"]))):
            raise FloatingPointError("generated series hold NaN or inf")

    tokens = sharding.shard_batch(
        {"tokens": np.zeros((num_samples, prior.num_tokens), np.int32)}, mesh
    )["tokens"]
    decoder = jax.jit(functools.partial(tokenizer.apply, method="decode_tokens"))
    decoder_flops = common.analysed_flops(decoder.lower(tokenizer_variables, tokens).compile())

    def total_flops(compiled: Any) -> float:
        """Decoder + T decoding steps: XLA counts the decoding loop's body once (the loops that
        the random-number generator may add inside it do integer work only)."""
        step_flops = common.analysed_flops(compiled) - decoder_flops
        return decoder_flops + decoding.num_steps * step_flops

    info = {
        "dataset": dataset.name,
        "method": METHOD,
        "variant": prior.variant,
        "prior_passes": 2 if two_passes else 1,
        "decode_steps": decoding.num_steps,
        "batch": num_samples,
        "params": train_state.count_params(state.params),
    }
    return common.Case(
        info,
        num_samples,
        generator,
        (params, tokenizer_variables, ids, keys[0], scale),
        make_call,
        check,
        total_flops,
    )
