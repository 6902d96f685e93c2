"""Stage 2 on a two-branch (LF/HF) tokenizer: TimeVQVAE's LF prior and HF prior.

What differs from the single prior of `stage2`: the model (`branch_prior.TwoBranchPrior`, whose
HF prior holds BatchNorm statistics), the objective (`two_branch_objective`: masked-token
cross-entropy of each branch on its masked positions, summed; the class is dropped inside each
prior, as the release does) and the initial state (no codebook-initialised embeddings).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssl_vqvae import train_state
from ssl_vqvae.branch_prior import TwoBranchPrior
from ssl_vqvae.prior_objective import tokenize
from ssl_vqvae.settings import PriorSettings
from ssl_vqvae.two_branch import TwoBranchVQVAE
from ssl_vqvae.two_branch_objective import two_branch_prior_loss


def build_prior(
    settings: PriorSettings, tokenizer: TwoBranchVQVAE, num_classes: int
) -> TwoBranchPrior:
    """The LF and HF priors over `tokenizer`'s token grids."""
    num_lf, num_hf = tokenizer.num_tokens
    return TwoBranchPrior(
        num_tokens_lf=num_lf,
        num_tokens_hf=num_hf,
        codebook_size_lf=tokenizer.lf_codebook_size,
        codebook_size_hf=tokenizer.hf_codebook_size,
        num_classes=num_classes,
        embed_dim=settings.embed_dim,
        lf_hidden_dim=settings.hidden_dim,
        lf_n_layers=settings.depth,
        lf_heads=settings.num_heads,
        lf_ff_mult=settings.ff_mult,
        hf_hidden_dim=settings.hf_hidden_dim,
        hf_n_layers=settings.hf_depth,
        hf_heads=settings.hf_num_heads,
        hf_ff_mult=settings.ff_mult,
        emb_dropout=settings.dropout_rate,
        p_unconditional=settings.p_unconditional,
    )


def split_tokens(tokenizer: TwoBranchVQVAE, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, N_LF + N_HF] -> (LF ids [B, N_LF], HF ids [B, N_HF])."""
    num_lf, _ = tokenizer.num_tokens
    return tokens[:, :num_lf], tokens[:, num_lf:]


def make_loss_fn(
    prior: TwoBranchPrior, tokenizer: TwoBranchVQVAE, settings: PriorSettings
) -> train_state.LossFn:
    """`loss_fn(params, variables, batch, rng, tokenizer_variables)` of both priors."""

    def loss_fn(params, variables, batch, rng, tokenizer_variables):
        token_rng, loss_rng = jax.random.split(rng)
        tokens = tokenize(
            tokenizer, tokenizer_variables, batch["x"], settings.token_sample_temperature, token_rng
        )
        tokens_lf, tokens_hf = split_tokens(tokenizer, tokens)
        loss, metrics, batch_stats = two_branch_prior_loss(
            prior,
            {"params": params, **variables},
            tokens_lf,
            tokens_hf,
            batch["y"],
            loss_rng,
            train=True,
        )
        return loss, (metrics, {**variables, "batch_stats": batch_stats})

    return loss_fn


def make_eval_losses(prior: TwoBranchPrior, tokenizer: TwoBranchVQVAE, temperature: float):
    """`eval_losses(prior_variables, tokenizer_variables, x, y, rng) -> float32 [B]`: the
    batch's loss (pooled over its masked positions, as in training) on every row."""

    def eval_losses(prior_variables, tokenizer_variables, x, y, rng):
        token_rng, loss_rng = jax.random.split(rng)
        tokens = tokenize(tokenizer, tokenizer_variables, x, temperature, token_rng)
        loss, _, _ = two_branch_prior_loss(
            prior, prior_variables, *split_tokens(tokenizer, tokens), y, loss_rng, train=False
        )
        return jnp.full((x.shape[0],), loss)

    return eval_losses


def init_prior(prior: TwoBranchPrior, optimizer: Any):
    """`init(rng) -> TrainState` of freshly initialised priors."""

    def init(rng: jax.Array) -> train_state.TrainState:
        tokens_lf = jnp.zeros((2, prior.num_tokens_lf), jnp.int32)
        tokens_hf = jnp.zeros((2, prior.num_tokens_hf), jnp.int32)
        class_ids = jnp.zeros((2,), jnp.int32)
        variables = prior.init(rng, tokens_lf, tokens_hf, class_ids, train=False)
        return train_state.create_train_state(dict(variables), optimizer)

    return init
