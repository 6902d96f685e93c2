"""Augmentations that move values along the time axis: warps, crops, re-orderings, flips.

Each follows the convention of ssl_vqvae.augment: ``(x, rng, **params) -> x_aug`` with
``x: float32 [batch, length, channels]``, all randomness from ``rng``, each random draw made per
sample and shared by its channels. Resampling is linear interpolation done with gathers,
vectorised over the batch.
"""

import numpy as np

from ssl_vqvae.series_batch import check_series_batch


def _gather_linear(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linearly interpolates each series at fractional positions.

    x: [batch, length, channels]; pos: float [batch, n] in [0, length - 1].
    Returns float64 [batch, n, channels] with out[b, i] = x[b] read at position pos[b, i].
    """
    last = x.shape[1] - 1
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, last)
    i1 = np.minimum(i0 + 1, last)
    frac = (pos - i0)[..., None]
    x0 = np.take_along_axis(x, i0[..., None], axis=1)
    x1 = np.take_along_axis(x, i1[..., None], axis=1)
    return x0 * (1.0 - frac) + x1 * frac


def linear_resample(x: np.ndarray, new_length: int) -> np.ndarray:
    """Linearly resamples every series to ``new_length`` points with both endpoints aligned.

    Equivalent to ``np.interp(np.linspace(0, L - 1, new_length), np.arange(L), series)``.
    x: float [batch, length, channels] -> float32 [batch, new_length, channels].
    """
    check_series_batch(x)
    if new_length < 1:
        raise ValueError(f"new_length must be >= 1, got {new_length}")
    pos = np.linspace(0.0, x.shape[1] - 1, new_length)
    pos = np.broadcast_to(pos, (x.shape[0], new_length))
    return _gather_linear(x, pos).astype(np.float32)


def apply_window_warp(
    x: np.ndarray, starts: np.ndarray, scales: np.ndarray, window_size: int
) -> np.ndarray:
    """Deterministic core of :func:`window_warp` for given per-sample starts and scales.

    Per sample b: the window ``x[b, s:s+w]`` (s = starts[b], w = window_size) is linearly resampled
    to ``m = int(w * scales[b])`` points, spliced between prefix and suffix (N = L - w + m points),
    and the spliced series is linearly resampled back to L points, endpoints aligned. Vectorised:
    output step j reads the spliced series at p = j (N - 1) / (L - 1), and spliced index k is
    itself x read at a source position, so two levels of interpolation use gathers only.

    x: float [batch, length >= 2, channels]; starts: int [batch] in [0, L - w];
    scales: float [batch] > 0. Returns float32 [batch, length, channels].
    """
    check_series_batch(x, min_length=2)
    batch, length, _ = x.shape
    if not 1 <= window_size <= length:
        raise ValueError(f"window_size must be in [1, {length}], got {window_size}")
    starts = np.asarray(starts, dtype=np.int64)
    scales = np.asarray(scales, dtype=np.float64)
    if starts.shape != (batch,) or scales.shape != (batch,):
        raise ValueError(
            f"starts and scales must have shape ({batch},), got {starts.shape} and {scales.shape}"
        )
    if np.any(starts < 0) or np.any(starts > length - window_size):
        raise ValueError(f"starts must lie in [0, {length - window_size}]")
    if np.any(scales <= 0):
        raise ValueError("scales must be > 0")

    w = window_size
    m = np.trunc(w * scales).astype(np.int64)[:, None]  # [batch, 1] warped window length
    n_spliced = length - w + m
    s = starts[:, None]
    # np.linspace(0, w - 1, 1) == [0]: a one-point window reads its first sample.
    window_step = (w - 1) / np.maximum(m - 1, 1)

    def source_position(k: np.ndarray) -> np.ndarray:
        """Position in x of spliced index k: [batch, length] int -> float."""
        in_window = s + (k - s) * window_step
        return np.where(k < s, k, np.where(k < s + m, in_window, k - m + w)).astype(np.float64)

    # Multiply before dividing so that integer positions stay exact (endpoints, scale 1).
    p = np.arange(length)[None, :] * (n_spliced - 1) / (length - 1)
    k0 = np.floor(p).astype(np.int64)
    k1 = np.minimum(k0 + 1, n_spliced - 1)
    t = (p - k0)[..., None]
    out = (1.0 - t) * _gather_linear(x, source_position(k0)) + t * _gather_linear(
        x, source_position(k1)
    )
    return out.astype(np.float32)


def window_warp(
    x: np.ndarray,
    rng: np.random.Generator,
    window_ratio: float = 0.4,
    scale_range: tuple[float, float] = (0.9, 2.0),
) -> np.ndarray:
    """Stretches or squeezes one random window in time, then restores the length (SPEC §3.1).

    w = max(round(window_ratio * L), 1); start ~ randint[0, L - w) (0 when w = L);
    scale ~ U(scale_range). x: float [batch, length >= 2, channels] -> float32, same shape.
    """
    check_series_batch(x, min_length=2)
    if not 0.0 < window_ratio <= 1.0:
        raise ValueError(f"window_ratio must be in (0, 1], got {window_ratio}")
    low, high = scale_range
    if not 0.0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    batch, length, _ = x.shape
    window_size = max(int(np.round(window_ratio * length)), 1)
    starts = rng.integers(0, max(length - window_size, 1), size=batch)
    scales = rng.uniform(low, high, size=batch)
    return apply_window_warp(x, starts, scales, window_size)


def slice_and_shuffle(x: np.ndarray, rng: np.random.Generator, num_segments: int = 4) -> np.ndarray:
    """Cuts each series into segments at random points and concatenates them permuted (SPEC §3.1).

    num_segments - 1 cut points ~ U{0, ..., L - 1} with replacement, sorted, so segments may be
    empty; the segment order is a uniform random permutation per sample.
    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    batch, length, _ = x.shape
    cuts = np.sort(rng.integers(0, length, size=(batch, num_segments - 1)), axis=1)
    order = rng.permuted(np.tile(np.arange(num_segments), (batch, 1)), axis=1)

    bounds = np.concatenate(
        [np.zeros((batch, 1), np.int64), cuts, np.full((batch, 1), length)], axis=1
    )
    # Per output segment (in output order), all [batch, num_segments]:
    src_start = np.take_along_axis(bounds[:, :-1], order, axis=1)
    seg_length = np.take_along_axis(np.diff(bounds, axis=1), order, axis=1)
    out_end = np.cumsum(seg_length, axis=1)
    out_start = out_end - seg_length

    j = np.arange(length)
    # Output segment of step j = number of output segments ending at or before j (skips empties).
    seg = np.sum(j[None, :, None] >= out_end[:, None, :], axis=-1)  # [batch, length]
    src = (
        np.take_along_axis(src_start, seg, axis=1) + j - np.take_along_axis(out_start, seg, axis=1)
    )
    return np.take_along_axis(x, src[..., None], axis=1).astype(np.float32)


def random_crop(x: np.ndarray, rng: np.random.Generator, crop_ratio: float = 0.4) -> np.ndarray:
    """Keeps a random contiguous window and stretches it back to the full length.

    ``crop_ratio`` is the fraction of the series cut away: the kept window has
    k = max(round((1 - crop_ratio) * L), 1) points, start ~ U{0, ..., L - k}, and is linearly
    resampled to L points with endpoints aligned (so crop_ratio = 0 is the identity).
    x: float [batch, length, channels] -> float32, same shape.
    """
    check_series_batch(x)
    if not 0.0 <= crop_ratio < 1.0:
        raise ValueError(f"crop_ratio must be in [0, 1), got {crop_ratio}")
    batch, length, _ = x.shape
    kept = max(int(np.round((1.0 - crop_ratio) * length)), 1)
    starts = rng.integers(0, length - kept + 1, size=batch)
    pos = starts[:, None] + np.linspace(0.0, kept - 1, length)[None, :]
    return _gather_linear(x, pos).astype(np.float32)


def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reverses every series in time (deterministic, as the reference; ``rng`` is unused).

    x: float [batch, length, channels] -> float32, same shape.
    """
    del rng  # Part of the common augmentation signature only.
    check_series_batch(x)
    return np.ascontiguousarray(x[:, ::-1, :], dtype=np.float32)
