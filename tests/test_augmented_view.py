"""The augmented view x' keeps the reference's zeroed tail from its n_fft = 32 round trip (§3.1)."""

import numpy as np
import pytest

from ssl_vqvae import augment, data, pipeline


@pytest.mark.parametrize("length", [64, 65, 68, 70, 150])  # L mod 8 = 0, 1, 4, 6, 6
def test_round_trip_zeroes_the_last_l_mod_8_samples(length):
    x = np.random.default_rng(length).normal(size=(3, length, 2)).astype(np.float32) + 5.0
    out = augment.stft_round_trip(x)
    tail = length % 8
    kept = length - tail
    np.testing.assert_array_equal(out[:, :kept], x[:, :kept])
    np.testing.assert_array_equal(out[:, kept:], 0.0)
    assert out.shape == x.shape and out.dtype == np.float32


@pytest.mark.parametrize("length", [64, 65, 68, 70])
def test_round_trip_matches_torch_istft_length_and_values(length):
    """torch's own n_fft = 32 STFT -> ISTFT, zero-padded back as the reference does it."""
    torch = pytest.importorskip(
        "torch", reason="parity extra not installed: pip install -e '.[parity]'"
    )
    x = np.random.default_rng(0).normal(size=(4, length)).astype(np.float32)
    window = torch.hann_window(32)
    spectrum = torch.stft(
        torch.from_numpy(x), n_fft=32, window=window, return_complex=True, onesided=False
    )
    back = torch.istft(spectrum, n_fft=32, window=window, onesided=False)
    assert back.shape[-1] == 8 * (length // 8)
    expected = torch.nn.functional.pad(back, (0, length - back.shape[-1])).numpy()
    ours = augment.stft_round_trip(x[..., None])[..., 0]
    np.testing.assert_allclose(ours, expected, atol=2e-6)


def test_pipeline_view_has_the_zero_tail_and_x_does_not():
    """GunPoint (L = 150): the last 6 samples of every x' are 0; x keeps its values."""
    gunpoint = data.load_ucr("GunPoint")
    rows = pipeline.BatchRows(gunpoint.train, 16, seed=0, augmentations=("slice_and_shuffle",))
    batch = rows(0)
    assert gunpoint.length % 8 == 6
    np.testing.assert_array_equal(batch["x_aug"][:, -6:], 0.0)
    assert np.all(np.abs(batch["x_aug"][:, -7]) > 0)
    assert np.all(np.any(batch["x"][:, -6:] != 0.0, axis=1))


def test_augmented_view_is_augmentation_then_round_trip():
    x = np.random.default_rng(1).normal(size=(5, 70, 1)).astype(np.float32)
    view = augment.augmented_view(x, "gauss", np.random.default_rng(7))
    expected = augment.stft_round_trip(augment.augment_batch(x, "gauss", np.random.default_rng(7)))
    np.testing.assert_array_equal(view, expected)
