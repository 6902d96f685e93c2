"""`validate(config)`: the one boundary from a user's config to typed, frozen `settings`.

It runs before any data is loaded or compiled, and checks the range or choices of every field.
A value outside its range fails at once, in one line naming the field (`UserError`). Without
these checks some values fail minutes later deep inside JAX (`train.log_every=0`,
`model.codebook_size=0`) and others train silently on nonsense (a negative learning rate;
`train.num_steps=-5` read as "use num_epochs").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from ssl_vqvae import (
    augment,
    config_lib,
    initializers,
    layers,
    quantizer,
    series_lengths,
    settings,
    stft,
)
from ssl_vqvae.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config field accepts: `accepts(value)`, described as `expected`."""

    accepts: Callable[[Any], bool]
    expected: str
    choices: Sequence[str] = ()  # for a "did you mean" suggestion


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")


def number(
    low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Rule:
    """A finite real number in the interval from `low` to `high` (each end closed unless open)."""

    def accepts(value: Any) -> bool:
        if not _is_real(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    if high == math.inf:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
    return Rule(accepts, expected)


def choice(options: Sequence[str]) -> Rule:
    return Rule(lambda v: v in options, f"one of {tuple(options)}", tuple(options))


def _is_power_of_two(value: Any) -> bool:
    return _is_int(value) and value >= stft.MIN_N_FFT and not value & (value - 1)


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty name")
N_FFT = Rule(_is_power_of_two, f"a power of 2 >= {stft.MIN_N_FFT}")
SEED = integer(0)
POSITIVE = integer(1)
FRACTION = number(0.0, 1.0, high_open=True)  # dropout: 1 would drop everything
WEIGHT = number(0.0)

_DATA = {"data.batch_size": POSITIVE, "data.eval_batch_size": POSITIVE}
_OPTIM = {"optim.learning_rate": number(0.0, low_open=True), "optim.weight_decay": WEIGHT}
_TRAIN = {
    "train.num_epochs": POSITIVE,
    "train.num_steps": integer(0),  # 0 = num_epochs decides
    "train.log_every": POSITIVE,
    "train.eval_every_epochs": POSITIVE,
    "train.checkpoint_every": POSITIVE,
    "train.checkpoint_every_minutes": number(0.0),  # 0 = only every checkpoint_every steps
    "train.profile_steps": integer(0),  # 0 = no trace
}

STAGE1_RULES: Mapping[str, Rule] = {
    "stage": choice(("stage1",)),
    "seed": SEED,
    "data.dataset": NAME,
    "data.root": TEXT,
    "data.variable_length": choice(series_lengths.VARIABLE_LENGTH_POLICIES),
    **_DATA,
    "model.n_fft": N_FFT,
    "model.hidden_dim": POSITIVE,
    "model.num_res_blocks": POSITIVE,
    "model.downsampled_width": POSITIVE,
    "model.dropout_rate": FRACTION,
    "model.codebook_size": integer(2),
    "model.ema_decay": number(0.0, 1.0, low_open=True, high_open=True),
    "model.commitment_weight": WEIGHT,
    "model.dead_code": choice(quantizer.DEAD_CODE_MODES),
    "model.init": choice(initializers.SCHEMES),
    "model.dtype": choice(initializers.COMPUTE_DTYPES),
    "model.split": choice(config_lib.SPLITS),
    "model.codec": choice(config_lib.CODECS),
    "model.stft_window": choice(stft.WINDOWS),
    "model.stft_normalized": BOOLEAN,
    "model.hf_downsampled_width": POSITIVE,
    "model.hf_codebook_size": integer(2),
    "model.codebook_dim": integer(0),
    "model.kmeans_init": BOOLEAN,
    "model.init_dim": POSITIVE,
    "ssl.method": choice(config_lib.SSL_METHODS),
    "ssl.augmentations": NAME,  # names are resolved by `_check_augmentations`
    "ssl.aug_recon_weight": WEIGHT,
    "ssl.projector_hidden_dim": POSITIVE,
    "ssl.projector_output_dim": POSITIVE,
    "ssl.iternorm_groups": POSITIVE,
    "ssl.barlow_off_diagonal_weight": WEIGHT,
    "ssl.barlow_weight": WEIGHT,
    "ssl.vibcreg_invariance_weight": WEIGHT,
    "ssl.vibcreg_variance_weight": WEIGHT,
    "ssl.vibcreg_covariance_weight": WEIGHT,
    "ssl.vibcreg_loss_scale": WEIGHT,
    **_OPTIM,
    **_TRAIN,
    "train.probe_every": integer(0),  # 0 = only at the end
    "train.reference_probe_pass": BOOLEAN,
    "train.plot_every_eval": BOOLEAN,
}

STAGE2_RULES: Mapping[str, Rule] = {
    "stage": choice(("stage2",)),
    "seed": SEED,
    "stage1_workdir": TEXT,
    **_DATA,
    "prior.variant": choice(config_lib.PRIOR_VARIANTS),
    "prior.hidden_dim": POSITIVE,
    "prior.depth": POSITIVE,
    "prior.num_heads": POSITIVE,
    "prior.head_dim": POSITIVE,
    "prior.mlp_dim": POSITIVE,
    "prior.dropout_rate": FRACTION,
    "prior.p_unconditional": number(0.0, 1.0),
    "prior.masking": choice(config_lib.MASKING_MODES),
    "prior.token_sample_temperature": WEIGHT,  # 0 = argmax targets
    "prior.init": choice(initializers.SCHEMES),
    "prior.dtype": choice(initializers.COMPUTE_DTYPES),
    "prior.embed_dim": POSITIVE,
    "prior.ff_mult": POSITIVE,
    "prior.hf_hidden_dim": POSITIVE,
    "prior.hf_depth": POSITIVE,
    "prior.hf_num_heads": POSITIVE,
    "sampling.num_steps": POSITIVE,
    "sampling.choice_temperature": WEIGHT,
    "sampling.guidance_scale": WEIGHT,
    "sampling.mask_unused_codes": BOOLEAN,
    "sampling.hf_num_steps": POSITIVE,
    "sampling.hf_choice_temperature": WEIGHT,
    **_OPTIM,
    **_TRAIN,
}


# Top-level keys that older runs added to their stored config.json (now in resolved.json).
RESOLVED_KEYS = frozenset(
    {"run_id", "resolved_variant", "stage1_dir", "stage1_run_id", "code_usage"}
)

# config.stage -> the settings it builds and the rules of their fields.
STAGES: Mapping[str, tuple[type[settings.StageSettings], Mapping[str, Rule]]] = {
    cls.stage: (cls, rules)
    for cls, rules in (
        (settings.Stage1Settings, STAGE1_RULES),
        (settings.Stage2Settings, STAGE2_RULES),
    )
}


def validate(
    config: ml_collections.ConfigDict | Mapping[str, Any], *, ignore: frozenset[str] = frozenset()
) -> settings.Stage1Settings | settings.Stage2Settings:
    """The settings of a whole config (or of its JSON form), after checking every field.

    Dispatches on `config.stage`; refuses unknown and missing fields, then any value its rule
    rejects, then combinations that must agree, each in one `UserError` line naming the field.
    `config` is only read: never changed, unlocked or locked.

    `ignore` names top-level keys to drop first, for configs read back from a run folder: the
    `config.json` of older runs also holds values the stage resolved itself (RESOLVED_KEYS),
    no part of a request. User configs get no `ignore`: an unknown key there is a typo.
    """
    tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    tree = {key: value for key, value in tree.items() if key not in ignore}
    if "stage" not in tree:
        raise UserError(f"missing config field stage; expected one of {tuple(STAGES)}")
    _check(tree["stage"], "stage", choice(tuple(STAGES)))
    settings_class, rules = STAGES[tree["stage"]]
    result = settings_class.from_dict(tree)
    for path, rule in rules.items():
        _check(functools.reduce(getattr, path.split("."), result), path, rule)
    if isinstance(result, settings.Stage1Settings):
        _check_ssl(result.ssl)
        _check_split(result.model)
    return result


def _check(value: Any, path: str, rule: Rule) -> None:
    if not rule.accepts(value):
        hint = did_you_mean(value, rule.choices) if rule.choices else ""
        raise UserError(f"config field {path}={value!r}; expected {rule.expected}{hint}")


def _check_ssl(ssl: settings.SSLSettings) -> None:
    """The stage-1 checks that need more than one field, or more than a range."""
    try:
        augment.resolve_augmentations(ssl.augmentations)
    except ValueError as error:
        raise UserError(f"config field ssl.augmentations={ssl.augmentations!r}: {error}") from None
    if ssl.method == "vibcreg" and ssl.projector_output_dim % ssl.iternorm_groups:
        raise UserError(
            f"config field ssl.projector_output_dim={ssl.projector_output_dim} must be "
            f"divisible by ssl.iternorm_groups={ssl.iternorm_groups} (IterNorm groups)"
        )


def _check_split(model: settings.TokenizerSettings) -> None:
    """The single-branch tokenizer has only NC-VQVAE's codec."""
    if model.split == "none" and model.codec != "ncvqvae":
        raise UserError(
            f"config field model.codec={model.codec!r} needs model.split='lfhf' (the release's "
            "codec exists only as TimeVQVAE's two branches); expected 'ncvqvae' with split='none'"
        )
    if model.codec == "timevqvae" and model.codebook_dim > model.hidden_dim:
        raise UserError(
            f"config field model.codebook_dim={model.codebook_dim} must be at most "
            f"model.hidden_dim={model.hidden_dim} (0 = no projection)"
        )


def check_series_length(model: settings.TokenizerSettings, name: str, length: int) -> None:
    """Rejects series too short for the tokenizer, which would otherwise fail inside the step.

    The STFT's reflect padding needs more than `n_fft // 2` samples, and the encoder's halvings
    need at least one latent column.
    """
    n_fft, width = model.n_fft, model.downsampled_width
    if length <= n_fft // 2:
        raise UserError(
            f"dataset {name!r}: series of length {length} are too short for model.n_fft={n_fft}; "
            f"expected at least n_fft // 2 + 1 = {n_fft // 2 + 1} samples per series"
        )
    num_down = layers.num_downsample_blocks(length, n_fft, width)
    frames = stft.num_frames(length, n_fft)
    if layers.encoded_width(frames, num_down) < 1:
        raise UserError(
            f"dataset {name!r}: series of length {length} give {frames} STFT frames, too few for "
            f"the encoder's {num_down} halvings (model.n_fft={n_fft}, "
            f"model.downsampled_width={width}); expected at least {2**num_down} frames"
        )
