"""Tests for augment, augment_time, augment_values: each defining property, vs numpy references."""

import chex
import numpy as np
import pytest

from ssl_vqvae import augment, augment_time, augment_values

BATCH, LENGTH, CHANNELS = 16, 50, 3


def _series(seed: int = 0, shape=(BATCH, LENGTH, CHANNELS)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _reference_window_warp(series: np.ndarray, start: int, scale: float, w: int) -> np.ndarray:
    """SPEC §3.1 window warp of one 1-D series, written with np.interp and concatenation."""
    length = series.size
    m = int(w * scale)
    window = np.interp(np.linspace(0, w - 1, num=m), np.arange(w), series[start : start + w])
    spliced = np.concatenate([series[:start], window, series[start + w :]])
    return np.interp(np.arange(length), np.linspace(0, length - 1, num=spliced.size), spliced)


# --- shared properties of every augmentation -------------------------------------------------


@pytest.mark.parametrize("name", sorted(augment.AUGMENTATIONS))
def test_shape_and_dtype_preserved(name):
    for dtype in (np.float32, np.float64):
        x = _series().astype(dtype)
        out = augment.AUGMENTATIONS[name](x, np.random.default_rng(0))
        chex.assert_shape(out, x.shape)
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", sorted(set(augment.AUGMENTATIONS) - {"flip"}))
def test_deterministic_for_seed_and_varies_across_seeds(name):
    x = _series()
    fn = augment.AUGMENTATIONS[name]
    first = fn(x, np.random.default_rng(1))
    np.testing.assert_array_equal(first, fn(x, np.random.default_rng(1)))
    assert not np.array_equal(first, fn(x, np.random.default_rng(2)))
    assert not np.array_equal(first, x)


@pytest.mark.parametrize("name", sorted(augment.AUGMENTATIONS))
def test_rejects_non_3d_input(name):
    with pytest.raises(ValueError, match="3-D"):
        augment.AUGMENTATIONS[name](np.zeros((4, 10), np.float32), np.random.default_rng(0))


# --- linear_resample -------------------------------------------------------------------------


@pytest.mark.parametrize("new_length", [1, 5, 17, 50])
def test_linear_resample_matches_np_interp(new_length):
    x = _series(shape=(3, 10, 2))
    out = augment_time.linear_resample(x, new_length)
    chex.assert_shape(out, (3, new_length, 2))
    grid = np.linspace(0, 9, new_length)
    expected = np.stack(
        [
            np.stack([np.interp(grid, np.arange(10), x[b, :, c]) for c in range(2)], -1)
            for b in range(3)
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    if new_length > 1:
        np.testing.assert_array_equal(out[:, -1], x[:, -1])


# --- SPEC §3.1 augmentations -----------------------------------------------------------------


def test_window_warp_core_matches_per_sample_reference():
    rng = np.random.default_rng(3)
    x = _series(shape=(32, 40, 2))
    w = 16
    starts = rng.integers(0, 40 - w + 1, size=32)
    scales = rng.uniform(0.5, 2.5, size=32)
    scales[:3] = [0.03, 0.07, 1.0]  # warped window of 0 points, of 1 point, unchanged
    starts[3:5] = [0, 40 - w]  # window at either end
    out = augment_time.apply_window_warp(x, starts, scales, w)
    expected = np.stack(
        [
            np.stack(
                [
                    _reference_window_warp(x[b, :, c].astype(np.float64), starts[b], scales[b], w)
                    for c in range(2)
                ],
                -1,
            )
            for b in range(32)
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_window_warp_scale_one_is_identity():
    x = _series()
    out = augment_time.window_warp(x, np.random.default_rng(0), scale_range=(1.0, 1.0))
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_window_warp_endpoints_and_constants_preserved():
    x = _series()
    out = augment_time.window_warp(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[:, -1], x[:, -1])
    const = np.full((BATCH, LENGTH, CHANNELS), 2.5, np.float32)
    np.testing.assert_allclose(
        augment_time.window_warp(const, np.random.default_rng(0)), const, atol=1e-6
    )


def test_amplitude_resize_is_one_scalar_per_sample_with_spec_std():
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=(4096, 8, 2)).astype(np.float32)
    out = augment_values.amplitude_resize(x, np.random.default_rng(1))
    ratio = out / x
    np.testing.assert_allclose(ratio, ratio[:, :1, :1] * np.ones_like(ratio), rtol=1e-5)
    factors = ratio[:, 0, 0] - 1.0
    np.testing.assert_allclose(factors.std(), 0.2, rtol=0.05)
    np.testing.assert_allclose(factors.mean(), 0.0, atol=0.02)


def test_slice_and_shuffle_is_permutation_of_contiguous_segments():
    batch, length = 64, 30
    # Channel 0 holds the time index, so the output reveals where each step came from.
    x = np.stack(
        [
            np.tile(np.arange(length, dtype=np.float32), (batch, 1)),
            _series(shape=(batch, length, 1))[..., 0],
        ],
        axis=-1,
    )
    out = augment_time.slice_and_shuffle(x, np.random.default_rng(0))
    src = out[..., 0].astype(np.int64)
    reordered = 0
    for b in range(batch):
        np.testing.assert_array_equal(np.sort(src[b]), np.arange(length))
        runs = 1 + np.count_nonzero(np.diff(src[b]) != 1)
        assert runs <= 4, f"sample {b}: {runs} contiguous pieces"
        reordered += runs > 1
        np.testing.assert_array_equal(out[b, :, 1], x[b, src[b], 1])  # channels move together
    assert reordered > batch // 2


def test_slice_and_shuffle_preserves_values_exactly():
    x = _series()
    out = augment_time.slice_and_shuffle(x, np.random.default_rng(5))
    np.testing.assert_array_equal(np.sort(out, axis=1), np.sort(x, axis=1))


def test_gaussian_noise_statistics():
    x = _series(shape=(256, 256, 2))
    residual = augment_values.gaussian_noise(x, np.random.default_rng(0)).astype(np.float64) - x
    np.testing.assert_allclose(residual.std(), 0.05, rtol=0.02)
    np.testing.assert_allclose(residual.mean(), 0.0, atol=1e-3)


# --- other implemented augmentations ---------------------------------------------------------


def test_random_crop_of_ramp_is_a_stretched_subramp():
    ramp = np.tile(np.arange(LENGTH, dtype=np.float32)[None, :, None], (BATCH, 1, CHANNELS))
    out = augment_time.random_crop(ramp, np.random.default_rng(0), crop_ratio=0.4)
    kept = round(0.6 * LENGTH)
    assert np.all(np.diff(out, axis=1) > 0)
    np.testing.assert_allclose(out[:, -1] - out[:, 0], kept - 1, atol=1e-4)
    assert out.min() >= 0 and out.max() <= LENGTH - 1
    np.testing.assert_allclose(np.diff(out, n=2, axis=1), 0.0, atol=1e-4)


def test_random_crop_ratio_zero_is_identity():
    x = _series()
    np.testing.assert_array_equal(augment_time.random_crop(x, np.random.default_rng(0), 0.0), x)


def test_flip_reverses_time_and_twice_is_identity():
    x = _series()
    rng = np.random.default_rng(0)
    once = augment_time.flip(x, rng)
    np.testing.assert_array_equal(once, x[:, ::-1])
    np.testing.assert_array_equal(augment_time.flip(once, rng), x)


def test_slope_adds_bounded_linear_trend():
    x = _series(shape=(2048, LENGTH, 2))
    rate = 0.005
    trend = augment_values.slope(x, np.random.default_rng(0), rate=rate).astype(np.float64) - x
    a = trend[:, 1, :1] - trend[:, 0, :1]
    np.testing.assert_allclose(
        trend, a[:, :, None] * np.arange(LENGTH)[None, :, None] * np.ones_like(trend), atol=1e-5
    )
    assert np.all(np.abs(a) <= rate + 1e-6)
    assert a.max() > 0.9 * rate and a.min() < -0.9 * rate


def test_noise_window_only_touches_one_window():
    x = _series(shape=(512, 40, 2))
    residual = augment_values.noise_window(x, np.random.default_rng(0)).astype(np.float64) - x
    touched = np.any(residual != 0, axis=-1)  # [batch, length]
    width = round(0.4 * 40)
    np.testing.assert_array_equal(touched.sum(axis=1), width)
    first = touched.argmax(axis=1)
    for b in range(0, 512, 37):
        np.testing.assert_array_equal(np.flatnonzero(touched[b]), first[b] + np.arange(width))
    np.testing.assert_allclose(residual[touched].std(), 0.1, rtol=0.05)


def test_magnitude_warp_is_a_smooth_multiplier_around_one():
    ones = np.ones((1024, 64, 2), np.float32)
    curve = augment_values.magnitude_warp(ones, np.random.default_rng(0))
    np.testing.assert_allclose(curve.mean(), 1.0, atol=0.01)
    # A cubic through 6 knots 12.6 steps apart bends slowly; white noise of std 0.2 would not.
    assert np.abs(np.diff(curve, n=2, axis=1)).max() < 0.05
    doubled = augment_values.magnitude_warp(2 * ones, np.random.default_rng(0))
    np.testing.assert_allclose(doubled, 2 * curve, rtol=1e-6)


# --- registry, presets and augment_batch -----------------------------------------------------


def test_presets_name_registered_augmentations():
    assert set(augment.PRESETS) == {"warp", "slice", "gauss"}
    for names in augment.PRESETS.values():
        assert set(names) <= set(augment.AUGMENTATIONS)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("warp", ("window_warp", "amplitude_resize")),
        ("slice", ("slice_and_shuffle",)),
        ("gauss", ("gaussian_noise",)),
        ("flip", ("flip",)),
        ("window_warp, gaussian_noise", ("window_warp", "gaussian_noise")),
        (["gauss", "warp"], ("gaussian_noise", "window_warp", "amplitude_resize")),
    ],
)
def test_resolve_augmentations(spec, expected):
    assert augment.resolve_augmentations(spec) == expected


@pytest.mark.parametrize("spec", ["", [], "warp,,gauss"])
def test_resolve_augmentations_rejects_empty(spec):
    with pytest.raises(ValueError, match="non-empty"):
        augment.resolve_augmentations(spec)


def test_resolve_augmentations_rejects_non_strings():
    with pytest.raises(ValueError, match="names"):
        augment.resolve_augmentations(["warp", None])


def test_resolve_augmentations_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="'jitter'") as info:
        augment.resolve_augmentations("warp,jitter")
    message = str(info.value)
    for valid in ("warp", "gauss", "window_warp", "magnitude_warp"):
        assert valid in message


def test_augment_batch_applies_in_order():
    x = _series()
    out = augment.augment_batch(x, ["window_warp", "amplitude_resize"], np.random.default_rng(7))
    rng = np.random.default_rng(7)
    expected = augment_values.amplitude_resize(augment_time.window_warp(x, rng), rng)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(augment.augment_batch(x, "warp", np.random.default_rng(7)), out)


def test_augment_batch_params_override_defaults():
    x = _series()
    params = {"window_warp": {"scale_range": (1.0, 1.0)}, "amplitude_resize": {"std": 0.0}}
    out = augment.augment_batch(x, "warp", np.random.default_rng(0), params=params)
    np.testing.assert_allclose(out, x, atol=1e-6)
    with pytest.raises(ValueError, match="gaussian_noise"):
        augment.augment_batch(
            x, "warp", np.random.default_rng(0), params={"gaussian_noise": {"std": 0.1}}
        )


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((4, 10), np.float32), "3-D"),
        (np.zeros((4, 10, 1), np.int32), "floating"),
        (np.full((4, 10, 1), np.nan, np.float32), "finite"),
    ],
)
def test_augment_batch_validates_input(x, match):
    with pytest.raises(ValueError, match=match):
        augment.augment_batch(x, "gauss", np.random.default_rng(0))
