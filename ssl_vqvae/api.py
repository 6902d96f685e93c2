"""Public Python API: load a trained experiment and use its tokenizer and prior.

    exp = ssl_vqvae.Experiment.load("runs/gp")
    tokens = exp.encode(series)              # [B, L] raw series -> int32 [B, N] token ids
    features = exp.represent(series)         # pooled quantised latents, [B, hidden_dim]
    recon = exp.decode(tokens)               # token ids -> series in the archive's units
    samples, labels = exp.sample(16, class_id=0)

Series go in and come out in the units of the UCR files; the data scaling of the run, stored
with the model, is applied and undone here. Loading reads only the stage folders' model items
and configs (no dataset, no optimizer state); `dataset` loads the UCR files on first use, for
the metrics that compare with real data.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import artifacts, generate, inference, layout, pipeline, sharding, validation
from ssl_vqvae.data import UCRDataset
from ssl_vqvae.decoding import decoding_config
from ssl_vqvae.errors import MissingInputError
from ssl_vqvae.settings import Stage1Settings, Stage2Settings
from ssl_vqvae.vqvae import VQVAE

EVAL_BATCH_SIZE = 128  # series per tokenizer call (rounded to the device count)


@dataclasses.dataclass
class Experiment:
    """A trained tokenizer (and, once stage 2 ran, its prior) restored from a workdir.

    Attributes:
      workdir: the experiment folder.
      tokenizer_model: the restored stage-1 model (`artifacts.LoadedModel`).
      stage1_settings: the validated stage-1 config.
      mesh: devices the computations run on.
      prior_model, stage2_settings: the restored prior and its config (None before stage 2).
      stage2_resolved: what stage 2 resolved (prior variant, code usage, tokenizer location).
    """

    workdir: pathlib.Path
    tokenizer_model: artifacts.LoadedModel
    stage1_settings: Stage1Settings
    mesh: jax.sharding.Mesh
    prior_model: artifacts.LoadedModel | None = None
    stage2_settings: Stage2Settings | None = None
    stage2_resolved: dict[str, Any] = dataclasses.field(default_factory=dict)
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        workdir: str | pathlib.Path,
        require_prior: bool = False,
        stage1_workdir: str | None = None,
    ) -> Experiment:
        """Restores `<workdir>/stage1` and, if it was trained, `<workdir>/stage2`.

        Args:
          workdir: the experiment folder (it may have been moved since training).
          require_prior: fail with one line unless stage 2 was trained.
          stage1_workdir: where the tokenizer lives when stage 2 used another experiment's
            (overrides the recorded location).
        """
        workdir = pathlib.Path(workdir).expanduser().absolute()
        mesh = sharding.make_mesh()
        stage2_dir = layout.stage_dir(workdir, "stage2")
        if not (stage2_dir / layout.CONFIG_FILE).is_file():
            if require_prior:
                raise MissingInputError(
                    f"{stage2_dir} has no trained prior; run train.py with "
                    f"configs/stage2_maskgit.py and --workdir={workdir} first"
                )
            stage1_dir = layout.stage_dir(workdir, "stage1")
            return cls(workdir, *_load_stage(stage1_dir, mesh), mesh)
        stage1_dir, _ = layout.check_trained(workdir, stage1_workdir)
        prior, stage2_settings = _load_stage(stage2_dir, mesh)
        return cls(
            workdir,
            *_load_stage(stage1_dir, mesh),
            mesh,
            prior,
            stage2_settings,
            layout.read_resolved(stage2_dir),
        )

    @property
    def tokenizer(self) -> VQVAE:
        return self.tokenizer_model.module

    @property
    def tokenizer_variables(self) -> dict[str, Any]:
        return self.tokenizer_model.variables

    @property
    def prior(self) -> Any:
        return None if self.prior_model is None else self.prior_model.module

    @property
    def prior_params(self) -> Any:
        return None if self.prior_model is None else self.prior_model.variables["params"]

    @property
    def prior_variables(self) -> Any:
        """`{"params", ...}`: what the prior's `apply` and the generator take."""
        return None if self.prior_model is None else self.prior_model.variables

    @property
    def data(self) -> artifacts.DataInfo:
        """Shape, classes and scaling of the training data (stored with the tokenizer)."""
        return self.tokenizer_model.spec.data

    @functools.cached_property
    def dataset(self) -> UCRDataset:
        """The real train/test data, loaded from the UCR files on first use."""
        data = self.stage1_settings.data
        try:
            return layout.load_dataset(data)
        except MissingInputError as error:
            raise MissingInputError(
                f"this needs the real {data.dataset} series (for the metrics that compare with "
                f"real data), which cannot be read here: {error}"
            ) from None

    @property
    def eval_batch_size(self) -> int:
        return pipeline.round_to_devices(EVAL_BATCH_SIZE, self.mesh.size)

    def _prepare(self, series: np.ndarray, scaled: bool) -> np.ndarray:
        x = np.asarray(series, np.float32)
        if x.ndim == 2:
            x = x[..., None]
        expected = (self.data.length, self.data.channels)
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(
                f"series: expected shape [B, {expected[0]}(, {expected[1]})], "
                f"got {np.shape(series)}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("series: contains NaN or infinite values")
        return x if scaled else self.data.scale(x)

    def _tokenizer_fn(self, method):
        """`method` of the tokenizer, jitted once per experiment."""
        if method not in self._compiled:
            self._compiled[method] = jax.jit(
                lambda variables, x: self.tokenizer.apply(variables, x, method=method)
            )
        return self._compiled[method]

    def _apply(self, method, series: np.ndarray, scaled: bool) -> np.ndarray:
        return inference.apply_in_batches(
            self._tokenizer_fn(method),
            self.tokenizer_variables,
            self._prepare(series, scaled),
            self.eval_batch_size,
            self.mesh,
        )

    def encode(self, series: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Token ids (nearest codes): series [B, L(, C)] -> int32 [B, N], row-major over (H, W')."""
        return self._apply("tokenize", series, scaled)

    def represent(self, series: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Pooled quantised latents (the linear-probe features): [B, L(, C)] -> [B, hidden_dim]."""
        return self._apply("representation", series, scaled)

    def decode(self, tokens: np.ndarray, scaled: bool = False) -> np.ndarray:
        """Series from token ids: int [B, N] -> float32 [B, 2*floor(L/2), C]."""
        tokens = np.asarray(tokens)
        segments = self.tokenizer.token_segments
        num_tokens = sum(count for count, _ in segments)
        if tokens.ndim != 2 or tokens.shape[1] != num_tokens:
            raise ValueError(f"tokens: expected shape [B, {num_tokens}], got {tokens.shape}")
        start = 0
        for count, codebook_size in segments:
            part = tokens[:, start : start + count]
            if part.min() < 0 or part.max() >= codebook_size:
                where = f" {start}..{start + count - 1}" if len(segments) > 1 else ""
                raise ValueError(f"tokens: ids{where} must lie in [0, {codebook_size})")
            start += count
        decode = self._tokenizer_fn("decode_tokens")
        series = np.asarray(decode(self.tokenizer_variables, jnp.asarray(tokens, jnp.int32)))
        return series if scaled else self.data.unscale(series)

    def decoding(
        self,
        *,
        num_steps: int | None = None,
        choice_temperature: float | None = None,
        mask_unused_codes: bool | None = None,
    ) -> generate.DecodingConfig:
        """The stage-2 run's decoding settings, with optional overrides."""
        self._require_prior()
        defaults = decoding_config(
            self.stage2_settings.sampling,
            self.stage2_resolved.get("code_usage"),
            mask_unused_codes,
        )
        return dataclasses.replace(
            defaults,
            num_steps=num_steps or defaults.num_steps,
            choice_temperature=(
                defaults.choice_temperature if choice_temperature is None else choice_temperature
            ),
        )

    def generate(
        self,
        class_ids: np.ndarray,
        rng: jax.Array,
        guidance_scale: float | None,
        decoding: generate.DecodingConfig | None = None,
    ) -> np.ndarray:
        """One series per class id (`num_classes` = unconditional), in scaled units.

        Every call with the same decoding settings shares one compiled sampler.
        """
        self._require_prior()
        generator = generate.generator_for(self.prior, self.tokenizer, decoding or self.decoding())
        return generator(
            self.prior_variables,
            self.tokenizer_variables,
            np.asarray(class_ids, np.int32),
            rng,
            guidance_scale,
            self.mesh,
        )

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
        self._require_prior()
        num_classes = self.data.num_classes
        if class_id is not None and not 0 <= class_id < num_classes:
            raise ValueError(f"class_id={class_id}; expected 0..{num_classes - 1} or None")
        decoding = self.decoding(
            num_steps=num_steps,
            choice_temperature=choice_temperature,
            mask_unused_codes=mask_unused_codes,
        )
        if class_id is None:
            guidance = None
            class_ids = np.full(num_samples, num_classes, np.int32)
        else:
            guidance = (
                self.stage2_settings.sampling.guidance_scale
                if guidance_scale is None
                else guidance_scale
            )
            class_ids = np.full(num_samples, class_id, np.int32)
        series = self.generate(class_ids, jax.random.key(seed), guidance, decoding)
        return (series if scaled else self.data.unscale(series)), class_ids

    def _require_prior(self) -> None:
        if self.prior_model is None:
            raise MissingInputError(f"{self.workdir} has no trained prior (stage 2)")


def _load_stage(
    stage_dir: pathlib.Path, mesh: jax.sharding.Mesh
) -> tuple[artifacts.LoadedModel, Any]:
    """(the stage's model, its validated settings)."""
    settings = validation.validate(layout.read_config(stage_dir))
    return artifacts.load_model(stage_dir, mesh), settings
