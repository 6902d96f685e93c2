"""Variable-length UCR series (e.g. PLAID), stored NaN-padded at the tail (SPEC §1).

The `data.variable_length` policy says what to do with them: refuse ("error"), stretch each to
the longest by linear interpolation ("resample"), or keep the NaN tail that scaling turns into 0
("zero_pad").
"""

from __future__ import annotations

import pathlib

import numpy as np

from ssl_vqvae.errors import UserError

VARIABLE_LENGTH_POLICIES = ("error", "resample", "zero_pad")


def handle_variable_length(values: np.ndarray, path: pathlib.Path, policy: str) -> np.ndarray:
    """Treats series whose tail is NaN padding (variable-length UCR sets such as PLAID)."""
    if policy not in VARIABLE_LENGTH_POLICIES:
        raise UserError(
            f"data.variable_length={policy!r}; expected one of {VARIABLE_LENGTH_POLICIES}"
        )
    finite = np.isfinite(values)
    # Valid length of each row = index after its last finite value.
    lengths = np.where(finite.any(axis=1), values.shape[1] - np.argmax(finite[:, ::-1], axis=1), 0)
    if np.any(lengths == 0):
        row = int(np.argmin(lengths)) + 1
        raise UserError(f"{path}:{row}: series has no finite value")
    if np.all(lengths == values.shape[1]) or policy == "zero_pad":
        return values
    if policy == "error":
        raise UserError(
            f"{path}: variable-length series (lengths {lengths.min()}..{lengths.max()}, "
            "NaN-padded); "
            "set --config.data.variable_length=resample (stretch each to the longest) or zero_pad"
        )
    full_length = values.shape[1]
    resampled = np.empty_like(values)
    for row, length in enumerate(lengths):
        source = values[row, :length]
        resampled[row] = np.interp(
            np.linspace(0.0, length - 1, full_length), np.arange(length), source
        )
    return resampled
