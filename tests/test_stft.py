"""STFT / ISTFT against a loop-based numpy implementation of the torch.stft/istft conventions."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import stft as stft_lib

N_FFT = 8


def np_hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window default)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)


def np_stft_1d(x: np.ndarray, n_fft: int) -> np.ndarray:
    """complex [n_fft // 2 + 1, frames]: centred, reflect-padded, one-sided DFT by definition."""
    hop, pad = n_fft // 4, n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    window = np_hann(n_fft)
    n_frames = 1 + (len(xp) - n_fft) // hop
    out = np.zeros((n_fft // 2 + 1, n_frames), np.complex128)
    n = np.arange(n_fft)
    for t in range(n_frames):
        seg = xp[t * hop : t * hop + n_fft] * window
        for k in range(n_fft // 2 + 1):
            out[k, t] = np.sum(seg * np.exp(-2j * np.pi * k * n / n_fft))
    return out


def np_istft_1d(spec: np.ndarray, n_fft: int) -> np.ndarray:
    """torch.istft(center=True, length=None) by definition: inverse DFT, window, OLA, envelope."""
    hop, pad = n_fft // 4, n_fft // 2
    n_frames = spec.shape[1]
    window = np_hann(n_fft)
    total = n_fft + hop * (n_frames - 1)
    signal, envelope = np.zeros(total), np.zeros(total)
    n = np.arange(n_fft)
    for t in range(n_frames):
        # Hermitian inverse of a one-sided spectrum; imaginary parts of DC and Nyquist are ignored.
        frame = spec[0, t].real + spec[-1, t].real * np.cos(np.pi * n)
        for k in range(1, n_fft // 2):
            frame = frame + 2 * np.real(spec[k, t] * np.exp(2j * np.pi * k * n / n_fft))
        frame = frame / n_fft
        signal[t * hop : t * hop + n_fft] += frame * window
        envelope[t * hop : t * hop + n_fft] += window**2
    return signal[pad:-pad] / envelope[pad:-pad]


def np_stft(x: np.ndarray, n_fft: int) -> np.ndarray:
    """[B, L, C] -> [B, H, W, 2C] with channel 2c = real, 2c + 1 = imag."""
    batch, _, channels = x.shape
    maps = []
    for b in range(batch):
        per_channel = []
        for c in range(channels):
            s = np_stft_1d(x[b, :, c], n_fft)
            per_channel += [s.real, s.imag]
        maps.append(np.stack(per_channel, axis=-1))
    return np.stack(maps)


def np_istft(u: np.ndarray, n_fft: int) -> np.ndarray:
    """[B, H, W, 2C] -> [B, hop (W - 1), C]."""
    batch, _, _, two_c = u.shape
    return np.stack(
        [
            np.stack(
                [
                    np_istft_1d(u[b, :, :, 2 * c] + 1j * u[b, :, :, 2 * c + 1], n_fft)
                    for c in range(two_c // 2)
                ],
                axis=-1,
            )
            for b in range(batch)
        ]
    )


@functools.partial(jax.jit, static_argnums=1)
def jit_stft(x, n_fft):
    return stft_lib.stft(x, n_fft)


@functools.partial(jax.jit, static_argnums=1)
def jit_istft(u, n_fft):
    return stft_lib.istft(u, n_fft)


@functools.partial(jax.jit, static_argnums=1)
def roundtrip_grad(x, n_fft):
    """Gradient of <g, istft(stft(x))> with g = 1 + position index: equals g on the kept samples."""

    def objective(x):
        y = stft_lib.istft(stft_lib.stft(x, n_fft), n_fft)
        weights = 1.0 + jnp.arange(y.shape[1], dtype=y.dtype)[None, :, None]
        return jnp.sum(y * weights)

    return jax.grad(objective)(x)


def random_series(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "batch,length,channels,n_fft", [(2, 23, 1, 8), (2, 24, 3, 8), (1, 19, 2, 16), (3, 10, 1, 4)]
)
def test_stft_matches_numpy_reference(batch, length, channels, n_fft):
    x = random_series((batch, length, channels))
    u = jit_stft(jnp.asarray(x), n_fft)
    hop = n_fft // 4
    chex.assert_shape(u, (batch, n_fft // 2 + 1, 1 + length // hop, 2 * channels))
    chex.assert_type(u, jnp.float32)
    np.testing.assert_allclose(np.asarray(u), np_stft(x, n_fft), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "batch,length,channels,n_fft", [(2, 23, 1, 8), (2, 24, 3, 8), (1, 19, 2, 16), (3, 10, 1, 4)]
)
def test_istft_matches_numpy_reference_on_arbitrary_maps(batch, length, channels, n_fft):
    # A generic map (not the STFT of any signal) exercises the envelope division and the
    # handling of the imaginary DC / Nyquist parts.
    width = stft_lib.num_frames(length, n_fft)
    u = random_series((batch, n_fft // 2 + 1, width, 2 * channels), seed=1)
    y = jit_istft(jnp.asarray(u), n_fft)
    chex.assert_shape(y, (batch, (n_fft // 4) * (width - 1), channels))
    np.testing.assert_allclose(np.asarray(y), np_istft(u, n_fft), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [23, 24, 150])
@pytest.mark.parametrize("n_fft", [4, 8, 16])
def test_roundtrip_is_identity_on_even_prefix(length, n_fft):
    x = random_series((2, length, 2), seed=length)
    y = jit_istft(jit_stft(jnp.asarray(x), n_fft), n_fft)
    hop = n_fft // 4
    kept = hop * (length // hop)
    chex.assert_shape(y, (2, kept, 2))
    np.testing.assert_allclose(np.asarray(y), x[:, :kept], atol=1e-5)
    if n_fft == N_FFT:
        assert kept == 2 * (length // 2)


def test_constant_signal_gives_hann_spectrum():
    """Known value: the DFT of a periodic Hann window is N/2 at bin 0, -N/4 at bin 1, else 0."""
    u = jit_stft(jnp.full((1, 24, 1), 3.0), N_FFT)
    np.testing.assert_allclose(np.asarray(u[0, 0, :, 0]), 3.0 * N_FFT / 2, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u[0, 1, :, 0]), -3.0 * N_FFT / 4, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u[0, 2:, :, 0]), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(u[..., 1]), 0.0, atol=1e-5)


@pytest.mark.parametrize("length", [23, 24])
def test_roundtrip_gradient_is_finite_and_exact(length):
    x = jnp.asarray(random_series((2, length, 2), seed=3))
    grad = roundtrip_grad(x, N_FFT)
    chex.assert_tree_all_finite(grad)
    kept = 2 * (length // 2)
    expected = np.zeros((2, length, 2), np.float32)
    expected[:, :kept] = 1.0 + np.arange(kept, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-4, rtol=1e-5)


def test_num_frames():
    assert stft_lib.num_frames(150, 8) == 76
    assert stft_lib.num_frames(1024, 8) == 513
    assert stft_lib.num_frames(151, 8) == 76
    assert stft_lib.num_frames(10, 4) == 11


@pytest.mark.parametrize("n_fft", [2, 6, 0, 12])
def test_invalid_n_fft_raises(n_fft):
    with pytest.raises(ValueError, match="n_fft"):
        stft_lib.stft(jnp.zeros((1, 32, 1)), n_fft)
    with pytest.raises(ValueError, match="n_fft"):
        stft_lib.istft(jnp.zeros((1, 5, 8, 2)), n_fft)


def test_too_short_or_misshaped_input_raises():
    with pytest.raises(ValueError, match="length"):
        stft_lib.stft(jnp.zeros((1, 4, 1)), N_FFT)
    with pytest.raises(ValueError, match="x must be"):
        stft_lib.stft(jnp.zeros((1, 32)), N_FFT)
    with pytest.raises(ValueError, match="u must be"):
        stft_lib.istft(jnp.zeros((1, 4, 8, 2)), N_FFT)
    with pytest.raises(ValueError, match="u must be"):
        stft_lib.istft(jnp.zeros((1, 5, 8, 3)), N_FFT)
