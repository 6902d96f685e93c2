"""Public Python API: load a trained experiment and use its tokenizer and prior.

    exp = ssl_vqvae.Experiment.load("runs/gp")
    tokens = exp.encode(series)              # [B, L] raw series -> int32 [B, N] token ids
    features = exp.represent(series)         # pooled quantised latents, [B, hidden_dim]
    recon = exp.decode(tokens)               # token ids -> series in the archive's units
    samples, labels = exp.sample(16, class_id=0)

Series go in and come out in the units of the UCR files; the data scaling of the run is
applied and undone here.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_vqvae import generate, layout, pipeline, sharding, stage1, stage2
from ssl_vqvae.data import Split, UCRDataset
from ssl_vqvae.vqvae import VQVAE

EVAL_BATCH_SIZE = 128  # series per tokenizer call (rounded to the device count)


@dataclasses.dataclass
class Experiment:
    """A trained tokenizer (and, once stage 2 ran, its prior) restored from a workdir."""

    workdir: pathlib.Path
    dataset: UCRDataset
    tokenizer: VQVAE
    tokenizer_variables: Any
    stage1_config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    prior: Any = None
    prior_params: Any = None
    stage2_config: ml_collections.ConfigDict | None = None
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, workdir: str | pathlib.Path, require_prior: bool = False) -> Experiment:
        """Restores `<workdir>/stage1` and, if it exists, `<workdir>/stage2`."""
        workdir = pathlib.Path(workdir).expanduser().absolute()
        mesh = sharding.make_mesh()
        stage2_dir = workdir / stage2.STAGE
        if (stage2_dir / "config.json").is_file():
            prior, params, config2, tokenizer, variables, dataset = stage2.restore_prior(
                stage2_dir, mesh
            )
            config1 = layout.read_config(pathlib.Path(config2.stage1_dir))
            return cls(
                workdir, dataset, tokenizer, variables, config1, mesh, prior, params, config2
            )
        if require_prior:
            raise FileNotFoundError(
                f"{stage2_dir} has no trained prior; run train.py with configs/stage2_maskgit.py "
                f"and --workdir={workdir} first"
            )
        tokenizer, variables, config1, dataset = stage1.restore_tokenizer(
            workdir / stage1.STAGE, mesh
        )
        return cls(workdir, dataset, tokenizer, variables, config1, mesh)

    @property
    def eval_batch_size(self) -> int:
        return pipeline.round_to_devices(EVAL_BATCH_SIZE, self.mesh.size)

    def _prepare(self, series: np.ndarray, scaled: bool) -> Split:
        x = np.asarray(series, np.float32)
        if x.ndim == 2:
            x = x[..., None]
        expected = (self.dataset.length, self.dataset.channels)
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(
                f"series: expected shape [B, {expected[0]}(, {expected[1]})], "
                f"got {np.shape(series)}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("series: contains NaN or infinite values")
        if not scaled:
            x = (x - self.dataset.mean) / self.dataset.std
        return Split(x.astype(np.float32), np.zeros(len(x), np.int32))

    def _tokenizer_fn(self, method):
        """`method` of the tokenizer, jitted once per experiment."""
        if method not in self._compiled:
            self._compiled[method] = jax.jit(
                lambda variables, x: self.tokenizer.apply(variables, x, method=method)
            )
        return self._compiled[method]

    def _apply(self, method, series: np.ndarray, scaled: bool) -> np.ndarray:
        return stage1.apply_in_batches(
            self._tokenizer_fn(method),
            self.tokenizer_variables,
            self._prepare(series, scaled),
            self.eval_batch_size,
            self.mesh,
        )

    def encode(self, series: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Token ids (nearest codes): series [B, L(, C)] -> int32 [B, N], row-major over (H, W')."""
        return self._apply(VQVAE.tokenize, series, scaled)

    def represent(self, series: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Pooled quantised latents (the linear-probe features): [B, L(, C)] -> [B, hidden_dim]."""
        return self._apply(VQVAE.representation, series, scaled)

    def decode(self, tokens: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Series from token ids: int [B, N] -> float32 [B, 2*floor(L/2), C]."""
        tokens = np.asarray(tokens)
        height, width = self.tokenizer.token_grid
        if tokens.ndim != 2 or tokens.shape[1] != height * width:
            raise ValueError(f"tokens: expected shape [B, {height * width}], got {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.tokenizer.codebook_size:
            raise ValueError(f"tokens: ids must lie in [0, {self.tokenizer.codebook_size})")
        decode = self._tokenizer_fn(VQVAE.decode_tokens)
        series = np.asarray(decode(self.tokenizer_variables, jnp.asarray(tokens, jnp.int32)))
        return series if scaled else self.dataset.unscale(series)

    def sample(
        self,
        num_samples: int,
        class_id: int | None = None,
        *,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        choice_temperature: float | None = None,
        mask_unused_codes: bool | None = None,
        seed: int = 0,
        scaled: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generates series with the prior.

        Args:
          num_samples: how many series.
          class_id: a class id in [0, num_classes) for class-conditional samples; None for
            unconditional ones.
          guidance_scale: classifier-free guidance weight (conditional only); default from the
            stage-2 config (1.0 = conditional logits).
          num_steps, choice_temperature: decoding overrides (defaults from the config).
          mask_unused_codes: never sample codes that the stage-2 train tokens do not use
            (default from the config's `sampling.mask_unused_codes`).

        Returns:
          (series float32 [num_samples, 2*floor(L/2), C], class ids int32 [num_samples]; the
          null class id `num_classes` marks unconditional samples).
        """
        if self.prior is None:
            raise FileNotFoundError(f"{self.workdir} has no trained prior (stage 2)")
        num_classes = self.dataset.num_classes
        if class_id is not None and not 0 <= class_id < num_classes:
            raise ValueError(f"class_id={class_id}; expected 0..{num_classes - 1} or None")
        defaults = stage2.decoding_config(self.stage2_config, mask_unused_codes)
        decoding = dataclasses.replace(
            defaults,
            num_steps=num_steps or defaults.num_steps,
            choice_temperature=(
                defaults.choice_temperature if choice_temperature is None else choice_temperature
            ),
        )
        if decoding not in self._compiled:
            self._compiled[decoding] = generate.make_generator(self.prior, self.tokenizer, decoding)
        if class_id is None:
            guidance = None
            class_ids = np.full(num_samples, num_classes, np.int32)
        else:
            guidance = (
                self.stage2_config.sampling.guidance_scale
                if guidance_scale is None
                else guidance_scale
            )
            class_ids = np.full(num_samples, class_id, np.int32)
        series = generate.generate_in_batches(
            self._compiled[decoding],
            self.prior_params,
            self.tokenizer_variables,
            class_ids,
            jax.random.key(seed),
            guidance,
            generate.generation_batch_size(num_samples, self.mesh.size),
            self.mesh,
        )
        return (series if scaled else self.dataset.unscale(series)), class_ids
