"""Input check shared by the time-series augmentations (see ssl_vqvae.augment)."""

import numpy as np


def check_series_batch(x: np.ndarray, min_length: int = 1) -> None:
    """Raises ValueError unless x is a floating array [batch, length >= min_length, channels]."""
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(
            "x must be a 3-D numpy array [batch, length, channels], got "
            f"{type(x).__name__} with shape {np.shape(x)}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    if x.shape[1] < min_length:
        raise ValueError(f"x must have length >= {min_length}, got {x.shape[1]}")
