"""Stage-1 encoder and decoder on STFT maps (SPEC §2.2-§2.4), Flax Linen.

All maps are NHWC: `[batch, H = n_fft // 2 + 1, W = frames, channels]`. The encoder halves W in
each of its `num_down` blocks (H is kept); the decoder doubles W `num_up + 1` times and then
resizes (corner-aligned bilinear) to the exact STFT size.

`dtype` (initializers.COMPUTE_DTYPES) is the compute dtype of every convolution: the encoder and
decoder cast their input to it, BatchNorm normalises in float32 and hands back that dtype, and
the decoder returns float32 (the resize and everything after it run in float32).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import initializers
from ssl_vqvae.normalization import BatchNorm

LEAKY_RELU_SLOPE = 0.01
# (H, W) kernel of the down- and up-sampling convolutions; W is strided by 2, H by 1.
SAMPLING_KERNEL = (3, 4)
WIDTH_STRIDE = 2


def downsample_rate(length: int, n_fft: int, downsampled_width: int) -> int:
    """Target width reduction `round(L / (log2(n_fft) - 1) / downsampled_width)` (SPEC §2.2).

    Python `round` (half to even), as the reference; 1 when `length < downsampled_width`.
    """
    if length < downsampled_width:
        return 1
    return round(length / (math.log2(n_fft) - 1) / downsampled_width)


def num_downsample_blocks(length: int, n_fft: int, downsampled_width: int) -> int:
    """Number of stride-2 encoder blocks `1 + max(int(log2(rate)) - 1, 0)` (SPEC §2.2).

    A rate that rounds to 0 (e.g. L = 8 with the defaults) is treated as 1, where the reference
    would fail on log2(0).
    """
    rate = max(downsample_rate(length, n_fft, downsampled_width), 1)
    # rate.bit_length() - 1 == floor(log2(rate)) exactly, without float rounding at powers of 2.
    return 1 + max(rate.bit_length() - 2, 0)


def encoded_width(width: int, num_down: int) -> int:
    """Width W' after `num_down` encoder blocks, each mapping W -> floor(W / 2)."""
    return width >> num_down


