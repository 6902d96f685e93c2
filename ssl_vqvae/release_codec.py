"""Per-branch encoder and decoder of the current TimeVQVAE release (`timevqvae` 1.0.1), NHWC.

A branch works on its own STFT rows only (LF: row 0, "frequency independent" kernels (1, k);
HF: rows 1.., kernels (3, k)). Blocks use weight-normed (depthwise + pointwise) convolutions,
torch-semantics BatchNorm and Snake activations (`weight_norm`). The encoder halves the width
`n` times (`n = max(round(log2(rate)), 1)`) and L2-normalises its output over channels; the
decoder doubles it `n + 1` times and keeps that width: its rows go back to a series by zero
placement, ISTFT (Hann, normalised) and a linear resize to the input length (`rows_to_time`).

Flax submodule names follow the package's `nn.Sequential` indices (`encoder_3`, `convs_1`,
`block_0`, `decoder_5_0`, ...) so that a torch state-dict key maps to a parameter path by
joining each name with the indices after it (`encoder.3.convs.1.weight_v` ->
`encoder_3/convs_1/weight_v`).
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import initializers, layers, stft
from ssl_vqvae.normalization import BatchNorm
from ssl_vqvae.weight_norm import (
    ConvTranspose,
    Snake,
    WeightNormConv,
    WeightNormConvTranspose,
)

KINDS = ("lf", "hf")
SAMPLING_WIDTH = 4  # kernel width of the stride-2 (width) convolutions
NORMALIZE_EPS = 1e-12  # F.normalize's default
WINDOW = "hann"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}")


def compute_downsample_rate(input_length: int, n_fft: int, downsampled_width: int) -> int:
    """The release's `compute_downsample_rate` (same formula as `layers.downsample_rate`)."""
    return layers.downsample_rate(input_length, n_fft, downsampled_width)


def num_halvings(downsample_rate: int) -> int:
    """Stride-2 encoder blocks: the first block plus `round(log2(rate)) - 1` more (at least 1)."""
    return max(int(round(np.log2(downsample_rate))), 1)


def encoded_width(width: int, downsample_rate: int) -> int:
    """Latent width W' of an STFT of width W (each block maps W -> floor(W / 2))."""
    return width >> num_halvings(downsample_rate)


def decoded_width(latent_width: int, downsample_rate: int) -> int:
    """STFT width the decoder produces from W' (it doubles `num_halvings + 1` times)."""
    return latent_width << (num_halvings(downsample_rate) + 1)


