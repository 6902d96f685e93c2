"""Stage 1: train the (self-supervised) VQ tokenizer (SPEC §2.6, §2.7, §3)."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_vqvae import augment, layout, pipeline, plots, sharding, ssl, training, validation
from ssl_vqvae.data import Split, UCRDataset
from ssl_vqvae.evaluation.probes import linear_probe_accuracies
from ssl_vqvae.vqvae import MUTABLE_COLLECTIONS, VQVAE

STAGE = "stage1"


def build_model(config: ml_collections.ConfigDict, length: int, channels: int) -> VQVAE:
    """The tokenizer described by a stage-1 config, for series of `length` x `channels`."""
    method = config.ssl.method
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
    )


def cropped_mse(target: jax.Array, prediction: jax.Array) -> jax.Array:
    """Mean squared error after cropping both series to the shorter length (SPEC §2.1)."""
    length = min(target.shape[1], prediction.shape[1])
    return jnp.mean((target[:, :length] - prediction[:, :length]) ** 2)


def ssl_loss(
    config: ml_collections.ConfigDict, proj: jax.Array, proj_aug: jax.Array
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
    config: ml_collections.ConfigDict, outputs: dict[str, Any], x: jax.Array, x_aug: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total stage-1 loss and its terms (SPEC §2.6); `config` is the `ssl` sub-config."""
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


