"""Stage 1: train the (self-supervised) VQ tokenizer (SPEC §2.6, §2.7, §3).

This module supplies what is specific to the tokenizer (model, loss, evaluator); the loop is
`stage_run`'s. Nothing outside the trainers imports it: a trained tokenizer is loaded with
`artifacts.load_model`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ssl_vqvae import augment, layout, ssl, stage_run, train_state, validation
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.settings import SSLSettings, Stage1Settings
from ssl_vqvae.stage1_eval import Stage1Evaluator, reference_probe_pass
from ssl_vqvae.two_branch import TwoBranchVQVAE
from ssl_vqvae.vqvae import MUTABLE_COLLECTIONS, VQVAE

STAGE = "stage1"


def build_model(settings: Stage1Settings, length: int, channels: int) -> VQVAE | TwoBranchVQVAE:
    """The tokenizer described by stage-1 settings, for series of `length` x `channels`."""
    config = settings
    method = config.ssl.method
    if config.model.split == "lfhf":
        return build_two_branch(settings, length, channels)
    return VQVAE(
        length=length,
        channels=channels,
        n_fft=config.model.n_fft,
        hidden_dim=config.model.hidden_dim,
        num_res_blocks=config.model.num_res_blocks,
        downsampled_width=config.model.downsampled_width,
        dropout_rate=config.model.dropout_rate,
        codebook_size=config.model.codebook_size,
        ema_decay=config.model.ema_decay,
        commitment_weight=config.model.commitment_weight,
        dead_code=config.model.dead_code,
        projector_hidden_dim=config.ssl.projector_hidden_dim,
        projector_output_dim=0 if method == "none" else config.ssl.projector_output_dim,
        use_iternorm=method == "vibcreg",
        iternorm_groups=config.ssl.iternorm_groups,
        param_init=config.model.init,
        dtype=config.model.dtype,
    )


def build_two_branch(settings: Stage1Settings, length: int, channels: int) -> TwoBranchVQVAE:
    """TimeVQVAE's LF/HF tokenizer (`model.split = "lfhf"`) described by stage-1 settings."""
    model, ssl_settings = settings.model, settings.ssl
    return TwoBranchVQVAE(
        length=length,
        channels=channels,
        codec=model.codec,
        n_fft=model.n_fft,
        window=model.stft_window,
        normalized=model.stft_normalized,
        hidden_dim=model.hidden_dim,
        num_res_blocks=model.num_res_blocks,
        init_dim=model.init_dim,
        lf_downsampled_width=model.downsampled_width,
        hf_downsampled_width=model.hf_downsampled_width,
        dropout_rate=model.dropout_rate,
        lf_codebook_size=model.codebook_size,
        hf_codebook_size=model.hf_codebook_size,
        codebook_dim=model.codebook_dim or model.hidden_dim,
        kmeans_init=model.kmeans_init,
        ema_decay=model.ema_decay,
        commitment_weight=model.commitment_weight,
        dead_code=model.dead_code,
        projector_hidden_dim=ssl_settings.projector_hidden_dim,
        projector_output_dim=0
        if ssl_settings.method == "none"
        else ssl_settings.projector_output_dim,
        use_iternorm=ssl_settings.method == "vibcreg",
        iternorm_groups=ssl_settings.iternorm_groups,
        param_init=model.init,
        dtype=model.dtype,
    )


def cropped_mse(target: jax.Array, prediction: jax.Array) -> jax.Array:
    """Mean squared error after cropping both series to the shorter length (SPEC §2.1)."""
    length = min(target.shape[1], prediction.shape[1])
    return jnp.mean((target[:, :length] - prediction[:, :length]) ** 2)


