"""Typed, frozen settings: what trainers, evaluators and the API read instead of a ConfigDict.

`validation.validate(config)` builds a `Stage1Settings` or `Stage2Settings` once, at the
boundary; every section of the config becomes a frozen, hashable dataclass with the same field
names, so a typo is an AttributeError at import time of the reader rather than a silent
`config.get`, and settings can key caches or be closed over by jitted functions.

`to_dict()` gives back the plain nested dict that the config's own `to_dict()` gives (JSON-ready,
`stage` included), and `from_dict(mapping)` builds settings from such a dict, refusing unknown
and missing fields in one line. Values are stored as given: their ranges are checked by
`validation`, not here.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from ssl_vqvae.errors import UserError, did_you_mean

_frozen = dataclasses.dataclass(frozen=True, kw_only=True)
_T = TypeVar("_T", bound="Settings")


class Settings:
    """Base of every settings dataclass: `to_dict` and the generic `from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict of every field (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_T], tree: Mapping[str, Any]) -> _T:
        """Builds `cls` from a nested mapping; UserError on an unknown or missing field."""
        return _build(cls, tree, prefix="")


@_frozen
class DataSettings(Settings):
    """Stage-1 `config.data`: the UCR dataset and the batch sizes."""

    dataset: str  # UCR name, e.g. "GunPoint"
    root: str  # UCR archive folder; "" = bundled sets, then the UCR pip packages
    variable_length: str  # series_lengths.VARIABLE_LENGTH_POLICIES: error | resample | zero_pad
    batch_size: int  # global training batch
    eval_batch_size: int  # global batch of evaluation passes


@_frozen
class BatchSettings(Settings):
    """Stage-2 `config.data`: batch sizes only; the dataset is the stage-1 run's."""

    batch_size: int  # global training batch
    eval_batch_size: int  # global batch of evaluation passes


@_frozen
class TokenizerSettings(Settings):
    """`config.model`: the VQ-VAE tokenizer (SPEC §2)."""

    n_fft: int  # STFT size, a power of 2
    hidden_dim: int  # also the codebook dimension
    num_res_blocks: int
    downsampled_width: int  # target latent width; sets the number of encoder halvings
    dropout_rate: float
    codebook_size: int
    ema_decay: float  # of the EMA codebook
    commitment_weight: float
    dead_code: str  # quantizer.DEAD_CODE_MODES: reference | keep (SPEC §7.11)
    init: str  # initializers.SCHEMES: torch | flax (SPEC §7.10)
    dtype: str  # initializers.COMPUTE_DTYPES: float32 | bfloat16 (compute; params stay float32)
    split: str  # config_lib.SPLITS: none (NC-VQVAE) | lfhf (TimeVQVAE's LF/HF branches)
    codec: str  # branch.CODECS: ncvqvae (NC-VQVAE / TimeVQVAE 2023) | timevqvae (the release)
    stft_window: str  # stft.WINDOWS: hann | rect
    stft_normalized: bool  # scale the STFT by n_fft ** -0.5 (the release)
    hf_downsampled_width: int  # lfhf: the HF branch's target latent width
    hf_codebook_size: int  # lfhf: the HF codebook's K (codebook_size is the LF one)
    codebook_dim: int  # timevqvae codec: projected codebook space
    kmeans_init: bool  # timevqvae codec: k-means codebook init on the first batch
    init_dim: int  # timevqvae codec: width of the first encoder block


@_frozen
class SSLSettings(Settings):
    """`config.ssl`: the self-supervised branch and its loss weights (SPEC §3)."""

    method: str  # config_lib.SSL_METHODS: none | barlowtwins | vibcreg
    augmentations: str  # preset (warp | slice | gauss) or comma-separated names
    aug_recon_weight: float
    projector_hidden_dim: int
    projector_output_dim: int
    iternorm_groups: int  # VIbCReg only; must divide projector_output_dim
    barlow_off_diagonal_weight: float
    barlow_weight: float
    vibcreg_invariance_weight: float
    vibcreg_variance_weight: float
    vibcreg_covariance_weight: float
    vibcreg_loss_scale: float


@_frozen
class PriorSettings(Settings):
    """`config.prior`: the bidirectional MaskGIT transformer (SPEC §4)."""

    variant: str  # config_lib.PRIOR_VARIANTS: auto | token_index | full_embedding
    hidden_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float
    p_unconditional: float  # class label dropped for classifier-free guidance
    masking: str  # config_lib.MASKING_MODES: thesis | standard
    token_sample_temperature: float  # stochastic VQ targets; 0 = argmax
    init: str  # initializers.SCHEMES: torch | flax
    dtype: str  # initializers.COMPUTE_DTYPES: float32 | bfloat16 (compute; params stay float32)
    # two_branch priors (LF/HF tokenizers): hidden_dim / depth / num_heads are the LF prior's
    embed_dim: int  # token embedding width of both priors
    ff_mult: int  # feed-forward inner width int(dim * ff_mult * 2 / 3) of both priors
    hf_hidden_dim: int
    hf_depth: int
    hf_num_heads: int


@_frozen
class DecodingSettings(Settings):
    """`config.sampling`: iterative MaskGIT decoding with classifier-free guidance."""

    num_steps: int
    choice_temperature: float
    guidance_scale: float
    mask_unused_codes: bool  # never sample codes the train split's tokens never use
    hf_num_steps: int  # two-branch priors: HF decoding steps (num_steps is the LF one's)
    hf_choice_temperature: float  # two-branch priors: HF choice temperature


@_frozen
class OptimSettings(Settings):
    """`config.optim`: AdamW."""

    learning_rate: float
    weight_decay: float


@_frozen
class LoopSettings(Settings):
    """`config.train` of stage 2, and the part stage 1 shares: step budget and periods."""

    num_epochs: int
    num_steps: int  # > 0 overrides num_epochs
    log_every: int  # steps
    eval_every_epochs: int
    checkpoint_every: int  # steps
    checkpoint_every_minutes: float  # also save after this long; 0 = never on time
    profile_steps: int  # > 0: a profiler trace of this many steps


@_frozen
class Stage1LoopSettings(LoopSettings):
    """`config.train` of stage 1: the shared loop plus probes and plots."""

    probe_every: int  # linear probes every N steps; 0 = only at the end
    reference_probe_pass: bool  # the reference's leaky final train-mode pass (SPEC §7.12)
    plot_every_eval: bool


class StageSettings(Settings):
    """A whole config: its `stage` is the class's, written first by `to_dict` as in the config."""

    stage: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[_T], tree: Mapping[str, Any]) -> _T:
        fields = dict(tree)
        stage = fields.pop("stage", cls.stage)
        if stage != cls.stage:
            raise UserError(f"config field stage={stage!r}; expected {cls.stage!r}")
        return _build(cls, fields, prefix="")


@_frozen
class Stage1Settings(StageSettings):
    """A stage-1 (tokenizer) run."""

    stage: ClassVar[str] = "stage1"
    seed: int
    data: DataSettings
    model: TokenizerSettings
    ssl: SSLSettings
    optim: OptimSettings
    train: Stage1LoopSettings


@_frozen
class Stage2Settings(StageSettings):
    """A stage-2 (prior) run on the tokenizer of a stage-1 run."""

    stage: ClassVar[str] = "stage2"
    seed: int
    stage1_workdir: str  # "" = <workdir>/stage1 of the same experiment
    data: BatchSettings
    prior: PriorSettings
    sampling: DecodingSettings
    optim: OptimSettings
    train: LoopSettings


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (the annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _build(cls: type[_T], tree: Mapping[str, Any], prefix: str) -> _T:
    """`cls(**tree)`, recursing into nested settings; `prefix` names the section in errors."""
    types = _field_types(cls)
    section = prefix.rstrip(".") or "the top level"
    for key in tree:
        if key not in types:
            known = [f"{prefix}{name}" for name in types]
            raise UserError(
                f"unknown config field {prefix}{key}; expected one of the fields of {section}: "
                f"{', '.join(types)}{did_you_mean(f'{prefix}{key}', known)}"
            )
    missing = [name for name in types if name not in tree]
    if missing:
        raise UserError(
            f"missing config field {prefix}{missing[0]}; {section} needs {', '.join(types)}"
        )
    values = {}
    for name, kind in types.items():
        value, path = tree[name], f"{prefix}{name}"
        is_section = isinstance(kind, type) and issubclass(kind, Settings)
        if is_section and not isinstance(value, Mapping):
            fields = ", ".join(_field_types(kind))
            raise UserError(f"config field {path}={value!r}; expected a section with {fields}")
        if not is_section and isinstance(value, Mapping):
            raise UserError(f"config field {path} is a section; expected a single value")
        values[name] = _build(kind, value, f"{path}.") if is_section else value
    return cls(**values)
