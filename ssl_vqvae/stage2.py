"""Stage 2: train the MaskGIT prior over the frozen tokenizer's token ids (SPEC §4)."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from ssl_vqvae import (
    config_lib,
    generate,
    layout,
    pipeline,
    plots,
    sampling,
    sharding,
    stage1,
    training,
    validation,
)
from ssl_vqvae.data import Split, UCRDataset
from ssl_vqvae.errors import UserError
from ssl_vqvae.transformer import MaskGITTransformer, init_embeddings_from_codebook
from ssl_vqvae.vqvae import VQVAE

STAGE = "stage2"
SAMPLES_PER_CLASS_PLOTTED = 2


def resolve_variant(config: ml_collections.ConfigDict, ssl_method: str) -> str:
    """The thesis pairs the baseline with the token-index prior and SSL with full-embedding."""
    variant = config.prior.variant
    if variant not in config_lib.PRIOR_VARIANTS:
        raise ValueError(f"prior.variant={variant!r}; expected one of {config_lib.PRIOR_VARIANTS}")
    if variant == "auto":
        return "token_index" if ssl_method == "none" else "full_embedding"
    return variant


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
    config: ml_collections.ConfigDict, tokenizer: VQVAE, num_classes: int, variant: str
) -> MaskGITTransformer:
    height, width = tokenizer.token_grid
    return MaskGITTransformer(
        codebook_size=tokenizer.codebook_size,
        num_tokens=height * width,
        num_classes=num_classes,
        variant=variant,
        embed_dim=tokenizer.hidden_dim,
        hidden_dim=config.prior.hidden_dim,
        depth=config.prior.depth,
        num_heads=config.prior.num_heads,
        head_dim=config.prior.head_dim,
        mlp_dim=config.prior.mlp_dim,
        dropout_rate=config.prior.dropout_rate,
        param_init=config.prior.init,
    )


def tokenize(
    tokenizer: VQVAE, variables: Any, x: jax.Array, temperature: float, rng: jax.Array
) -> jax.Array:
    """Training targets: stochastic (temperature > 0) or argmax codes of series [B, L, C]."""
    return tokenizer.apply(
        variables,
        x,
        temperature if temperature > 0 else None,
        method=VQVAE.tokenize,
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


def make_train_step(
    prior: MaskGITTransformer,
    tokenizer: VQVAE,
    optimizer: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    convention: str,
):
    """`(state, batch, rng, tokenizer_variables) -> (state, metrics)`."""
    temperature = config.prior.token_sample_temperature
    p_unconditional = config.prior.p_unconditional

    def train_step(state, batch, rng, tokenizer_variables):
        rng = jax.random.fold_in(rng, state.step)
        token_rng, class_rng, loss_rng = jax.random.split(rng, 3)
        tokens = tokenize(tokenizer, tokenizer_variables, batch["x"], temperature, token_rng)
        drop = jax.random.bernoulli(class_rng, p_unconditional, batch["y"].shape)
        class_ids = jnp.where(drop, prior.num_classes, batch["y"])

        def loss_fn(params):
            losses = prior_loss(prior, params, tokens, class_ids, loss_rng, convention, train=True)
            return jnp.mean(losses)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def init_state(
    prior: MaskGITTransformer,
    optimizer: optax.GradientTransformation,
    codebook: jax.Array,
    rng: jax.Array,
) -> training.TrainState:
    """Fresh prior parameters with the token embedding set to the stage-1 codebook."""

    def init(rng, codebook):
        tokens = jnp.zeros((1, prior.num_tokens), jnp.int32)
        params = prior.init(rng, tokens, jnp.zeros((1,), jnp.int32), train=False)["params"]
        params = init_embeddings_from_codebook(params, codebook, prior.variant)
        return training.create_train_state(params, {}, optimizer)

    return jax.jit(init)(rng, codebook)


def resolve_stage1_dir(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    """The tokenizer's folder: `config.stage1_workdir` if set, else this experiment's."""
    return layout.stage_dir(config.stage1_workdir or workdir, stage1.STAGE)


class Stage2Evaluator:
    """Validation loss on the test split and a plot of class-conditional samples."""

    def __init__(
        self,
        prior,
        tokenizer,
        tokenizer_variables,
        dataset,
        config,
        convention,
        run_dir,
        eval_batch_size,
        mesh,
    ):
        self.prior, self.dataset, self.config = prior, dataset, config
        self.tokenizer_variables = tokenizer_variables
        self.run_dir, self.batch_size, self.mesh = run_dir, eval_batch_size, mesh
        temperature = config.prior.token_sample_temperature

        def eval_losses(params, tokenizer_variables, x, y, rng):
            token_rng, loss_rng = jax.random.split(rng)
            tokens = tokenize(tokenizer, tokenizer_variables, x, temperature, token_rng)
            return prior_loss(prior, params, tokens, y, loss_rng, convention, train=False)

        self.eval_losses = jax.jit(eval_losses)
        self.generate = generate.make_generator(prior, tokenizer, decoding_config(config))

    def __call__(self, state: training.TrainState, step: int) -> dict[str, float]:
        rng = jax.random.key(step)
        losses = []
        for index, (batch, num_valid) in enumerate(
            pipeline.padded_batches(self.dataset.test, self.batch_size)
        ):
            batch = sharding.shard_batch(batch, self.mesh)
            batch_losses = self.eval_losses(
                state.params,
                self.tokenizer_variables,
                batch["x"],
                batch["y"],
                jax.random.fold_in(rng, index),
            )
            losses.append(np.asarray(batch_losses)[:num_valid])
        self._plot(state, step)
        return {"loss": float(np.mean(np.concatenate(losses)))}

    def _plot(self, state: training.TrainState, step: int) -> None:
        num_classes = self.dataset.num_classes
        class_ids = np.repeat(np.arange(num_classes), SAMPLES_PER_CLASS_PLOTTED)
        samples = generate.generate_in_batches(
            self.generate,
            state.params,
            self.tokenizer_variables,
            class_ids,
            jax.random.key(step),
            self.config.sampling.guidance_scale,
            generate.generation_batch_size(len(class_ids), self.mesh.size),
            self.mesh,
        )
        rows = []
        for label in range(min(num_classes, 4)):
            rows.append((f"real {label}", self.dataset.test.x[self.dataset.test.y == label]))
            rows.append((f"generated {label}", samples[class_ids == label]))
        plots.plot_series_rows(
            self.run_dir / "plots" / f"samples_{step:07d}.png",
            rows,
            title=f"{self.dataset.name}: class-conditional samples, step {step}",
            max_columns=2,
        )


def decoding_config(
    config: ml_collections.ConfigDict, mask_unused_codes: bool | None = None
) -> generate.DecodingConfig:
    """Decoding settings of a stage-2 run's config.

    `mask_unused_codes` overrides `sampling.mask_unused_codes`; when on, only the codes of the
    run's recorded `code_usage` (see `code_usage`) may be sampled.
    """
    if mask_unused_codes is None:
        mask_unused_codes = config.sampling.mask_unused_codes
    allowed = None
    if mask_unused_codes:
        if "code_usage" not in config:
            raise UserError(
                "mask_unused_codes needs the stage-2 config's code_usage, which this config does "
                "not record (a run trained before it existed?); retrain stage 2"
            )
        allowed = tuple(int(k) for k in np.flatnonzero(np.asarray(config.code_usage) > 0))
    return generate.DecodingConfig(
        num_steps=config.sampling.num_steps,
        choice_temperature=config.sampling.choice_temperature,
        allowed_codes=allowed,
    )


def code_usage(
    tokenizer: VQVAE, tokenizer_variables: Any, split: Split, batch_size: int, mesh: Mesh
) -> np.ndarray:
    """How often each code is the nearest code of a latent vector of `split`: int64 [K].

    The nearest (argmax) assignment rather than the stochastic targets, so the set is
    reproducible; codes it never picks (e.g. dead codes, SPEC §7.11) are what
    `sampling.mask_unused_codes` keeps the prior from sampling.
    """
    tokenize_fn = jax.jit(functools.partial(tokenizer.apply, method=VQVAE.tokenize))
    tokens = stage1.apply_in_batches(tokenize_fn, tokenizer_variables, split, batch_size, mesh)
    return np.bincount(tokens.ravel(), minlength=tokenizer.codebook_size)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> training.TrainState:
    """Trains the prior into `<workdir>/stage2` (resuming if a checkpoint exists).

    Bad config values, a missing stage 1 and a stage-2 folder of another run (or of another
    stage-1 run) fail with a `UserError` before anything is compiled or written; `overwrite`
    moves an existing `stage2/` aside first (see `layout.check_run_dir`).
    """
    validation.validate_stage2(config)
    run = layout.check_run_dir(workdir, STAGE, config, overwrite)
    run_dir = run.run_dir
    stage1_dir = resolve_stage1_dir(config, workdir)
    stage1_config = layout.read_config(stage1_dir)
    if run.stored is not None:
        layout.check_lineage(
            run.stored,
            stage1_config,
            run_dir,
            "pass --overwrite to move it aside and train stage 2 on the new tokenizer",
        )
    mesh = sharding.make_mesh()
    tokenizer, tokenizer_variables, stage1_config, dataset = stage1.restore_tokenizer(
        stage1_dir, mesh
    )
    variant = resolve_variant(config, stage1_config.ssl.method)
    convention = masking_convention(config.prior.masking, variant)
    prior = build_prior(config, tokenizer, dataset.num_classes, variant)

    batch_size = pipeline.global_batch_size(config.data.batch_size, len(dataset.train), mesh.size)
    eval_batch_size = layout.batch_sizes(config, dataset, mesh.size)[1]
    batches = pipeline.BatchIterator(dataset.train, batch_size, config.seed)
    schedule = layout.Schedule(config.train, batches.steps_per_epoch, config.optim.learning_rate)
    usage = code_usage(tokenizer, tokenizer_variables, dataset.train, eval_batch_size, mesh)
    layout.set_resolved(
        config,
        run_id=layout.begin_run(run, STAGE),
        resolved_variant=variant,
        stage1_dir=str(stage1_dir),
        stage1_run_id=stage1_config.get("run_id"),
        code_usage=usage.tolist(),  # nearest-code histogram of the train split
    )
    layout.write_config(config, run_dir)

    optimizer = training.make_optimizer(schedule.learning_rate, config.optim.weight_decay)
    codebook = tokenizer.apply(tokenizer_variables, method=VQVAE.codebook)
    rng = jax.random.key(config.seed)
    state = init_state(prior, optimizer, codebook, rng)
    print(
        f"[stage2] {dataset.name}: {variant} prior, {training.count_params(state.params):,} params,"
        f" {prior.num_tokens} tokens x {prior.codebook_size} codes, masking={convention}; "
        f"batch {batch_size} on {mesh.size} device(s); {schedule.num_steps} steps"
    )
    step_fn = training.compile_step(
        make_train_step(prior, tokenizer, optimizer, config, convention), mesh, tokenizer_variables
    )
    evaluator = Stage2Evaluator(
        prior,
        tokenizer,
        sharding.replicate(tokenizer_variables, mesh),
        dataset,
        config,
        convention,
        run_dir,
        eval_batch_size,
        mesh,
    )
    return training.fit(
        workdir=run_dir,
        state=state,
        train_step=step_fn,
        batches=batches,
        mesh=mesh,
        rng=jax.random.fold_in(rng, 2),
        loop=schedule.loop_config(config.train, STAGE),
        evaluate=evaluator,
    )


def restore_prior(
    stage2_dir: pathlib.Path, mesh: jax.sharding.Mesh
) -> tuple[MaskGITTransformer, Any, ml_collections.ConfigDict, VQVAE, Any, UCRDataset]:
    """Loads a trained experiment: (prior, prior params, stage-2 config, tokenizer, its
    variables, dataset)."""
    config = layout.read_config(stage2_dir)
    tokenizer, tokenizer_variables, _, dataset = stage1.restore_tokenizer(
        pathlib.Path(config.stage1_dir), mesh
    )
    prior = build_prior(config, tokenizer, dataset.num_classes, config.resolved_variant)
    optimizer = training.make_optimizer(
        optax.constant_schedule(config.optim.learning_rate), config.optim.weight_decay
    )
    codebook = tokenizer.apply(tokenizer_variables, method=VQVAE.codebook)
    abstract = jax.eval_shape(
        lambda rng: init_state(prior, optimizer, codebook, rng), jax.random.key(0)
    )
    state = training.restore_state(stage2_dir, abstract, mesh)
    return prior, state.params, config, tokenizer, tokenizer_variables, dataset
