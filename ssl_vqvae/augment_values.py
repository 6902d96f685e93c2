"""Augmentations that change values in place: scaling, noise, trends, smooth multiplicative warps.

Each follows the convention of ssl_vqvae.augment: ``(x, rng, **params) -> x_aug`` with
``x: float32 [batch, length, channels]``, all randomness from ``rng``; a draw is per sample and
shared by its channels unless a docstring says otherwise.
"""

import numpy as np
from scipy.interpolate import CubicSpline

from ssl_vqvae.series_batch import check_series_batch


def amplitude_resize(x: np.ndarray, rng: np.random.Generator, std: float = 0.2) -> np.ndarray:
    """Multiplies each sample by one scalar 1 + eps, eps ~ N(0, std^2) (SPEC §3.1).

    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    factor = 1.0 + rng.normal(0.0, std, size=(x.shape[0], 1, 1))
    return (x * factor).astype(np.float32)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator, std: float = 0.05) -> np.ndarray:
    """Adds i.i.d. N(0, std^2) noise to every element (SPEC §3.1).

    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return (x + rng.normal(0.0, std, size=x.shape)).astype(np.float32)


def slope(x: np.ndarray, rng: np.random.Generator, rate: float = 0.005) -> np.ndarray:
    """Adds a linear trend a * t (t = 0, ..., L - 1) with a ~ U(-rate, rate) per sample.

    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    batch, length, _ = x.shape
    trend = rng.uniform(-rate, rate, size=(batch, 1, 1)) * np.arange(length)[None, :, None]
    return (x + trend).astype(np.float32)


def noise_window(
    x: np.ndarray, rng: np.random.Generator, window_ratio: float = 0.4, std: float = 0.1
) -> np.ndarray:
    """Adds i.i.d. N(0, std^2) noise inside one random window per sample.

    Window of w = round(window_ratio * L) steps, start ~ U{0, ..., L - w}.
    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if not 0.0 <= window_ratio <= 1.0:
        raise ValueError(f"window_ratio must be in [0, 1], got {window_ratio}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    batch, length, _ = x.shape
    window_size = int(np.round(window_ratio * length))
    starts = rng.integers(0, length - window_size + 1, size=(batch, 1))
    t = np.arange(length)[None, :]
    inside = (t >= starts) & (t < starts + window_size)  # [batch, length]
    noise = rng.normal(0.0, std, size=x.shape) * inside[..., None]
    return (x + noise).astype(np.float32)


def magnitude_warp(
    x: np.ndarray, rng: np.random.Generator, sigma: float = 0.2, num_knots: int = 4
) -> np.ndarray:
    """Multiplies by a smooth random curve: a cubic spline through N(1, sigma^2) knot values.

    num_knots + 2 knots are evenly spaced over [0, L - 1] (both ends included); each sample and
    channel gets its own curve. x: float [batch, length >= 2, channels] -> float32, same shape.
    """
    check_series_batch(x, min_length=2)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if num_knots < 0:
        raise ValueError(f"num_knots must be >= 0, got {num_knots}")
    batch, length, channels = x.shape
    knot_steps = np.linspace(0.0, length - 1, num_knots + 2)
    knot_values = rng.normal(1.0, sigma, size=(batch, num_knots + 2, channels))
    curve = CubicSpline(knot_steps, knot_values, axis=1)(np.arange(length))
    return (x * curve).astype(np.float32)
