"""Time-domain augmentations that make the augmented view x' of NC-VQVAE (SPEC §3.1).

Pure NumPy, run on the CPU input pipeline and vectorised over the batch. Every augmentation has
the signature ``(x, rng, **params) -> x_aug`` with ``x: float32 [batch, length, channels]``; all
randomness comes from the ``np.random.Generator`` argument, so a fixed seed reproduces a batch.
Unless stated otherwise a random draw is made per sample and shared by the sample's channels.

This module names the augmentations, expands presets and builds the view; the operations
themselves live in ``augment_time`` (time-axis warps) and ``augment_values`` (value changes).
"""

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ssl_vqvae import augment_time, augment_values
from ssl_vqvae.series_batch import check_series_batch

Augmentation = Callable[..., np.ndarray]

AUGMENTATIONS: Mapping[str, Augmentation] = MappingProxyType(
    {
        "window_warp": augment_time.window_warp,
        "amplitude_resize": augment_values.amplitude_resize,
        "slice_and_shuffle": augment_time.slice_and_shuffle,
        "gaussian_noise": augment_values.gaussian_noise,
        "random_crop": augment_time.random_crop,
        "flip": augment_time.flip,
        "slope": augment_values.slope,
        "noise_window": augment_values.noise_window,
        "magnitude_warp": augment_values.magnitude_warp,
    }
)

# The three reported augmentation settings (SPEC §3.1), in application order.
PRESETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "warp": ("window_warp", "amplitude_resize"),
        "slice": ("slice_and_shuffle",),
        "gauss": ("gaussian_noise",),
    }
)


def resolve_augmentations(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Expands presets and validates names, keeping the given order.

    ``spec`` is a preset name ("warp"), an augmentation name, a comma-separated list of either
    ("window_warp,gaussian_noise"), or a sequence of such strings.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"augmentations must be names (str), got {spec!r}")
    tokens = [token.strip() for item in items for token in item.split(",")]
    if not tokens or any(not token for token in tokens):
        raise ValueError(f"augmentations must be a non-empty list of names, got {spec!r}")
    names: list[str] = []
    for token in tokens:
        if token in PRESETS:
            names.extend(PRESETS[token])
        elif token in AUGMENTATIONS:
            names.append(token)
        else:
            raise ValueError(
                f"unknown augmentation {token!r}; valid presets: {sorted(PRESETS)}, "
                f"valid augmentations: {sorted(AUGMENTATIONS)}"
            )
    return tuple(names)


def augment_batch(
    x: np.ndarray,
    names: str | Sequence[str],
    rng: np.random.Generator,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """Applies every listed augmentation in list order (``use_all_methods=True``, SPEC §3.1).

    ``names`` goes through :func:`resolve_augmentations`, so presets are accepted.
    ``params`` optionally overrides keyword arguments per augmentation name,
    e.g. ``{"window_warp": {"window_ratio": 0.3}}``.
    x: finite float [batch, length, channels] -> float32 [batch, length, channels].
    """
    check_series_batch(x)
    if not np.all(np.isfinite(x)):
        raise ValueError("x must contain only finite values")
    resolved = resolve_augmentations(names)
    params = params or {}
    unused = sorted(set(params) - set(resolved))
    if unused:
        raise ValueError(f"params given for augmentations not applied: {unused}")
    out = x.astype(np.float32)
    for name in resolved:
        out = AUGMENTATIONS[name](out, rng, **params.get(name, {}))
    return out


# The reference sends every augmented series through torch.stft / torch.istft with n_fft = 32
# (default hop n_fft // 4) and zero-pads the result back to the input length (SPEC §3.1).
VIEW_STFT_HOP = 32 // 4


def stft_round_trip(x: np.ndarray, hop: int = VIEW_STFT_HOP) -> np.ndarray:
    """The reference's STFT -> ISTFT round trip of the augmented view, zero-padded back to L.

    `torch.istft` without a target length returns `hop * floor(L / hop)` samples, and those equal
    the input up to float rounding (periodic Hann, overlap 4: the round trip is exact there); the
    reference then pads with zeros. So the last `L mod hop` samples of x' are 0, while x keeps
    them. This reproduces that directly rather than paying for two FFTs per series.

    x: float [batch, length, channels] -> float32 [batch, length, channels].
    """
    check_series_batch(x)
    kept = hop * (x.shape[1] // hop)
    out = x.astype(np.float32, copy=True)
    out[:, kept:] = 0.0
    return out


def augmented_view(
    x: np.ndarray,
    names: str | Sequence[str],
    rng: np.random.Generator,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """The view x' of NC-VQVAE: the time-domain augmentations, then the STFT round trip.

    x: finite float [batch, length, channels] -> float32 [batch, length, channels].
    """
    return stft_round_trip(augment_batch(x, names, rng, params))
