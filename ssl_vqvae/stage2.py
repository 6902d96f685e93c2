"""Stage 2: train the MaskGIT prior over the frozen tokenizer's token ids (SPEC §4).

This module supplies what is specific to the prior (model, loss, evaluator); the loop is
`stage_run`'s. The tokenizer is read with `artifacts.load_model`; nothing outside the trainers
imports this module.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ssl_vqvae import (
    artifacts,
    config_lib,
    inference,
    layout,
    sampling,
    stage2_two_branch,
    stage_run,
    train_state,
    validation,
)
from ssl_vqvae.artifacts import ModelSpec
from ssl_vqvae.errors import UserError
from ssl_vqvae.prior_objective import prior_loss, tokenize
from ssl_vqvae.settings import PriorSettings, Stage2Settings
from ssl_vqvae.stage2_eval import Stage2Evaluator
from ssl_vqvae.transformer import MaskGITTransformer, init_embeddings_from_codebook
from ssl_vqvae.vqvae import VQVAE

STAGE = "stage2"


def resolve_variant(prior: PriorSettings, ssl_method: str, split: str = "none") -> str:
    """The thesis pairs the baseline with the token-index prior and SSL with full-embedding; an
    LF/HF tokenizer (split "lfhf") takes the two-branch priors, and only them."""
    if prior.variant not in config_lib.PRIOR_VARIANTS:
        raise ValueError(
            f"prior.variant={prior.variant!r}; expected one of {config_lib.PRIOR_VARIANTS}"
        )
    two_branch = split == "lfhf"
    if prior.variant == "auto":
        if two_branch:
            return "two_branch"
        return "token_index" if ssl_method == "none" else "full_embedding"
    if two_branch != (prior.variant == "two_branch"):
        raise UserError(
            f"config field prior.variant={prior.variant!r} does not fit the stage-1 tokenizer "
            f"(model.split={split!r}); expected 'auto' or "
            f"{'two_branch' if two_branch else 'token_index / full_embedding'}"
        )
    return prior.variant


def masking_convention(masking: str, variant: str) -> str:
    """Maps `prior.masking` to the training-mask convention of `sampling`."""
    if masking not in config_lib.MASKING_MODES:
        raise ValueError(f"prior.masking={masking!r}; expected one of {config_lib.MASKING_MODES}")
    if masking == "standard":
        return sampling.MaskingConvention.STANDARD
    if variant == "token_index":
        return sampling.MaskingConvention.THESIS_KEEP
    return sampling.MaskingConvention.THESIS_REPLACE


def build_prior(
    prior: PriorSettings, tokenizer: VQVAE, num_classes: int, variant: str
) -> MaskGITTransformer:
    height, width = tokenizer.token_grid
    return MaskGITTransformer(
        codebook_size=tokenizer.codebook_size,
        num_tokens=height * width,
        num_classes=num_classes,
        variant=variant,
        embed_dim=tokenizer.hidden_dim,
        hidden_dim=prior.hidden_dim,
        depth=prior.depth,
        num_heads=prior.num_heads,
        head_dim=prior.head_dim,
        mlp_dim=prior.mlp_dim,
        dropout_rate=prior.dropout_rate,
        param_init=prior.init,
        dtype=prior.dtype,
    )


def make_loss_fn(
    prior: MaskGITTransformer, tokenizer: VQVAE, settings: PriorSettings, convention: str
) -> train_state.LossFn:
    """`loss_fn(params, variables, batch, rng, tokenizer_variables)`: tokenise, drop the class
    with probability `p_unconditional` (classifier-free guidance), masked-token loss."""

    def loss_fn(params, variables, batch, rng, tokenizer_variables):
        token_rng, class_rng, loss_rng = jax.random.split(rng, 3)
        tokens = tokenize(
            tokenizer, tokenizer_variables, batch["x"], settings.token_sample_temperature, token_rng
        )
        drop = jax.random.bernoulli(class_rng, settings.p_unconditional, batch["y"].shape)
        class_ids = jnp.where(drop, prior.num_classes, batch["y"])
        losses = prior_loss(prior, params, tokens, class_ids, loss_rng, convention, train=True)
        return jnp.mean(losses), ({}, variables)

    return loss_fn


def init_prior(prior: MaskGITTransformer, optimizer: Any):
    """`init(rng, codebook) -> TrainState`: fresh prior with the stage-1 codebook as embedding."""

    def init(rng: jax.Array, codebook: jax.Array) -> train_state.TrainState:
        tokens = jnp.zeros((1, prior.num_tokens), jnp.int32)
        params = prior.init(rng, tokens, jnp.zeros((1,), jnp.int32), train=False)["params"]
        params = init_embeddings_from_codebook(params, codebook, prior.variant)
        return train_state.create_train_state({"params": params}, optimizer)

    return init


def code_usage(
    tokenizer: VQVAE, tokenizer_variables: Any, x: np.ndarray, batch_size: int, mesh: Mesh
) -> np.ndarray:
    """How often each code is the nearest code of a latent vector of series `x`: int64 [K].

    The nearest (argmax) assignment rather than the stochastic targets, so the set is
    reproducible; codes it never picks (e.g. dead codes, SPEC §7.11) are what
    `sampling.mask_unused_codes` keeps the prior from sampling.
    """
    tokenize_fn = jax.jit(functools.partial(tokenizer.apply, method="tokenize"))
    tokens = inference.apply_in_batches(tokenize_fn, tokenizer_variables, x, batch_size, mesh)
    return np.bincount(tokens.ravel(), minlength=max(size for _, size in tokenizer.token_segments))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> train_state.TrainState:
    """Trains the prior into `<workdir>/stage2` (resuming if a checkpoint exists).

    Bad config values, a missing stage 1 and a stage-2 folder of another run (or of another
    stage-1 run) fail with a `UserError` before anything is compiled or written; `overwrite`
    moves an existing `stage2/` aside first (see `layout.check_run_dir`).
    """
    settings: Stage2Settings = validation.validate(config)
    stage1_dir = layout.tokenizer_dir(workdir, {}, override=settings.stage1_workdir)
    stage1_settings = validation.validate(layout.read_config(stage1_dir))
    stage2_dir = layout.stage_dir(workdir, STAGE)
    if (stage2_dir / layout.CONFIG_FILE).is_file() and not overwrite:
        layout.check_lineage(
            layout.read_resolved(stage2_dir),
            stage1_dir,
            stage2_dir,
            "pass --overwrite to move it aside and train stage 2 on the new tokenizer",
        )
    dataset = layout.load_dataset(stage1_settings.data)
    run = stage_run.prepare(STAGE, config, settings, workdir, overwrite, dataset.train)
    tokenizer = artifacts.load_model(stage1_dir, run.mesh)
    variant = resolve_variant(
        settings.prior, stage1_settings.ssl.method, stage1_settings.model.split
    )
    convention = masking_convention(settings.prior.masking, variant)
    if variant == "two_branch":
        prior = stage2_two_branch.build_prior(settings.prior, tokenizer.module, dataset.num_classes)
    else:
        prior = build_prior(settings.prior, tokenizer.module, dataset.num_classes, variant)
    usage = code_usage(
        tokenizer.module, tokenizer.variables, dataset.train.x, run.eval_batch_size, run.mesh
    )
    run.begin(
        config,
        prior_variant=variant,
        masking_convention=str(convention),
        # "" = this workdir's stage1/, so the experiment can be moved.
        stage1_workdir=str(pathlib.Path(settings.stage1_workdir).expanduser().absolute())
        if settings.stage1_workdir
        else "",
        stage1_run_id=layout.read_resolved(stage1_dir).get("run_id"),
        code_usage=usage.tolist(),  # nearest-code histogram of the train split
    )
    if variant == "two_branch":
        init_inputs = ()
        init = stage2_two_branch.init_prior(prior, run.optimizer)
        loss_fn = stage2_two_branch.make_loss_fn(prior, tokenizer.module, settings.prior)
    else:
        init_inputs = (tokenizer.module.apply(tokenizer.variables, method="codebook"),)
        init = init_prior(prior, run.optimizer)
        loss_fn = make_loss_fn(prior, tokenizer.module, settings.prior, convention)
    num_params = train_state.count_params(jax.eval_shape(init, run.rng, *init_inputs).params)
    print(
        f"[stage2] {dataset.name}: {variant} prior, {num_params:,} params, tokens x codes "
        f"{list(tokenizer.module.token_segments)}, masking={convention}; batch "
        f"{run.batches.batch_size} on {run.mesh.size} device(s); {run.schedule.num_steps} steps"
    )
    return run.fit(
        spec=ModelSpec.of(prior, tokenizer.spec.data),
        init=init,
        init_inputs=init_inputs,
        loss_fn=loss_fn,
        frozen=(tokenizer.variables,),
        evaluate=Stage2Evaluator(
            prior,
            tokenizer.module,
            tokenizer.variables,
            dataset,
            settings,
            convention,
            run.run_dir,
            run.eval_batch_size,
            run.mesh,
            usage,
        ),
    )
