"""Training objective and iterative decoding of the two-branch (LF/HF) prior, as the
`timevqvae` 1.0.1 release (`maskgit.py`), as plain jnp functions over a `TwoBranchPrior`.

Training: each branch's ids are masked independently, every sample with its own ratio; the LF
prior sees masked LF ids, the HF prior the TRUE LF ids and masked HF ids; each branch's
cross-entropy averages over all masked positions of the batch; the loss is their sum.
Decoding: MaskGIT decoding of the LF ids (`sampling.decode_loop`), then of the HF ids given the
decoded LF ids.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl_vqvae import sampling
from ssl_vqvae.branch_prior import TwoBranchPrior


def release_training_mask(rng: jax.Array, batch: int, num_tokens: int) -> jax.Array:
    """bool [batch, num_tokens], True = masked.

    Per sample r ~ U(0, 1) and `floor(cos(pi r / 2) N)` known positions, clipped to [0, N - 1]
    (so 1..N positions are masked), the known ones uniformly at random. The ratio keys come from
    the first key of `jax.random.split(rng)`, the positions from the second.
    """
    ratio_rng, position_rng = jax.random.split(rng)
    ratios = jax.random.uniform(ratio_rng, (batch,))
    count = sampling.masked_count(ratios, num_tokens, sampling.MaskingConvention.THESIS_KEEP)
    return sampling.mask_from_count(position_rng, batch, num_tokens, jnp.maximum(count, 1))


def _masked_ce(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    return sampling.masked_token_loss(logits, targets, mask, sampling.MaskingConvention.STANDARD)


def two_branch_prior_loss(
    prior: TwoBranchPrior,
    variables: Any,
    tokens_lf: jax.Array,
    tokens_hf: jax.Array,
    class_ids: jax.Array,
    rng: jax.Array,
    *,
    train: bool,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """Masked-token loss CE_lf + CE_hf: (float32 scalar, {"loss_lf", "loss_hf"}, batch_stats).

    tokens_lf: int32 [B, num_tokens_lf]; tokens_hf: int32 [B, num_tokens_hf]; class_ids: int32
    [B] (num_classes = unconditional). `variables` holds 'params' and 'batch_stats'; the returned
    batch_stats are updated in train mode (the HF BatchNorm) and unchanged otherwise.
    """
    mask_lf_rng, mask_hf_rng, dropout_lf, dropout_hf = jax.random.split(rng, 4)
    mask_lf = release_training_mask(mask_lf_rng, *tokens_lf.shape)
    mask_hf = release_training_mask(mask_hf_rng, *tokens_hf.shape)
    inputs_lf = jnp.where(mask_lf, prior.codebook_size_lf, tokens_lf)
    inputs_hf = jnp.where(mask_hf, prior.codebook_size_hf, tokens_hf)
    logits_lf = prior.apply(
        variables,
        inputs_lf,
        class_ids,
        train=train,
        method="lf_logits",
        rngs={"dropout": dropout_lf},
    )
    hf_out = prior.apply(
        variables,
        tokens_lf,
        inputs_hf,
        class_ids,
        train=train,
        method="hf_logits",
        rngs={"dropout": dropout_hf},
        mutable=["batch_stats"] if train else False,
    )
    if train:
        logits_hf, updates = hf_out
        batch_stats = updates["batch_stats"]
    else:
        logits_hf, batch_stats = hf_out, variables["batch_stats"]
    loss_lf = _masked_ce(logits_lf, tokens_lf, mask_lf)
    loss_hf = _masked_ce(logits_hf, tokens_hf, mask_hf)
    return loss_lf + loss_hf, {"loss_lf": loss_lf, "loss_hf": loss_hf}, batch_stats


def two_branch_decode(
    prior: TwoBranchPrior,
    variables: Any,
    class_ids: jax.Array,
    *,
    rng: jax.Array,
    lf_steps: int,
    hf_steps: int,
    lf_choice_temperature: float,
    hf_choice_temperature: float,
    guidance_scale: jax.Array | float | None,
    sample_temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Samples (tokens_lf int32 [B, num_tokens_lf], tokens_hf int32 [B, num_tokens_hf]).

    class_ids: int32 [B], `prior.num_classes` = unconditional. `guidance_scale=None` uses the
    conditional logits only (the release's scale 1), a number `l_null + s (l_cond - l_null)`.
    The prior runs in eval mode. The LF pass uses the first key of `jax.random.split(rng)`, the
    HF pass the second.
    """
    lf_rng, hf_rng = jax.random.split(rng)

    def lf_logits(tokens: jax.Array, ids: jax.Array) -> jax.Array:
        return prior.apply(variables, tokens, ids, train=False, method="lf_logits")

    tokens_lf = sampling.iterative_decode(
        lf_logits,
        class_ids,
        num_tokens=prior.num_tokens_lf,
        codebook_size=prior.codebook_size_lf,
        num_steps=lf_steps,
        choice_temperature=lf_choice_temperature,
        guidance_scale=guidance_scale,
        null_class=prior.num_classes,
        rng=lf_rng,
        sample_temperature=sample_temperature,
    )

    # The LF ids are fixed during the HF pass: their upscaled embeddings are computed once.
    context = prior.apply(variables, tokens_lf, class_ids, method="hf_context")

    def hf_logits(tokens: jax.Array, ids: jax.Array) -> jax.Array:
        # Guidance doubles the batch ([cond; null]); the LF ids and context are repeated.
        repeats = tokens.shape[0] // tokens_lf.shape[0]
        lf = jnp.tile(tokens_lf, (repeats, 1))
        return prior.apply(
            variables,
            lf,
            tokens,
            ids,
            train=False,
            lf_context=jnp.tile(context, (repeats, 1, 1)),
            method="hf_logits",
        )

    tokens_hf = sampling.iterative_decode(
        hf_logits,
        class_ids,
        num_tokens=prior.num_tokens_hf,
        codebook_size=prior.codebook_size_hf,
        num_steps=hf_steps,
        choice_temperature=hf_choice_temperature,
        guidance_scale=guidance_scale,
        null_class=prior.num_classes,
        rng=hf_rng,
        sample_temperature=sample_temperature,
    )
    return tokens_lf, tokens_hf
