"""Range and choice checks of every config field, run before any data is loaded or compiled.

A value outside its range fails at once, in one line naming the field (`UserError`). Without
these checks some values fail minutes later deep inside JAX (`train.log_every=0`,
`model.codebook_size=0`) and others train silently on nonsense (a negative learning rate;
`train.num_steps=-5` read as "use num_epochs").
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from ssl_vqvae import augment, config_lib, data, initializers, layers, quantizer, stft
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
}

STAGE1_RULES: Mapping[str, Rule] = {
    "stage": choice(("stage1",)),
    "seed": SEED,
    "data.dataset": NAME,
    "data.root": TEXT,
    "data.variable_length": choice(data.VARIABLE_LENGTH_POLICIES),
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
    "sampling.num_steps": POSITIVE,
    "sampling.choice_temperature": WEIGHT,
    "sampling.guidance_scale": WEIGHT,
    "sampling.mask_unused_codes": BOOLEAN,
    **_OPTIM,
    **_TRAIN,
}


def check_fields(config: ml_collections.ConfigDict, rules: Mapping[str, Rule]) -> None:
    """Raises UserError for the first field of `config` that its rule rejects.

    Fields a rule names but the config lacks are skipped (configs written before they existed).
    """
    leaves = config_lib.flatten(config)
    for path, rule in rules.items():
        if path in leaves and not rule.accepts(leaves[path]):
            value = leaves[path]
            hint = did_you_mean(value, rule.choices) if rule.choices else ""
            raise UserError(f"config field {path}={value!r}; expected {rule.expected}{hint}")


def validate_stage1(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a stage-1 config, and the combinations that must agree."""
    check_fields(config, STAGE1_RULES)
    try:
        augment.resolve_augmentations(config.ssl.augmentations)
    except ValueError as error:
        raise UserError(
            f"config field ssl.augmentations={config.ssl.augmentations!r}: {error}"
        ) from None
    if config.ssl.method == "vibcreg" and (
        config.ssl.projector_output_dim % config.ssl.iternorm_groups
    ):
        raise UserError(
            f"config field ssl.projector_output_dim={config.ssl.projector_output_dim} must be "
            f"divisible by ssl.iternorm_groups={config.ssl.iternorm_groups} (IterNorm groups)"
        )


def validate_stage2(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a stage-2 config."""
    check_fields(config, STAGE2_RULES)


def check_series_length(model_config: ml_collections.ConfigDict, name: str, length: int) -> None:
    """Rejects series too short for the tokenizer, which would otherwise fail inside the step.

    The STFT's reflect padding needs more than `n_fft // 2` samples, and the encoder's halvings
    need at least one latent column.
    """
    n_fft, width = model_config.n_fft, model_config.downsampled_width
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
