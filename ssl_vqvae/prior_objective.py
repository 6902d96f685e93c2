"""The prior's training objective (SPEC §4.1, §4.4): token targets from the frozen tokenizer
and the masked-token cross-entropy; shared by the stage-2 step and its evaluation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl_vqvae import sampling
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE


def tokenize(
    tokenizer: VQVAE, variables: Any, x: jax.Array, temperature: float, rng: jax.Array
) -> jax.Array:
    """Training targets: stochastic (temperature > 0) or argmax codes of series [B, L, C]."""
    return tokenizer.apply(
        variables,
        x,
        temperature if temperature > 0 else None,
        method="tokenize",
        rngs={"sample": rng},
    )


def prior_loss(
    prior: MaskGITTransformer,
    params: Any,
    tokens: jax.Array,
    class_ids: jax.Array,
    rng: jax.Array,
    convention: str,
    *,
    train: bool,
) -> jax.Array:
    """Masked-token cross-entropy per sample (SPEC §4.4): float32 [B]."""
    mask_rng, dropout_rng = jax.random.split(rng)
    mask = sampling.sample_training_mask(mask_rng, tokens.shape[0], tokens.shape[1], convention)
    inputs = jnp.where(mask, prior.codebook_size, tokens)
    logits = prior.apply(
        {"params": params}, inputs, class_ids, train=train, rngs={"dropout": dropout_rng}
    )
    per_sample = jax.vmap(
        lambda lg, tg, mk: sampling.masked_token_loss(lg[None], tg[None], mk[None], convention)
    )
    return per_sample(logits, tokens, mask)
