"""Bidirectional MaskGIT prior over stage-1 token ids (SPEC §4.2 token-index, §4.3 full-embedding).

Both variants share the embedding stem and the x-transformers-style pre-RMSNorm encoder; they differ
in how token ids enter (an id table with a mask row vs. a finetuned codebook plus a learned mask
vector) and in the output head (weight-tied logits plus a per-position bias vs. a plain Dense).

Mixed precision (`dtype`, config `prior.dtype`): "float32", the default, is the reference's
numerics. "bfloat16" runs the trunk, from `proj_in` to `proj_out` (every q/k/v/out and
feed-forward Dense and both attention matmuls), in bfloat16 with float32 parameters, so the
residual stream between blocks is bfloat16. Kept in float32: the embedding stem (lookups,
position embeddings, `emb_norm`), RMSNorm's normalisation (handed back in bfloat16), the
attention softmax, and the whole head from `head_dense` to the logits, which are float32 for the
cross-entropy and the sampler. The casts sit at those boundaries.
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers

TOKEN_INDEX = "token_index"
FULL_EMBEDDING = "full_embedding"
VARIANTS = (TOKEN_INDEX, FULL_EMBEDDING)

# torch LayerNorm(eps=1e-12) in the reference prior (SPEC §7.1).
LAYER_NORM_EPS = 1e-12
# The reference RMSNorm is F.normalize(x) * sqrt(dim) * g; F.normalize clamps ||x|| at 1e-12.
RMS_NORM_EPS = 1e-12
# torch nn.Embedding and torch.randn initialise embeddings / the mask vector with N(0, 1).
EMBED_INIT = nn.initializers.normal(stddev=1.0)

# Parameter names the stage-1 codebook is copied into (see `init_embeddings_from_codebook`).
_CODEBOOK_TABLES = {TOKEN_INDEX: "tok_emb", FULL_EMBEDDING: "codebook"}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _layer_norm(name: str) -> nn.LayerNorm:
    # Two-pass variance like torch: E[x^2] - E[x]^2 loses precision with an eps as small as 1e-12.
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, name=name)


class RMSNorm(nn.Module):
    """`x / max(||x||, eps) * sqrt(dim) * g` over the last axis; `g` starts at 1.

    x: float [..., dim] -> [..., dim] in x's dtype, computed in float32.
    """

    epsilon: float = RMS_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        gain = self.param("scale", nn.initializers.ones, (dim,))
        x32 = x.astype(jnp.float32)
        sum_sq = jnp.sum(jnp.square(x32), axis=-1, keepdims=True)
        # Clamping the squared norm (not the norm) keeps the gradient finite at x = 0, where the
        # derivative of sqrt is infinite; the forward value equals the torch clamp.
        inv_norm = jax.lax.rsqrt(jnp.maximum(sum_sq, self.epsilon**2))
        y = x32 * inv_norm * jnp.sqrt(jnp.asarray(dim, jnp.float32)) * gain
        return y.astype(x.dtype)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with bias-free q/k/v/out projections.

    Scores are scaled by `head_dim ** -0.5`; dropout acts on the attention weights. Projections
    and matmuls compute in `dtype`, the softmax in float32.
    x: float [batch, seq, hidden] -> [batch, seq, hidden] in `dtype`.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        batch, seq, hidden = x.shape
        inner = self.num_heads * self.head_dim

        def project(name: str) -> jax.Array:
            y = initializers.dense(
                inner, hidden, self.param_init, self.dtype, use_bias=False, name=name
            )(x)
            return y.reshape(batch, seq, self.num_heads, self.head_dim)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * self.head_dim**-0.5
        weights = jax.nn.softmax(scores, axis=-1)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        y = y.reshape(batch, seq, inner)
        return initializers.dense(
            hidden, inner, self.param_init, self.dtype, use_bias=False, name="out"
        )(y)


class EncoderBlock(nn.Module):
    """Pre-norm block `x + Attn(RMSNorm(x))`, then `x + FF(RMSNorm(x))`; bidirectional attention.

    x: [batch, seq, hidden] in `dtype` -> same shape and dtype.
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        hidden = x.shape[-1]
        y = RMSNorm(name="attn_norm")(x)
        y = SelfAttention(
            self.num_heads,
            self.head_dim,
            self.dropout_rate,
            self.param_init,
            self.dtype,
            name="attn",
        )(y, train=train)
        x = x + y
        y = RMSNorm(name="mlp_norm")(x)
        y = initializers.dense(self.mlp_dim, hidden, self.param_init, self.dtype, name="mlp_in")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        y = initializers.dense(hidden, self.mlp_dim, self.param_init, self.dtype, name="mlp_out")(y)
        return x + y