def make_train_step(
    model: VQVAE, optimizer: optax.GradientTransformation, ssl_config: ml_collections.ConfigDict
) -> training.StepFn:
    """The pure update `(state, batch, rng) -> (state, metrics)` for `model`."""

    def train_step(
        state: training.TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[training.TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(rng, state.step)
        x_aug = batch.get("x_aug")

        def loss_fn(params):
            outputs, new_variables = model.apply(
                {"params": params, **state.variables},
                batch["x"],
                x_aug,
                train=True,
                mutable=list(MUTABLE_COLLECTIONS),
                rngs={"dropout": rng},
            )
            loss, metrics = stage1_loss(ssl_config, outputs, batch["x"], x_aug)
            return loss, (metrics, new_variables)

        grads, (metrics, new_variables) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            variables=dict(new_variables),
        )
        return new_state, metrics

    return train_step


def init_state(
    model: VQVAE, optimizer: optax.GradientTransformation, example: jax.Array, rng: jax.Array
) -> training.TrainState:
    """Fresh parameters and mutable state for `model` (example: [B, L, C])."""

    def init(rng):
        variables = model.init({"params": rng}, example, train=False)
        params = variables.pop("params")
        return training.create_train_state(params, variables, optimizer)

    return jax.jit(init)(rng)


def _variables(state: training.TrainState) -> dict[str, Any]:
    return {"params": state.params, **state.variables}


def apply_in_batches(
    fn: Callable[[dict[str, Any], jax.Array], jax.Array],
    variables: dict[str, Any],
    split: Split,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> np.ndarray:
    """Runs a jitted `fn(variables, x)` over a whole split, sharded, and concatenates on host."""
    outputs = []
    for batch, num_valid in pipeline.padded_batches(split, batch_size):
        x = sharding.shard_batch({"x": batch["x"]}, mesh)["x"]
        outputs.append(np.asarray(fn(variables, x))[:num_valid])
    return np.concatenate(outputs)


class Stage1Evaluator:
    """Validation loss on the test split, reconstruction plots and linear probes."""

    def __init__(
        self,
        model: VQVAE,
        dataset: UCRDataset,
        config: ml_collections.ConfigDict,
        workdir: pathlib.Path,
        eval_batch_size: int,
        mesh: jax.sharding.Mesh,
        num_steps: int,
    ):
        self.model, self.dataset, self.config = model, dataset, config
        self.workdir, self.batch_size, self.mesh = workdir, eval_batch_size, mesh
        self.num_steps = num_steps
        self.reconstruct = jax.jit(functools.partial(model.apply, method=VQVAE.reconstruct))
        self.represent = jax.jit(functools.partial(model.apply, method=VQVAE.representation))

    def __call__(self, state: training.TrainState, step: int) -> dict[str, float]:
        variables = _variables(state)
        test = self.dataset.test
        x_hat = apply_in_batches(self.reconstruct, variables, test, self.batch_size, self.mesh)
        length = x_hat.shape[1]
        results = {"time_mse": float(np.mean((test.x[:, :length] - x_hat) ** 2))}
        if self.config.train.plot_every_eval:
            self._plot(test.x[:4], x_hat[:4], step)
        probe_every = self.config.train.probe_every
        if step == self.num_steps or (probe_every and step % probe_every == 0):
            results.update(self.probe(variables))
        return results

    def probe(self, variables: dict[str, Any]) -> dict[str, float]:
        """SVM / KNN accuracy of pooled quantised latents, in eval mode (SPEC §5.4)."""
        features = [
            apply_in_batches(self.represent, variables, split, self.batch_size, self.mesh)
            for split in (self.dataset.train, self.dataset.test)
        ]
        return linear_probe_accuracies(
            features[0], self.dataset.train.y, features[1], self.dataset.test.y
        )

    def _plot(self, x: np.ndarray, x_hat: np.ndarray, step: int) -> None:
        rows = [("original", x), ("reconstruction", x_hat)]
        if self.config.ssl.method != "none":
            names = augment.resolve_augmentations(self.config.ssl.augmentations)
            rows.append(("augmented", augment.augmented_view(x, names, np.random.default_rng(0))))
        plots.plot_series_rows(
            self.workdir / "plots" / f"reconstruction_{step:07d}.png",
            rows,
            title=f"{self.dataset.name} test series, step {step}",
        )


def reference_probe_pass(
    model: VQVAE,
    state: training.TrainState,
    *,
    dataset: UCRDataset,
    batch_size: int,
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
) -> tuple[training.TrainState, dict[str, float]]:
    """The reference's final-epoch linear probe, which mutates the tokenizer (SPEC §7.12, §5.4).

    Encodes and quantises the train split, then the test split, in stored order and batches of
    `batch_size` (each split's last batch smaller, as the reference's loaders), in train mode:
    BatchNorm uses batch statistics and updates its running statistics, and the EMA codebook
    takes a step per batch. The reference's train loader is shuffled; the order only shapes the
    moving averages within the pass. Test-set statistics thus leak into the returned state; it is
    for exact parity with the published numbers only (`train.reference_probe_pass`).

    Returns:
      (the state with updated `batch_stats` and `vq` collections, params untouched; the SVM /
      KNN accuracies of these train-mode features as `train_mode_{svm,knn}_accuracy`).
    """
    represent = jax.jit(
        lambda variables, x, rng: model.apply(
            variables,
            x,
            train=True,
            method=VQVAE.representation,
            mutable=list(MUTABLE_COLLECTIONS),
            rngs={"dropout": rng},
        )
    )
    variables = _variables(state)
    features, num_batches = [], 0
    for split in (dataset.train, dataset.test):
        pooled = []
        for start in range(0, len(split), batch_size):
            batch_rng = jax.random.fold_in(rng, num_batches)
            output, updated = represent(variables, split.x[start : start + batch_size], batch_rng)
            variables, num_batches = {**variables, **updated}, num_batches + 1
            pooled.append(np.asarray(output))
        features.append(np.concatenate(pooled))
    accuracies = linear_probe_accuracies(features[0], dataset.train.y, features[1], dataset.test.y)
    mutated = {name: variables[name] for name in state.variables}
    state = state.replace(variables=sharding.replicate(mutated, mesh))
    return state, {f"train_mode_{name}": value for name, value in accuracies.items()}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> training.TrainState:
    """Trains the tokenizer into `<workdir>/stage1` (resuming if a checkpoint exists).

    Bad config values, data files and workdirs fail with a `UserError` before anything is
    compiled or written; `overwrite` moves an existing `stage1/` aside first (see
    `layout.check_run_dir`).
    """
    validation.validate_stage1(config)
    run = layout.check_run_dir(workdir, STAGE, config, overwrite)
    dataset = layout.load_dataset(config)
    validation.check_series_length(config.model, dataset.name, dataset.length)
    run_dir = run.run_dir
    mesh = sharding.make_mesh()
    batch_size, eval_batch_size = layout.batch_sizes(config, dataset, mesh.size)
    augmentations = (
        ()
        if config.ssl.method == "none"
        else augment.resolve_augmentations(config.ssl.augmentations)
    )
    batches = pipeline.BatchIterator(dataset.train, batch_size, config.seed, augmentations)
    schedule = layout.Schedule(config.train, batches.steps_per_epoch, config.optim.learning_rate)
    layout.set_resolved(config, run_id=layout.begin_run(run, STAGE))
    layout.write_config(config, run_dir)

    model = build_model(config, dataset.length, dataset.channels)
    optimizer = training.make_optimizer(schedule.learning_rate, config.optim.weight_decay)
    rng = jax.random.key(config.seed)
    state = init_state(model, optimizer, jnp.asarray(dataset.train.x[:batch_size]), rng)
    print(
        f"[stage1] {dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test series "
        f"of length {dataset.length}; ssl={config.ssl.method}; "
        f"{training.count_params(state.params):,} params; token grid {model.token_grid}; "
        f"batch {batch_size} on {mesh.size} device(s); {schedule.num_steps} steps"
    )
    step_fn = training.compile_step(make_train_step(model, optimizer, config.ssl), mesh)
    evaluator = Stage1Evaluator(
        model, dataset, config, run_dir, eval_batch_size, mesh, schedule.num_steps
    )
    return training.fit(
        workdir=run_dir,
        state=state,
        train_step=step_fn,
        batches=batches,
        mesh=mesh,
        rng=jax.random.fold_in(rng, 1),
        loop=schedule.loop_config(config.train, STAGE),
        evaluate=evaluator,
        finalize=(
            functools.partial(
                reference_probe_pass,
                model,
                dataset=dataset,
                batch_size=batch_size,
                rng=jax.random.fold_in(rng, 2),
                mesh=mesh,
            )
            if config.train.reference_probe_pass
            else None
        ),
    )


def restore_tokenizer(
    stage1_dir: pathlib.Path, mesh: jax.sharding.Mesh
) -> tuple[VQVAE, dict[str, Any], ml_collections.ConfigDict, UCRDataset]:
    """Loads a trained tokenizer: (model, variables for `model.apply`, its config, its data)."""
    config = layout.read_config(stage1_dir)
    dataset = layout.load_dataset(config)
    model = build_model(config, dataset.length, dataset.channels)
    optimizer = training.make_optimizer(
        optax.constant_schedule(config.optim.learning_rate), config.optim.weight_decay
    )
    example = jnp.zeros((mesh.size, dataset.length, dataset.channels), jnp.float32)
    abstract = jax.eval_shape(
        lambda rng: init_state(model, optimizer, example, rng), jax.random.key(0)
    )
    state = training.restore_state(stage1_dir, abstract, mesh)
    return model, _variables(state), config, dataset
