"""Building blocks of TimeVQVAE's release priors (`timevqvae` 1.0.1), Flax Linen: the
attention with a learned null key/value, the feed-forward with a weight-normed LayerNorm, and
the HF prior's `Upscale` of the LF embeddings (see `branch_prior`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import initializers
from ssl_vqvae.normalization import BatchNorm
from ssl_vqvae.weight_norm import WeightNormDense, WeightNormLayerNorm, weight_normalize

DIM_HEAD = 64  # the release fixes the attention head width
EMBED_INIT = nn.initializers.normal(stddev=1.0)  # torch nn.Embedding / torch.randn
L2NORM_EPS = 1e-12  # F.normalize clamps the norm at 1e-12
UPSCALE_KERNEL = 7


def layer_norm(name: str, epsilon: float = 1e-5) -> nn.LayerNorm:
    """torch's `LayerNorm` (default eps 1e-5), two-pass variance as torch."""
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)


def _l2norm(x: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, L2NORM_EPS)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output position of torch's `F.interpolate(mode='nearest')`.

    torch computes `floor(i * (in / out))` with a float32 scale; the same here (static numpy).
    """
    scale = np.float32(size_in) / np.float32(size_out)
    src = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, size_in - 1)


class Attention(nn.Module):
    """Self-attention of the release: [B, S, dim] -> [B, S, dim] (the residual is outside).

    LayerNorm -> q, (k, v) projections -> a learned null key/value prepended per head -> q, k
    l2-normalised and multiplied by learned per-dimension scales -> softmax(q k^T / sqrt(64)) v
    -> output projection -> LayerNorm.
    """

    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, seq, dim = x.shape
        inner = self.heads * DIM_HEAD
        x = layer_norm("norm")(x)
        q = WeightNormDense(inner, use_bias=False, name="to_q")(x)
        k, v = jnp.split(WeightNormDense(2 * inner, use_bias=False, name="to_kv")(x), 2, axis=-1)
        q, k, v = (t.reshape(batch, seq, self.heads, DIM_HEAD) for t in (q, k, v))
        null_kv = self.param("null_kv", EMBED_INIT, (2, self.heads, DIM_HEAD))
        null_k, null_v = (jnp.broadcast_to(t, (batch, 1, self.heads, DIM_HEAD)) for t in null_kv)
        k = jnp.concatenate([null_k, k], axis=1)
        v = jnp.concatenate([null_v, v], axis=1)
        q = _l2norm(q) * self.param("q_scale", nn.initializers.ones, (DIM_HEAD,))
        k = _l2norm(k) * self.param("k_scale", nn.initializers.ones, (DIM_HEAD,))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * DIM_HEAD**-0.5
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        out = WeightNormDense(dim, use_bias=False, name="to_out")(out.reshape(batch, seq, inner))
        return layer_norm("norm_out")(out)


class FeedForward(nn.Module):
    """LayerNorm -> WN Linear(dim, int(dim mult 2/3)) -> GELU -> WN LayerNorm -> Linear(., dim)."""

    mult: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        inner = int(dim * self.mult * 2 / 3)
        y = layer_norm("norm")(x)
        y = WeightNormDense(inner, use_bias=False, name="dense_in")(y)
        y = nn.gelu(y, approximate=False)
        y = WeightNormLayerNorm(name="inner_norm")(y)
        return initializers.dense(dim, inner, "torch", use_bias=False, name="dense_out")(y)


class WeightNormConv1d(nn.Module):
    """Weight-normed `torch.nn.Conv1d` with 'same' zero padding and dilation, channels-last.

    [B, L, in] -> [B, L, features]; `weight_v` [kernel, in, features], `weight_g` [features]
    (torch's v permuted (2, 1, 0), g flattened). Needs an odd effective kernel, as the release's.
    """

    features: int
    kernel_size: int
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, x.shape[-1], self.features)
        inits = initializers.layer_init(initializers.TORCH, x.shape[-1] * self.kernel_size)
        v = self.param("weight_v", inits["kernel_init"], shape)
        g = self.param("weight_g", lambda _: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1))))
        bias = self.param("bias", inits["bias_init"], (self.features,))
        pad = self.dilation * (self.kernel_size - 1) // 2
        y = jax.lax.conv_general_dilated(
            x,
            weight_normalize(v, g, 2),
            window_strides=(1,),
            padding=((pad, pad),),
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias


class Upscale(nn.Module):
    """LF embeddings [B, n, d] -> [B, size, d]: nearest upsampling, then WN Conv1d(d, 2d, 7),
    GELU, BatchNorm, WN Conv1d(2d, d, 7, dilation 2), all length-preserving."""

    @nn.compact
    def __call__(self, x: jax.Array, size: int, *, train: bool) -> jax.Array:
        dim = x.shape[-1]
        x = x[:, nearest_indices(x.shape[1], size)]
        x = WeightNormConv1d(2 * dim, UPSCALE_KERNEL, name="conv_in")(x)
        x = nn.gelu(x, approximate=False)
        x = BatchNorm(use_running_average=not train, name="norm")(x)
        return WeightNormConv1d(dim, UPSCALE_KERNEL, dilation=2, name="conv_out")(x)