class MaskGITTransformer(nn.Module):
    """Class-conditional bidirectional prior: token ids (mask id = `codebook_size`) -> code logits.

    `variant="token_index"` is SPEC §4.2 (naive-VQVAE baseline), `"full_embedding"` is §4.3 (SSL
    runs). Class id `num_classes` is the null (unconditional) class. `dropout_rate` applies to the
    embeddings, attention weights and feed-forward hidden layer (all 0 in the reference).
    `param_init`: "torch" initialises the Linear layers as the reference does, "flax" uses Flax's
    defaults; embeddings are N(0, 1) either way, as torch's `nn.Embedding`. `dtype` is the
    compute dtype of the trunk, "float32" or "bfloat16" (see the module docstring).
    """

    codebook_size: int
    num_tokens: int
    num_classes: int
    variant: str = TOKEN_INDEX
    embed_dim: int = 64
    hidden_dim: int = 256
    depth: int = 4
    num_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 256
    dropout_rate: float = 0.0
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    def __post_init__(self) -> None:
        _check_variant(self.variant)
        initializers.compute_dtype(self.dtype)  # fails early on an unknown name
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, class_ids: jax.Array, *, train: bool) -> jax.Array:
        """tokens: int32 [batch, num_tokens] in 0..K; class_ids: int32 [batch] in 0..num_classes.

        Returns float32 [batch, num_tokens, K] logits over the K codes.
        """
        self._check_inputs(tokens, class_ids)
        n, k = self.num_tokens, self.codebook_size

        if self.variant == TOKEN_INDEX:
            tok_emb = nn.Embed(k + 1, self.embed_dim, embedding_init=EMBED_INIT, name="tok_emb")
            x = tok_emb(tokens)
        else:
            codebook = nn.Embed(k, self.embed_dim, embedding_init=EMBED_INIT, name="codebook")
            mask_emb = self.param("mask_emb", EMBED_INIT, (self.embed_dim,))
            is_mask = (tokens == k)[..., None]
            # Mask ids are clamped to a valid row only to keep the lookup in range.
            x = jnp.where(is_mask, mask_emb, codebook(jnp.minimum(tokens, k - 1)))

        # The reference allocates N + 1 position rows and adds the first N (none for the class).
        pos_emb = self.param("pos_emb", EMBED_INIT, (n + 1, self.embed_dim))
        x = _layer_norm("emb_norm")(x + pos_emb[:n])
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        class_emb = nn.Embed(
            self.num_classes + 1, self.embed_dim, embedding_init=EMBED_INIT, name="class_emb"
        )(class_ids)
        x = jnp.concatenate([class_emb[:, None, :], x], axis=1)  # [batch, N + 1, embed]

        dense = functools.partial(initializers.dense, scheme=self.param_init)
        trunk = functools.partial(dense, dtype=self.dtype)  # the head and stem: float32
        h = trunk(self.hidden_dim, self.embed_dim, use_bias=False, name="proj_in")(x)
        hidden_pos = self.param("hidden_pos_emb", EMBED_INIT, (n + 1, self.hidden_dim))
        h = h + (hidden_pos * self.hidden_dim**-0.5).astype(h.dtype)
        for i in range(self.depth):
            h = EncoderBlock(
                num_heads=self.num_heads,
                head_dim=self.head_dim,
                mlp_dim=self.mlp_dim,
                dropout_rate=self.dropout_rate,
                param_init=self.param_init,
                dtype=self.dtype,
                name=f"block_{i}",
            )(h, train=train)
        h = RMSNorm(name="final_norm")(h)
        x = trunk(self.embed_dim, self.hidden_dim, use_bias=False, name="proj_out")(h)

        x = dense(self.embed_dim, self.embed_dim, name="head_dense")(x)
        x = nn.gelu(x, approximate=False)
        x = _layer_norm("head_norm")(x)
        x = x[:, 1:]  # drop the class position: [batch, N, embed]
        if self.variant == TOKEN_INDEX:
            logit_bias = self.param("logit_bias", nn.initializers.zeros, (n, k + 1))
            logits = tok_emb.attend(x) + logit_bias
            logits = logits[..., :k]  # the mask id is never a prediction target
        else:
            logits = dense(k, self.embed_dim, name="head_out")(x)
        return logits.astype(jnp.float32)

    def _check_inputs(self, tokens: jax.Array, class_ids: jax.Array) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"tokens must have shape [batch, {self.num_tokens}], got {tuple(tokens.shape)}"
            )
        if class_ids.shape != tokens.shape[:1]:
            raise ValueError(
                f"class_ids must have shape [{tokens.shape[0]}], got {tuple(class_ids.shape)}"
            )


def init_embeddings_from_codebook(
    params: Mapping[str, Any], codebook: jax.Array, variant: str
) -> dict[str, Any]:
    """Returns `params` with the id embedding set to the frozen stage-1 codebook (SPEC §4.2/§4.3).

    params: the 'params' collection of a `MaskGITTransformer` of this `variant`.
    codebook: float [K, embed_dim]. For "token_index" rows 0..K-1 of `tok_emb` are replaced and the
    mask row K is kept; for "full_embedding" the finetuned `codebook` table is replaced.
    Pure: the input pytree is not modified.
    """
    _check_variant(variant)
    name = _CODEBOOK_TABLES[variant]
    if name not in params:
        raise ValueError(
            f"params has no {name!r} entry; pass the 'params' collection of a {variant} model"
        )
    table = params[name]["embedding"]
    num_codes = table.shape[0] - 1 if variant == TOKEN_INDEX else table.shape[0]
    expected = (num_codes, table.shape[1])
    codebook = jnp.asarray(codebook)
    if codebook.shape != expected:
        raise ValueError(f"codebook must have shape {expected}, got {tuple(codebook.shape)}")
    new_table = table.at[:num_codes].set(codebook.astype(table.dtype))
    return {**params, name: {**params[name], "embedding": new_table}}
