"""Stage-2 evaluation: masked-token loss on the test split and a plot of conditional samples."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ssl_vqvae import generate, inference, plots, processes, sharding, stage2_two_branch
from ssl_vqvae.branch_prior import TwoBranchPrior
from ssl_vqvae.data import UCRDataset
from ssl_vqvae.decoding import decoding_config
from ssl_vqvae.prior_objective import prior_loss, tokenize
from ssl_vqvae.settings import Stage2Settings
from ssl_vqvae.train_state import TrainState
from ssl_vqvae.training import Evaluator
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE

SAMPLES_PER_CLASS_PLOTTED = 2


class Stage2Evaluator(Evaluator):
    """Validation loss on the test split and a plot of class-conditional samples."""

    def __init__(
        self,
        prior: MaskGITTransformer,
        tokenizer: VQVAE,
        tokenizer_variables: Any,
        dataset: UCRDataset,
        settings: Stage2Settings,
        convention: str,
        run_dir: pathlib.Path,
        eval_batch_size: int,
        mesh: Mesh,
        code_usage: np.ndarray,
    ):
        self.dataset, self.settings = dataset, settings
        self.tokenizer_variables = sharding.replicate(tokenizer_variables, mesh)
        self.run_dir, self.batch_size, self.mesh = run_dir, eval_batch_size, mesh
        temperature = settings.prior.token_sample_temperature

        def eval_losses(prior_variables, tokenizer_variables, x, y, rng):
            token_rng, loss_rng = jax.random.split(rng)
            tokens = tokenize(tokenizer, tokenizer_variables, x, temperature, token_rng)
            params = prior_variables["params"]
            return prior_loss(prior, params, tokens, y, loss_rng, convention, train=False)

        if isinstance(prior, TwoBranchPrior):
            eval_losses = stage2_two_branch.make_eval_losses(prior, tokenizer, temperature)
        self.eval_losses = jax.jit(eval_losses)
        self.generator = generate.generator_for(
            prior, tokenizer, decoding_config(settings.sampling, code_usage.tolist())
        )

    def __call__(self, state: TrainState, step: int) -> dict[str, float]:
        rng = jax.random.key(step)
        losses = []
        test = self.dataset.test
        for index, (batch, num_valid) in enumerate(
            inference.padded_batches({"x": test.x, "y": test.y}, self.batch_size)
        ):
            batch = sharding.shard_batch(batch, self.mesh)
            batch_losses = self.eval_losses(
                state.model_variables(),
                self.tokenizer_variables,
                batch["x"],
                batch["y"],
                jax.random.fold_in(rng, index),
            )
            losses.append(processes.to_host(batch_losses)[:num_valid])
        self._plot(state, step)
        return {"loss": float(np.mean(np.concatenate(losses)))}

    def _plot(self, state: TrainState, step: int) -> None:
        num_classes = self.dataset.num_classes
        class_ids = np.repeat(np.arange(num_classes), SAMPLES_PER_CLASS_PLOTTED)
        samples = self.generator(
            state.model_variables(),
            self.tokenizer_variables,
            class_ids,
            jax.random.key(step),
            self.settings.sampling.guidance_scale,
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
