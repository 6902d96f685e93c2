"""Weight-normalised layers with `torch.nn.utils.weight_norm` semantics, and the Snake activation.

torch reparametrises a weight as `w = g * v / ||v||` with the norm over every axis but `dim`
(default 0) of the *torch* weight, with no epsilon. That is the output-channel axis for
`Linear` / `Conv2d` (weight [out, in, ...]) but the *input*-channel axis for `ConvTranspose2d`
(weight [in, out / groups, kh, kw]) and each element for a 1-D weight (a wrapped `LayerNorm`).
At initialisation torch sets `g = ||v||`, so `w` starts as the layer's default weight.

Every layer here stores `weight_v`, `weight_g` (and `bias`) under torch's names, channels-last:

| layer                   | `weight_v`                 | `weight_g` | from torch            |
|-------------------------|----------------------------|------------|-----------------------|
| WeightNormDense         | [in, out]                  | [out]      | v.T, g.flatten()      |
| WeightNormConv          | [kh, kw, in / groups, out] | [out]      | v.permute(2, 3, 1, 0) |
| WeightNormConvTranspose | [kh, kw, in, out / groups] | [in]       | v.permute(2, 3, 0, 1) |
| WeightNormLayerNorm     | [features]                 | [features] | as is                 |

`ConvTranspose` (no weight norm) stores `kernel` [kh, kw, in, out / groups] (torch's weight
permuted (2, 3, 0, 1)) and `bias`. Parameters are float32; layers compute in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import depthwise, initializers

Padding = tuple[tuple[int, int], tuple[int, int]]
PADDING_MODES = ("zeros", "replicate")
SNAKE_RANGE = (0.2, 0.5)  # the release's U(a_base, a_max) initialisation of Snake's `a`


def weight_normalize(v: jax.Array, g: jax.Array, axis: int) -> jax.Array:
    """`g * v / ||v||`, the norm over every axis of `v` but `axis` (whose size is `g`'s)."""
    others = tuple(a for a in range(v.ndim) if a != axis % v.ndim)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=others, keepdims=True))
    shape = [1] * v.ndim
    shape[axis] = -1
    return v * (g.reshape(shape) / norm)


def _norm_init(v: jax.Array, axis: int) -> nn.initializers.Initializer:
    """Initialiser of `weight_g` = `||v||` (so that `w == v` at initialisation)."""
    others = tuple(a for a in range(v.ndim) if a != axis % v.ndim)
    return lambda key: jnp.sqrt(jnp.sum(jnp.square(v), axis=others))


