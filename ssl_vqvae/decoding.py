"""The decoding settings of a trained prior: its `sampling` section plus what stage 2 resolved."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssl_vqvae.errors import UserError
from ssl_vqvae.generate import DecodingConfig
from ssl_vqvae.settings import DecodingSettings


def decoding_config(
    sampling: DecodingSettings,
    code_usage: Sequence[int] | None,
    mask_unused_codes: bool | None = None,
) -> DecodingConfig:
    """What the generator needs to decode like the stage-2 run was configured to.

    Args:
      sampling: the stage-2 `sampling` settings.
      code_usage: the nearest-code histogram of the train split that stage 2 recorded (see
        `stage2.code_usage`); None when the run recorded none.
      mask_unused_codes: overrides `sampling.mask_unused_codes`; when on, only codes with a
        non-zero count in `code_usage` may be sampled.
    """
    if mask_unused_codes is None:
        mask_unused_codes = sampling.mask_unused_codes
    allowed = None
    if mask_unused_codes:
        if code_usage is None:
            raise UserError(
                "mask_unused_codes needs the code usage that stage 2 records in resolved.json, "
                "which this run does not have (trained before it existed?); retrain stage 2"
            )
        allowed = tuple(int(k) for k in np.flatnonzero(np.asarray(code_usage) > 0))
    return DecodingConfig(
        num_steps=sampling.num_steps,
        choice_temperature=sampling.choice_temperature,
        allowed_codes=allowed,
        hf_num_steps=sampling.hf_num_steps,
        hf_choice_temperature=sampling.hf_choice_temperature,
    )
