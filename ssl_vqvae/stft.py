"""STFT / ISTFT with the conventions of `torch.stft` / `torch.istft` (SPEC §2.1).

Periodic Hann window of length `n_fft` (NC-VQVAE, the current TimeVQVAE) or no window ("rect",
TimeVQVAE 2023), hop `n_fft // 4`, `center=True` with reflect padding of `n_fft // 2` on both
sides, one-sided spectrum, by default no normalisation (`normalized=True` scales by
`n_fft ** -0.5`, as `torch.stft(normalized=True)`; the current TimeVQVAE). Real and imaginary
parts are stacked as channels: input channel `c` becomes channels `2c` (real) and `2c + 1` (imag).

Because `n_fft` is a multiple of the hop, a frame is `n_fft // hop` consecutive hop-sized blocks,
so framing and overlap-add are reshapes plus a static loop over those few phases (no gathers,
no scatters, no per-frame loops).
"""

import jax.numpy as jnp
import numpy as np

# torch.stft's default hop for win_length = n_fft is n_fft // 4; the frame is this many hops long.
HOPS_PER_FRAME = 4
MIN_N_FFT = 4


def _check_n_fft(n_fft: int) -> None:
    if n_fft < MIN_N_FFT or n_fft & (n_fft - 1):
        raise ValueError(f"n_fft must be a power of 2 and >= {MIN_N_FFT}, got {n_fft}")


def hop_length(n_fft: int) -> int:
    """The STFT hop, `n_fft // 4` (torch's default)."""
    _check_n_fft(n_fft)
    return n_fft // HOPS_PER_FRAME


def num_frames(length: int, n_fft: int) -> int:
    """Number of frames `W = 1 + length // hop` of the centred STFT of a series of this length."""
    return 1 + length // hop_length(n_fft)


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window `w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)`: float32 [n_fft]."""
    n = np.arange(n_fft)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


WINDOWS = ("hann", "rect")


def window_of(name: str, n_fft: int) -> np.ndarray:
    """The analysis/synthesis window `name` (one of WINDOWS): float32 [n_fft]."""
    if name == "hann":
        return hann_window(n_fft)
    if name == "rect":
        return np.ones(n_fft, np.float32)
    raise ValueError(f"window={name!r}; expected one of {WINDOWS}")


def _blocks_to_frames(blocks: jnp.ndarray, num_out: int) -> jnp.ndarray:
    """Frame `t` is blocks `t .. t+3`: [B, nb, hop, C] -> [B, num_out, n_fft, C]."""
    batch, _, hop, channels = blocks.shape
    phases = [blocks[:, k : k + num_out] for k in range(HOPS_PER_FRAME)]
    frames = jnp.stack(phases, axis=2)  # [B, W, 4, hop, C]
    return frames.reshape(batch, num_out, HOPS_PER_FRAME * hop, channels)


def _overlap_add(frames: jnp.ndarray, hop: int) -> jnp.ndarray:
    """Overlap-add frames with the given hop: [B, W, n_fft, C] -> [B, n_fft + hop (W - 1), C]."""
    batch, width, _, channels = frames.shape
    phases = frames.reshape(batch, width, HOPS_PER_FRAME, hop, channels)
    # Block k of frame t lands on output block t + k.
    out = sum(
        jnp.pad(phases[:, :, k], ((0, 0), (k, HOPS_PER_FRAME - 1 - k), (0, 0), (0, 0)))
        for k in range(HOPS_PER_FRAME)
    )
    return out.reshape(batch, (width + HOPS_PER_FRAME - 1) * hop, channels)


def stft(
    x: jnp.ndarray, n_fft: int, *, window: str = "hann", normalized: bool = False
) -> jnp.ndarray:
    """Centred one-sided STFT of each channel.

    Args:
      x: float32 [batch, length, channels]; `length > n_fft // 2` (reflect padding needs it).
      n_fft: FFT size, a power of 2 >= 4 (window length = n_fft, hop = n_fft // 4).
      window: one of WINDOWS.
      normalized: scale the spectrum by `n_fft ** -0.5`.

    Returns:
      float32 [batch, n_fft // 2 + 1, 1 + length // hop, 2 * channels]; channel 2c is the real
      part and 2c + 1 the imaginary part of input channel c.
    """
    hop = hop_length(n_fft)
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, length, channels], got shape {x.shape}")
    batch, length, channels = x.shape
    half = n_fft // 2
    if length <= half:
        raise ValueError(
            f"x length must be > n_fft // 2 = {half} for reflect padding, got {length}"
        )
    padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)), mode="reflect")
    width = num_frames(length, n_fft)
    num_blocks = width + HOPS_PER_FRAME - 1
    blocks = padded[:, : num_blocks * hop].reshape(batch, num_blocks, hop, channels)
    frames = _blocks_to_frames(blocks, width) * window_of(window, n_fft)[:, None]
    spec = jnp.fft.rfft(frames, axis=2, norm="ortho" if normalized else "backward")
    spec = jnp.stack([spec.real, spec.imag], axis=-1)  # [B, W, H, C, 2]
    spec = spec.reshape(batch, width, half + 1, 2 * channels)
    return jnp.transpose(spec, (0, 2, 1, 3))


def istft(
    u: jnp.ndarray, n_fft: int, *, window: str = "hann", normalized: bool = False
) -> jnp.ndarray:
    """Inverse of `stft` (same `window` and `normalized`) with `torch.istft` semantics (no
    target length).

    Per frame inverse rFFT, window, overlap-add, divide by the overlap-added squared window and
    drop `n_fft // 2` samples at each end.

    Args:
      u: float32 [batch, n_fft // 2 + 1, frames, 2 * channels] (layout of `stft`).
      n_fft: FFT size used by `stft`.

    Returns:
      float32 [batch, hop * (frames - 1), channels]; for a series of length L this is
      `hop * (L // hop)` samples (`2 * floor(L / 2)` for n_fft = 8).
    """
    hop = hop_length(n_fft)
    half = n_fft // 2
    if u.ndim != 4 or u.shape[1] != half + 1 or u.shape[3] % 2:
        raise ValueError(
            f"u must be [batch, n_fft // 2 + 1 = {half + 1}, frames, 2 * channels], got {u.shape}"
        )
    batch, _, width, two_c = u.shape
    spec = jnp.transpose(u, (0, 2, 1, 3)).reshape(batch, width, half + 1, two_c // 2, 2)
    spec = spec[..., 0] + 1j * spec[..., 1]  # [B, W, H, C]
    weights = window_of(window, n_fft)
    norm = "ortho" if normalized else "backward"
    frames = jnp.fft.irfft(spec, n=n_fft, axis=2, norm=norm) * weights[:, None]  # [B, W, n_fft, C]
    signal = _overlap_add(frames, hop)
    envelope = _window_envelope(weights, width, hop)
    return signal[:, half:-half] / envelope[half:-half, None]


def _window_envelope(window: np.ndarray, width: int, hop: int) -> np.ndarray:
    """Overlap-added squared window (static): float32 [n_fft + hop * (width - 1)]."""
    env = np.zeros(window.size + hop * (width - 1), np.float32)
    positions = hop * np.arange(width)[:, None] + np.arange(window.size)[None, :]
    np.add.at(env, positions, np.broadcast_to(window**2, positions.shape))
    return env