def conv_transpose_torch(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[int],
    groups: int = 1,
) -> jax.Array:
    """`torch.nn.functional.conv_transpose2d` in NHWC (no output padding, no dilation).

    x: float [B, H, W, in]; kernel: [kh, kw, in, out / groups] (torch's weight permuted
    (2, 3, 0, 1)); padding: (ph, pw) <= kernel - 1. Returns [B, H_out, W_out, out] with
    `H_out = (H - 1) * stride - 2 * ph + kh` (likewise W). Depthwise kernels (groups = in,
    one output each) run as `depthwise.conv_transpose`, 1x1 stride-1 kernels as matmuls.
    """
    kh, kw, cin, out_per_group = kernel.shape
    if cin % groups or x.shape[-1] != cin:
        raise ValueError(f"input channels {x.shape[-1]} / kernel {kernel.shape} / groups {groups}")
    if groups == cin and out_per_group == 1:
        return depthwise.conv_transpose(x, kernel, strides, padding)
    if (kh, kw, groups) == (1, 1, 1) and tuple(strides) == (1, 1):
        return jnp.matmul(x, kernel[0, 0])
    # Equivalent stride-1 convolution of the stride-dilated input with the flipped kernel,
    # whose output channels are grouped as torch groups its transposed weight's input channels.
    kernel = kernel.reshape(kh, kw, groups, cin // groups, out_per_group)
    kernel = jnp.transpose(kernel, (0, 1, 3, 2, 4)).reshape(kh, kw, cin // groups, -1)
    kernel = kernel[::-1, ::-1]
    pads = [(k - 1 - p, k - 1 - p) for k, p in zip((kh, kw), padding, strict=True)]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=tuple(strides),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


class Snake(nn.Module):
    """`x + sin(a x)^2 / a` with a learnable per-channel `a` ~ U(0.2, 0.5) (last axis)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def init(key: jax.Array, shape: Sequence[int]) -> jax.Array:
            return jax.random.uniform(key, shape, jnp.float32, *SNAKE_RANGE)

        a = self.param("a", init, (x.shape[-1],))
        return x + jnp.square(jnp.sin(a * x)) / a


class WeightNormDense(nn.Module):
    """Weight-normed `torch.nn.Linear(in, features, bias=use_bias)`: [..., in] -> [..., features].

    `weight_g` is per output feature (the norm runs over the input axis)."""

    features: int
    use_bias: bool = True
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = initializers.layer_init(self.param_init, x.shape[-1])
        v = self.param("weight_v", inits["kernel_init"], (x.shape[-1], self.features))
        g = self.param("weight_g", _norm_init(v, 1))
        y = jnp.matmul(x, weight_normalize(v, g, 1))
        if self.use_bias:
            y = y + self.param("bias", inits["bias_init"], (self.features,))
        return y


class WeightNormLayerNorm(nn.Module):
    """`weight_norm(torch.nn.LayerNorm(features))` over the last axis: the affine weight is
    `weight_g * weight_v / |weight_v|` element-wise (both init 1), the bias init 0."""

    epsilon: float = 1e-5
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        v = self.param("weight_v", nn.initializers.ones, (features,))
        g = self.param("weight_g", nn.initializers.ones, (features,))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * weight_normalize(v, g, 0)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (features,))
        return y


class WeightNormConv(nn.Module):
    """Weight-normed `torch.nn.Conv2d` in NHWC: [B, H, W, in] -> [B, H', W', features].

    `padding` is explicit ((top, bottom), (left, right)); `padding_mode="replicate"` pads by
    repeating edge values (torch's `padding_mode='replicate'`), "zeros" with zeros. Depthwise
    convs run as `depthwise.conv`, unpadded 1x1 convs as matmuls (faster on XLA:CPU).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    groups: int = 1
    padding_mode: str = "zeros"
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={self.padding_mode!r}; expected {PADDING_MODES}")
        in_per_group = x.shape[-1] // self.groups
        shape = (*self.kernel_size, in_per_group, self.features)
        inits = initializers.layer_init(self.param_init, in_per_group * math.prod(self.kernel_size))
        v = self.param("weight_v", inits["kernel_init"], shape)
        g = self.param("weight_g", _norm_init(v, 3))
        bias = self.param("bias", inits["bias_init"], (self.features,))
        padding = self.padding
        if self.padding_mode == "replicate":
            x = jnp.pad(x, ((0, 0), *padding, (0, 0)), mode="edge")
            padding = ((0, 0), (0, 0))
        kernel = weight_normalize(v, g, 3)
        if self.groups == x.shape[-1] == self.features:  # depthwise: see `depthwise`
            return depthwise.conv(x, kernel, self.strides, padding) + bias
        pointwise = (self.kernel_size, self.strides, self.groups) == ((1, 1), (1, 1), 1)
        if pointwise and padding == ((0, 0), (0, 0)):
            return jnp.matmul(x, kernel[0, 0]) + bias
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=self.strides,
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
        return y + bias


def _transpose_inits(
    scheme: str, features: int, groups: int, kernel_size: Sequence[int]
) -> dict[str, nn.initializers.Initializer]:
    # torch reads a transposed convolution's fan-in off its weight's dim 1 (out / groups).
    return initializers.layer_init(scheme, features // groups * math.prod(kernel_size))


class ConvTranspose(nn.Module):
    """`torch.nn.ConvTranspose2d` in NHWC (see `conv_transpose_torch`), torch's initialisation."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = _transpose_inits(self.param_init, self.features, self.groups, self.kernel_size)
        shape = (*self.kernel_size, x.shape[-1], self.features // self.groups)
        kernel = self.param("kernel", inits["kernel_init"], shape)
        bias = self.param("bias", inits["bias_init"], (self.features,))
        return conv_transpose_torch(x, kernel, self.strides, self.padding, self.groups) + bias


class WeightNormConvTranspose(nn.Module):
    """Weight-normed `torch.nn.ConvTranspose2d` in NHWC: `weight_g` is per *input* channel."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = _transpose_inits(self.param_init, self.features, self.groups, self.kernel_size)
        shape = (*self.kernel_size, x.shape[-1], self.features // self.groups)
        v = self.param("weight_v", inits["kernel_init"], shape)
        g = self.param("weight_g", _norm_init(v, 2))
        bias = self.param("bias", inits["bias_init"], (self.features,))
        kernel = weight_normalize(v, g, 2)
        return conv_transpose_torch(x, kernel, self.strides, self.padding, self.groups) + bias