def ssl_loss(
    config: SSLSettings, proj: jax.Array, proj_aug: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_SSL between the projected views for `config.method` (SPEC §3.4, §3.5)."""
    if config.method == "barlowtwins":
        loss = config.barlow_weight * ssl.barlow_twins_loss(
            proj, proj_aug, config.barlow_off_diagonal_weight
        )
        return loss, {}
    if config.method != "vibcreg":
        raise ValueError(
            f"ssl.method={config.method!r} has no SSL loss; expected 'barlowtwins' or 'vibcreg'"
        )
    loss, terms = ssl.vibcreg_loss(
        proj,
        proj_aug,
        config.vibcreg_invariance_weight,
        config.vibcreg_variance_weight,
        config.vibcreg_covariance_weight,
        config.vibcreg_loss_scale,
    )
    return loss, {f"vibcreg_{name}": value for name, value in terms.items()}


def stage1_loss(
    config: SSLSettings, outputs: dict[str, Any], x: jax.Array, x_aug: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total stage-1 loss and its terms (SPEC §2.6); `config` is the `ssl` section."""
    vq = outputs["vq"]
    metrics = {
        "time_mse": cropped_mse(x, outputs["x_hat"]),
        "tf_mse": jnp.mean((outputs["u"] - outputs["u_hat"]) ** 2),
        "commit_loss": vq.commit_loss,
        "perplexity": vq.perplexity,
        "codebook_usage": vq.usage,
    }
    loss = metrics["time_mse"] + metrics["tf_mse"] + vq.commit_loss
    if "proj" in outputs:
        metrics["aug_time_mse"] = cropped_mse(x_aug, outputs["x_aug_hat"])
        metrics["aug_tf_mse"] = jnp.mean((outputs["u_aug"] - outputs["u_aug_hat"]) ** 2)
        metrics["ssl_loss"], terms = ssl_loss(config, outputs["proj"], outputs["proj_aug"])
        metrics.update(terms)
        loss += config.aug_recon_weight * (metrics["aug_time_mse"] + metrics["aug_tf_mse"])
        loss += metrics["ssl_loss"]
    metrics["loss"] = loss
    return loss, metrics


def band_losses(codec: str, kind: str, band: dict[str, Any]) -> dict[str, jax.Array]:
    """Reconstruction terms of one band of a two-branch tokenizer (TimeVQVAE's choices): time
    MSE for LF and L1 for HF; the 2023 model (codec "ncvqvae") adds the time-frequency MSE."""
    length = min(band["x"].shape[1], band["x_hat"].shape[1])
    error = band["x"][:, :length] - band["x_hat"][:, :length]
    terms = {"time": jnp.mean(error**2) if kind == "lf" else jnp.mean(jnp.abs(error))}
    if codec == "ncvqvae":
        terms["tf_mse"] = jnp.mean((band["u"] - band["u_hat"]) ** 2)
    return terms


def two_branch_loss(
    config: SSLSettings, codec: str, outputs: dict[str, Any]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total stage-1 loss of a two-branch tokenizer and its terms: both bands' reconstruction
    and commitment, and with SSL the augmented view's reconstruction and L_SSL (as NC-VQVAE)."""
    metrics: dict[str, jax.Array] = {}
    loss = jnp.zeros((), jnp.float32)
    for kind in ("lf", "hf"):
        vq = outputs[kind]["vq"]
        terms = band_losses(codec, kind, outputs[kind])
        metrics.update({f"{kind}_{name}": value for name, value in terms.items()})
        metrics.update(
            {
                f"{kind}_commit_loss": vq.commit_loss,
                f"{kind}_perplexity": vq.perplexity,
                f"{kind}_codebook_usage": vq.usage,
            }
        )
        loss += sum(terms.values()) + vq.commit_loss
        if "proj" in outputs:
            aug_terms = band_losses(codec, kind, outputs[f"aug_{kind}"])
            metrics.update({f"aug_{kind}_{name}": value for name, value in aug_terms.items()})
            loss += config.aug_recon_weight * sum(aug_terms.values())
    if "proj" in outputs:
        metrics["ssl_loss"], terms = ssl_loss(config, outputs["proj"], outputs["proj_aug"])
        metrics.update(terms)
        loss += metrics["ssl_loss"]
    metrics["loss"] = loss
    return loss, metrics


def make_loss_fn(model: VQVAE | TwoBranchVQVAE, ssl_settings: SSLSettings) -> train_state.LossFn:
    """`loss_fn(params, variables, batch, rng)` of the tokenizer, in train mode."""

    def loss_fn(params, variables, batch, rng):
        x_aug = batch.get("x_aug")
        outputs, new_variables = model.apply(
            {"params": params, **variables},
            batch["x"],
            x_aug,
            train=True,
            mutable=list(MUTABLE_COLLECTIONS),
            rngs={"dropout": rng},
        )
        if isinstance(model, TwoBranchVQVAE):
            loss, metrics = two_branch_loss(ssl_settings, model.codec, outputs)
        else:
            loss, metrics = stage1_loss(ssl_settings, outputs, batch["x"], x_aug)
        return loss, (metrics, new_variables)

    return loss_fn


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> train_state.TrainState:
    """Trains the tokenizer into `<workdir>/stage1` (resuming if a checkpoint exists).

    Bad config values, data files and workdirs fail with a `UserError` before anything is
    compiled or written; `overwrite` moves an existing `stage1/` aside first (see
    `layout.check_run_dir`).
    """
    settings = validation.validate(config)
    dataset = layout.load_dataset(settings.data)
    validation.check_series_length(settings.model, dataset.name, dataset.length)
    augmentations = (
        ()
        if settings.ssl.method == "none"
        else augment.resolve_augmentations(settings.ssl.augmentations)
    )
    run = stage_run.prepare(
        STAGE, config, settings, workdir, overwrite, dataset.train, augmentations
    )
    run.begin(config)
    model = build_model(settings, dataset.length, dataset.channels)
    example = jax.ShapeDtypeStruct((1, dataset.length, dataset.channels), jnp.float32)
    init = train_state.module_init(model, run.optimizer, example, train=False)
    num_params = train_state.count_params(jax.eval_shape(init, run.rng).params)
    print(
        f"[stage1] {dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test series "
        f"of length {dataset.length}; ssl={settings.ssl.method}; {num_params:,} params; "
        f"{_tokens_text(model)}; batch {run.batches.batch_size} on {run.mesh.size} "
        f"device(s); {run.schedule.num_steps} steps"
    )
    finalize = None
    if settings.train.reference_probe_pass:
        finalize = functools.partial(
            reference_probe_pass,
            model,
            dataset=dataset,
            batch_size=run.batches.batch_size,
            rng=jax.random.fold_in(run.rng, 2),
            mesh=run.mesh,
        )
    return run.fit(
        spec=ModelSpec.of(model, DataInfo.of(dataset)),
        init=init,
        loss_fn=make_loss_fn(model, settings.ssl),
        evaluate=Stage1Evaluator(
            model,
            dataset,
            settings,
            run.run_dir,
            run.eval_batch_size,
            run.mesh,
            run.schedule.num_steps,
        ),
        finalize=finalize,
    )


def _tokens_text(model: VQVAE | TwoBranchVQVAE) -> str:
    if isinstance(model, TwoBranchVQVAE):
        return f"LF token grid {model.grid('lf')}, HF token grid {model.grid('hf')}"
    return f"token grid {model.token_grid}"
