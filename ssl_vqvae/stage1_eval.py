"""Stage-1 evaluation: test reconstruction error, plots, linear probes (SPEC §5.4), and the
reference's final train-mode probe pass (SPEC §7.12)."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import numpy as np

from ssl_vqvae import augment, inference, plots, sharding
from ssl_vqvae.data import UCRDataset
from ssl_vqvae.evaluation.probes import linear_probe_accuracies
from ssl_vqvae.settings import Stage1Settings
from ssl_vqvae.train_state import TrainState
from ssl_vqvae.training import Evaluator
from ssl_vqvae.vqvae import MUTABLE_COLLECTIONS, VQVAE


class Stage1Evaluator(Evaluator):
    """Validation loss on the test split, reconstruction plots and linear probes."""

    def __init__(
        self,
        model: VQVAE,
        dataset: UCRDataset,
        config: Stage1Settings,
        workdir: pathlib.Path,
        eval_batch_size: int,
        mesh: jax.sharding.Mesh,
        num_steps: int,
    ):
        self.model, self.dataset, self.config = model, dataset, config
        self.workdir, self.batch_size, self.mesh = workdir, eval_batch_size, mesh
        self.num_steps = num_steps
        self.reconstruct = jax.jit(functools.partial(model.apply, method="reconstruct"))
        self.represent = jax.jit(functools.partial(model.apply, method="representation"))

    def __call__(self, state: TrainState, step: int) -> dict[str, float]:
        variables = state.model_variables()
        test = self.dataset.test
        x_hat = inference.apply_in_batches(
            self.reconstruct, variables, test.x, self.batch_size, self.mesh
        )
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
            inference.apply_in_batches(
                self.represent, variables, split.x, self.batch_size, self.mesh
            )
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
    state: TrainState,
    *,
    dataset: UCRDataset,
    batch_size: int,
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
) -> tuple[TrainState, dict[str, float]]:
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
            method="representation",
            mutable=list(MUTABLE_COLLECTIONS),
            rngs={"dropout": rng},
        )
    )
    variables = state.model_variables()
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