def _geometry(kind: str, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel, padding) of a block: kernel (1, width), padding (0, 1) for LF (each row on its
    own); kernel (3, width), padding (1, 1) for HF."""
    _check_kind(kind)
    if kind == "lf":
        return (1, width), (0, 1)
    return (3, width), (1, 1)


def _pad2(padding: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((padding[0], padding[0]), (padding[1], padding[1]))


class ResBlock(nn.Module):
    """`proj(x) + convs(x)`; convs = Snake, depthwise + 1x1 WN conv, BN, Snake, depthwise +
    1x1 WN conv, Dropout. `proj` is a plain 1x1 conv when the channel count changes."""

    kind: str
    features: int
    dropout_rate: float
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kernel, padding = _geometry(self.kind, 3)
        in_features, init = x.shape[-1], self.param_init
        y = Snake(name="convs_0")(x)
        y = WeightNormConv(
            in_features,
            kernel,
            padding=_pad2(padding),
            groups=in_features,
            param_init=init,
            name="convs_1",
        )(y)
        y = WeightNormConv(self.features, (1, 1), param_init=init, name="convs_2")(y)
        y = BatchNorm(use_running_average=not train, name="convs_3")(y)
        y = Snake(name="convs_4")(y)
        y = WeightNormConv(
            self.features,
            kernel,
            padding=_pad2(padding),
            groups=self.features,
            param_init=init,
            name="convs_5",
        )(y)
        y = WeightNormConv(self.features, (1, 1), param_init=init, name="convs_6")(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        if in_features != self.features:
            x = initializers.conv(self.features, in_features, (1, 1), init, name="proj")(x)
        return x + y


class EncBlock(nn.Module):
    """Replicate-padded depthwise WN conv, stride (1, 2) -> 1x1 WN conv -> BN -> Snake."""

    kind: str
    features: int
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kernel, padding = _geometry(self.kind, SAMPLING_WIDTH)
        x = WeightNormConv(
            x.shape[-1],
            kernel,
            strides=(1, 2),
            padding=_pad2(padding),
            groups=x.shape[-1],
            padding_mode="replicate",
            param_init=self.param_init,
            name="block_0",
        )(x)
        x = WeightNormConv(self.features, (1, 1), param_init=self.param_init, name="block_1")(x)
        x = BatchNorm(use_running_average=not train, name="block_2")(x)
        return Snake(name="block_3")(x)


class DecBlock(nn.Module):
    """Depthwise WN transposed conv, stride (1, 2) -> 1x1 WN transposed conv -> BN -> Snake."""

    kind: str
    features: int
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kernel, padding = _geometry(self.kind, SAMPLING_WIDTH)
        x = WeightNormConvTranspose(
            x.shape[-1],
            kernel,
            strides=(1, 2),
            padding=padding,
            groups=x.shape[-1],
            param_init=self.param_init,
            name="block_0",
        )(x)
        x = WeightNormConvTranspose(
            self.features, (1, 1), param_init=self.param_init, name="block_1"
        )(x)
        x = BatchNorm(use_running_average=not train, name="block_2")(x)
        return Snake(name="block_3")(x)


class ReleaseEncoder(nn.Module):
    """A branch's STFT rows [B, h, W, 2C] -> L2-normalised latents [B, h, W', hid_dim].

    `kind` "lf" (h = 1) or "hf" (h = n_fft // 2); W' = `encoded_width(W, downsample_rate)`.
    Channels: EncBlock 2C -> init_dim, then per further halving EncBlock d -> 2d and
    `n_resnet_blocks` ResBlocks, and a last ResBlock -> hid_dim. `dropout_rate` is the
    ResBlocks' (the 'dropout' rng in train mode).
    """

    kind: str
    downsample_rate: int
    init_dim: int = 4
    hid_dim: int = 128
    n_resnet_blocks: int = 2
    dropout_rate: float = 0.3
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, u: jax.Array, *, train: bool) -> jax.Array:
        """u: float32 [B, h, W, 2C] with W >= 2^num_halvings -> float32 [B, h, W', hid_dim]."""
        _check_kind(self.kind)
        if encoded_width(u.shape[2], self.downsample_rate) < 1:
            raise ValueError(f"width {u.shape[2]} too small for rate {self.downsample_rate}")
        names = (f"encoder_{i}" for i in itertools.count())
        d, init = self.init_dim, self.param_init
        x = EncBlock(self.kind, d, init, name=next(names))(u, train=train)
        for _ in range(num_halvings(self.downsample_rate) - 1):
            x = EncBlock(self.kind, 2 * d, init, name=next(names))(x, train=train)
            d *= 2
            for _ in range(self.n_resnet_blocks):
                x = ResBlock(self.kind, d, self.dropout_rate, init, name=next(names))(
                    x, train=train
                )
        x = ResBlock(self.kind, self.hid_dim, self.dropout_rate, init, name=next(names))(
            x, train=train
        )
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        return x / jnp.maximum(norm, NORMALIZE_EPS)


class ReleaseDecoder(nn.Module):
    """Latents [B, h, W', hid_dim] -> the branch's STFT rows [B, h, W_dec, out_channels].

    W_dec = `decoded_width(W', downsample_rate)` (not the input's STFT width: `rows_to_time`
    resizes the series instead). Mirror of `ReleaseEncoder`, ending in plain transposed convs:
    depthwise stride-2 + 1x1 to `out_channels`, then full stride-2 + 1x1.
    """

    kind: str
    downsample_rate: int
    init_dim: int = 4
    hid_dim: int = 128
    n_resnet_blocks: int = 2
    dropout_rate: float = 0.3
    out_channels: int = 2
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        """z: float [B, h, W', hid_dim] -> float32 [B, h, W_dec, out_channels]."""
        _check_kind(self.kind)
        if z.shape[-1] != self.hid_dim:
            raise ValueError(f"z must have hid_dim={self.hid_dim} channels, got {z.shape}")
        kernel, padding = _geometry(self.kind, SAMPLING_WIDTH)
        names = (f"decoder_{i}" for i in itertools.count())
        halvings, init = num_halvings(self.downsample_rate), self.param_init
        d = self.init_dim << (halvings - 1)
        x = ResBlock(self.kind, d, self.dropout_rate, init, name=next(names))(z, train=train)
        for _ in range(halvings - 1):
            for _ in range(self.n_resnet_blocks):
                x = ResBlock(self.kind, d, self.dropout_rate, init, name=next(names))(
                    x, train=train
                )
            d //= 2
            x = DecBlock(self.kind, d, init, name=next(names))(x, train=train)
        last, out = next(names), self.out_channels
        x = ConvTranspose(d, kernel, (1, 2), padding, groups=d, param_init=init, name=f"{last}_0")(
            x
        )
        x = ConvTranspose(out, (1, 1), param_init=init, name=f"{last}_1")(x)
        last = next(names)
        x = ConvTranspose(out, kernel, (1, 2), padding, param_init=init, name=f"{last}_0")(x)
        return ConvTranspose(out, (1, 1), param_init=init, name=f"{last}_1")(x)


def branch_rows(u: jax.Array, kind: str) -> jax.Array:
    """The branch's rows of a full STFT map [B, H, W, 2C]: LF [B, 1, W, 2C], HF [B, H-1, W, 2C]."""
    _check_kind(kind)
    return u[:, :1] if kind == "lf" else u[:, 1:]


def place_rows(rows: jax.Array, kind: str, num_rows: int) -> jax.Array:
    """Inverse of `branch_rows`: the rows in a zero map [B, num_rows, W, 2C]."""
    _check_kind(kind)
    missing = num_rows - rows.shape[1]
    pad = (0, missing) if kind == "lf" else (missing, 0)
    return jnp.pad(rows, ((0, 0), pad, (0, 0), (0, 0)))


def resize_linear(x: jax.Array, length: int) -> jax.Array:
    """`F.interpolate(x, length, mode='linear', align_corners=False)` along axis 1.

    x: float [B, L_in, C] -> [B, length, C]. Source position `(i + 0.5) L_in / length - 0.5`,
    clamped at 0, linear between its two neighbours (the last sample repeats at the end).
    """
    size_in = x.shape[1]
    src = np.maximum((np.arange(length) + 0.5) * (size_in / length) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = (src - lo).astype(np.float32)[None, :, None]
    return jnp.take(x, lo, axis=1) * (1.0 - frac) + jnp.take(x, hi, axis=1) * frac


def rows_to_time(rows: jax.Array, kind: str, n_fft: int, length: int) -> jax.Array:
    """A branch's STFT rows [B, h, W, 2C] -> series [B, length, C]: zero placement, ISTFT (Hann,
    normalised; `(W - 1) * n_fft // 4` samples), linear resize to `length`."""
    u = place_rows(rows.astype(jnp.float32), kind, n_fft // 2 + 1)
    return resize_linear(stft.istft(u, n_fft, window=WINDOW, normalized=True), length)


def frequency_targets(x: jax.Array, n_fft: int, length: int) -> tuple[jax.Array, jax.Array]:
    """The release's reconstruction targets (x_l, x_h) of series x [B, L, C]: the series of the
    STFT with only row 0 (LF) or only rows 1.. (HF) kept, each [B, length, C]."""
    u = stft.stft(x, n_fft, window=WINDOW, normalized=True)
    return tuple(rows_to_time(branch_rows(u, kind), kind, n_fft, length) for kind in KINDS)