def _interpolation(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corner-aligned source indices (lo, hi) and weights of hi for one axis (static numpy)."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = np.arange(size_out) * scale
    lo = np.minimum(np.floor(src).astype(np.int32), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _lerp_axis(x: jnp.ndarray, size_out: int, axis: int) -> jnp.ndarray:
    lo, hi, frac = _interpolation(x.shape[axis], size_out)
    shape = [1] * x.ndim
    shape[axis] = size_out
    frac = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1.0 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear_align_corners(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize with `align_corners=True` (as `F.interpolate`): corner pixels map exactly.

    `jax.image.resize` only offers half-pixel centres, hence this explicit form. Gathers and
    lerps (not an interpolation matmul) keep it exact under reduced-precision matmul defaults.

    Args:
      x: float32 [batch, H, W, channels].
      out_hw: (H_out, W_out), both >= 1. An output size of 1 takes the first row/column.

    Returns:
      float32 [batch, H_out, W_out, channels].
    """
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"out_hw must be two sizes >= 1, got {out_hw}")
    return _lerp_axis(_lerp_axis(x, out_hw[0], axis=1), out_hw[1], axis=2)


class UpsampleConv(nn.Module):
    """PyTorch `ConvTranspose2d(kernel (3, 4), stride (1, 2), padding (1, 1))`: W doubles, H kept.

    Equal to `jax.lax.conv_transpose(x, kernel, (1, 2), ((1, 1), (2, 2)))` with the same `kernel`
    (so weights are interchangeable with `nn.ConvTranspose`), but computed in polyphase form:
    output column 2i is `x[i-1] K[:, 0] + x[i] K[:, 2]` and column 2i+1 is
    `x[i] K[:, 1] + x[i+1] K[:, 3]`, i.e. two stride-1 convolutions with the phase kernels
    `K[:, 0::2]` and `K[:, 1::2]`, interleaved. On XLA:CPU this avoids the very slow weight
    gradient of input-dilated convolutions (and of a fused two-phase convolution with W + 1
    outputs); both phases keep exactly W outputs via one-sided padding.
    """

    features: int
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float [batch, H, W, in] -> [batch, H, 2 W, features] in `dtype`."""
        batch, height, width, in_features = x.shape
        # torch reads a transposed convolution's fan-in off its (in, out, kh, kw) weight's dim 1.
        inits = initializers.layer_init(self.param_init, self.features * math.prod(SAMPLING_KERNEL))
        kernel = self.param(
            "kernel", inits["kernel_init"], (*SAMPLING_KERNEL, in_features, self.features)
        )
        bias = self.param("bias", inits["bias_init"], (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(
            x, kernel, bias, dtype=initializers.compute_dtype(self.dtype)
        )

        def phase(phase_kernel: jnp.ndarray, width_pad: tuple[int, int]) -> jnp.ndarray:
            return jax.lax.conv_general_dilated(
                x,
                phase_kernel,
                window_strides=(1, 1),
                padding=((1, 1), width_pad),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )

        even = phase(kernel[:, 0::2], (1, 0))  # taps x[i-1], x[i]
        odd = phase(kernel[:, 1::2], (0, 1))  # taps x[i], x[i+1]
        y = jnp.stack([even, odd], axis=3).reshape(batch, height, WIDTH_STRIDE * width, -1)
        return y + bias


def _batch_norm(train: bool) -> BatchNorm:
    return BatchNorm(use_running_average=not train)


class DownBlock(nn.Module):
    """Edge pad 1 -> Conv (3, 4) stride (1, 2) -> BN -> LeakyReLU -> Dropout: W -> floor(W / 2)."""

    features: int
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """x: float [batch, H, W, in] -> [batch, H, W // 2, features] in `dtype`."""
        # PyTorch padding_mode="replicate" on H and W.
        in_features = x.shape[-1]
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        x = initializers.conv(
            self.features,
            in_features,
            SAMPLING_KERNEL,
            self.param_init,
            self.dtype,
            strides=(1, WIDTH_STRIDE),
            padding="VALID",
        )(x)
        x = _batch_norm(train)(x)
        x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class ResBlock(nn.Module):
    """`x + f(x)`, f = LReLU -> Conv 3x3 -> [BN] -> Dropout -> LReLU -> Conv 1x1 -> Dropout.

    The inner BN is present in the encoder and absent in the decoder (SPEC §2.3, §2.4).
    """

    use_batch_norm: bool
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """x: [batch, H, W, d] in `dtype` -> same shape and dtype."""
        features = x.shape[-1]
        y = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
        y = initializers.conv(
            features, features, (3, 3), self.param_init, self.dtype, padding=((1, 1), (1, 1))
        )(y)
        if self.use_batch_norm:
            y = _batch_norm(train)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.leaky_relu(y, LEAKY_RELU_SLOPE)
        y = initializers.conv(features, features, (1, 1), self.param_init, self.dtype)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return x + y


class UpBlock(nn.Module):
    """UpsampleConv -> BN -> LeakyReLU -> Dropout: W -> 2 W."""

    features: int
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """x: float [batch, H, W, in] -> [batch, H, 2 W, features] in `dtype`."""
        x = UpsampleConv(self.features, self.param_init, self.dtype)(x)
        x = _batch_norm(train)(x)
        x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class Encoder(nn.Module):
    """`num_down` DownBlocks (2C -> d, then d -> d) and `num_res_blocks` x (ResBlock -> BN)."""

    num_down: int
    hidden_dim: int = 64
    num_res_blocks: int = 4
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, u: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """u: float [batch, H, W, 2C] -> z: [batch, H, W >> num_down, hidden_dim] in `dtype`."""
        if self.num_down < 1:
            raise ValueError(f"num_down must be >= 1, got {self.num_down}")
        if encoded_width(u.shape[2], self.num_down) < 1:
            raise ValueError(
                f"input width {u.shape[2]} is too small for num_down={self.num_down} halvings"
            )
        x = u.astype(initializers.compute_dtype(self.dtype))
        for _ in range(self.num_down):
            x = DownBlock(self.hidden_dim, self.dropout_rate, self.param_init, self.dtype)(
                x, train=train
            )
        for _ in range(self.num_res_blocks):
            x = ResBlock(True, self.dropout_rate, self.param_init, self.dtype)(x, train=train)
            x = _batch_norm(train)(x)
        return x


class Decoder(nn.Module):
    """Inverse of `Encoder`, with one upsampling more than the encoder had (SPEC §2.4).

    `num_res_blocks` x (ResBlock without inner BN -> BN), `num_up - 1` UpBlocks d -> d,
    UpsampleConv d -> out_channels, UpsampleConv out_channels -> out_channels, then a
    corner-aligned bilinear resize to the STFT size, in float32.
    """

    out_channels: int
    num_up: int
    hidden_dim: int = 64
    num_res_blocks: int = 4
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, z: jnp.ndarray, output_hw: tuple[int, int], *, train: bool) -> jnp.ndarray:
        """z: float [batch, H', W', hidden_dim] -> float32 [batch, *output_hw, out_channels]."""
        if self.num_up < 1:
            raise ValueError(f"num_up must be >= 1, got {self.num_up}")
        if z.shape[-1] != self.hidden_dim:
            raise ValueError(f"z must have hidden_dim={self.hidden_dim} channels, got {z.shape}")
        x = z.astype(initializers.compute_dtype(self.dtype))
        for _ in range(self.num_res_blocks):
            x = ResBlock(False, self.dropout_rate, self.param_init, self.dtype)(x, train=train)
            x = _batch_norm(train)(x)
        for _ in range(self.num_up - 1):
            x = UpBlock(self.hidden_dim, self.dropout_rate, self.param_init, self.dtype)(
                x, train=train
            )
        x = UpsampleConv(self.out_channels, self.param_init, self.dtype)(x)
        x = UpsampleConv(self.out_channels, self.param_init, self.dtype)(x)
        return resize_bilinear_align_corners(x.astype(jnp.float32), tuple(output_hw))
