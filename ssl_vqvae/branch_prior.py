"""TimeVQVAE's two priors (release `timevqvae` 1.0.1, `BidirectionalTransformer`), Flax Linen.

One `BranchTransformer` predicts the low-frequency (LF) token ids, a second one the
high-frequency (HF) ids given the complete LF ids. Each is: token embeddings (mask id = K), a
class embedding (null class = `num_classes`) prepended as position 0, absolute position
embeddings, `proj_in`, pre-norm blocks (attention with learned null key/value and l2-normalised,
learned-scale q/k; a feed-forward with a weight-normed LayerNorm inside) and a weight-normed
prediction head. The HF branch concatenates its embeddings with the LF ones, nearest-upsampled
to the HF length by `Upscale` (convolutions and a BatchNorm, hence `batch_stats`).

Train mode, as the release: token embeddings at non-mask positions get dropout `emb_dropout`,
class ids are replaced by the null class with probability `p_unconditional` (both draw from the
'dropout' rng stream), and the HF BatchNorm normalises with batch statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_vqvae import initializers
from ssl_vqvae.normalization import BatchNorm
from ssl_vqvae.weight_norm import WeightNormDense, WeightNormLayerNorm, weight_normalize

KINDS = ("lf", "hf")
DIM_HEAD = 64  # the release fixes the attention head width
EMBED_INIT = nn.initializers.normal(stddev=1.0)  # torch nn.Embedding / torch.randn
L2NORM_EPS = 1e-12  # F.normalize clamps the norm at 1e-12
HEAD_LAYER_NORM_EPS = 1e-12
UPSCALE_KERNEL = 7


def _layer_norm(name: str, epsilon: float = 1e-5) -> nn.LayerNorm:
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
        x = _layer_norm("norm")(x)
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
        return _layer_norm("norm_out")(out)


class FeedForward(nn.Module):
    """LayerNorm -> WN Linear(dim, int(dim mult 2/3)) -> GELU -> WN LayerNorm -> Linear(., dim)."""

    mult: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        inner = int(dim * self.mult * 2 / 3)
        y = _layer_norm("norm")(x)
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


class BranchTransformer(nn.Module):
    """The LF (`kind="lf"`) or HF (`kind="hf"`) prior: token ids -> logits over the branch's codes.

    Mask ids are `codebook_size_lf` / `codebook_size_hf`; class id `num_classes` is the null
    (unconditional) class. `num_tokens` is this branch's sequence length; `num_tokens_lf` (HF
    only) the length of the LF ids it is conditioned on.
    """

    kind: str
    num_tokens: int
    codebook_size_lf: int
    codebook_size_hf: int
    hidden_dim: int
    n_layers: int
    heads: int
    ff_mult: int
    num_classes: int
    embed_dim: int = 128
    emb_dropout: float = 0.3
    p_unconditional: float = 0.2
    num_tokens_lf: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "hf" and self.num_tokens_lf is None:
            raise ValueError("the HF branch needs num_tokens_lf")
        super().__post_init__()

    def _token_embedding(self, ids: jax.Array, size: int, name: str, train: bool) -> jax.Array:
        """Embeds ids (mask id = size); in train mode drops out the non-mask positions only."""
        emb = nn.Embed(size + 1, self.embed_dim, embedding_init=EMBED_INIT, name=name)(ids)
        dropped = nn.Dropout(self.emb_dropout)(emb, deterministic=not train)
        return jnp.where((ids == size)[..., None], emb, dropped)

    def _class_ids(self, class_ids: jax.Array, train: bool) -> jax.Array:
        if not train or self.p_unconditional == 0.0:
            return class_ids
        keep = jax.random.uniform(self.make_rng("dropout"), class_ids.shape) > self.p_unconditional
        return jnp.where(keep, class_ids, self.num_classes)

    @nn.compact
    def __call__(
        self,
        tokens_lf: jax.Array,
        tokens_hf: jax.Array | None,
        class_ids: jax.Array,
        *,
        train: bool,
    ) -> jax.Array:
        """tokens_lf: int32 [B, n_lf]; tokens_hf: int32 [B, n_hf] (HF) or None (LF);
        class_ids: int32 [B] in 0..num_classes. Returns float32 [B, num_tokens, K_branch]."""
        self._check_inputs(tokens_lf, tokens_hf, class_ids)
        emb = self._token_embedding(tokens_lf, self.codebook_size_lf, "tok_emb_l", train)
        if self.kind == "hf":
            emb_h = self._token_embedding(tokens_hf, self.codebook_size_hf, "tok_emb_h", train)
            emb_l = Upscale(name="projector")(emb, tokens_hf.shape[1], train=train)
            emb = jnp.concatenate([emb_l, emb_h], axis=-1)
        in_dim = emb.shape[-1]
        pos_emb = self.param("pos_emb", EMBED_INIT, (self.num_tokens + 1, in_dim))
        emb = emb + pos_emb[: self.num_tokens]
        cls_emb = nn.Embed(
            self.num_classes + 1, in_dim, embedding_init=EMBED_INIT, name="class_emb"
        )(self._class_ids(class_ids, train))
        x = jnp.concatenate([cls_emb[:, None], emb], axis=1)  # [B, 1 + N, in_dim]
        x = initializers.dense(self.hidden_dim, in_dim, initializers.TORCH, name="proj_in")(x)
        for i in range(self.n_layers):
            x = x + Attention(self.heads, name=f"attn_{i}")(x)
            x = x + FeedForward(self.ff_mult, name=f"ff_{i}")(x)
        x = WeightNormDense(self.hidden_dim, name="head_dense")(x)
        x = nn.gelu(x, approximate=False)
        x = _layer_norm("head_norm", HEAD_LAYER_NORM_EPS)(x)
        codebook_size = self.codebook_size_lf if self.kind == "lf" else self.codebook_size_hf
        logits = WeightNormDense(codebook_size, name="head_out")(x)
        return logits[:, 1:].astype(jnp.float32)

    def _check_inputs(
        self, tokens_lf: jax.Array, tokens_hf: jax.Array | None, class_ids: jax.Array
    ) -> None:
        n_lf = self.num_tokens if self.kind == "lf" else self.num_tokens_lf
        if tokens_lf.ndim != 2 or tokens_lf.shape[1] != n_lf:
            raise ValueError(f"tokens_lf must be [batch, {n_lf}], got {tuple(tokens_lf.shape)}")
        if self.kind == "hf":
            if tokens_hf is None or tokens_hf.shape != (tokens_lf.shape[0], self.num_tokens):
                shape = None if tokens_hf is None else tuple(tokens_hf.shape)
                raise ValueError(f"tokens_hf must be [batch, {self.num_tokens}], got {shape}")
        elif tokens_hf is not None:
            raise ValueError("the LF branch takes no tokens_hf")
        if class_ids.shape != tokens_lf.shape[:1]:
            raise ValueError(f"class_ids must be [{len(tokens_lf)}], got {tuple(class_ids.shape)}")


class TwoBranchPrior(nn.Module):
    """The LF and HF priors together (submodules `lf`, `hf`); flat JSON-friendly fields.

    `__call__` runs both (use it to initialise); `lf_logits` / `hf_logits` run one branch. The
    defaults are the release README's configuration.
    """

    num_tokens_lf: int
    num_tokens_hf: int
    codebook_size_lf: int
    codebook_size_hf: int
    num_classes: int
    embed_dim: int = 128
    lf_hidden_dim: int = 128
    lf_n_layers: int = 4
    lf_heads: int = 2
    lf_ff_mult: int = 1
    hf_hidden_dim: int = 32
    hf_n_layers: int = 1
    hf_heads: int = 1
    hf_ff_mult: int = 1
    emb_dropout: float = 0.3
    p_unconditional: float = 0.2

    def _branch(self, kind: str) -> BranchTransformer:
        hyper = ("hidden_dim", "n_layers", "heads", "ff_mult")
        return BranchTransformer(
            kind,
            self.num_tokens_lf if kind == "lf" else self.num_tokens_hf,
            codebook_size_lf=self.codebook_size_lf,
            codebook_size_hf=self.codebook_size_hf,
            num_classes=self.num_classes,
            embed_dim=self.embed_dim,
            emb_dropout=self.emb_dropout,
            p_unconditional=self.p_unconditional,
            num_tokens_lf=self.num_tokens_lf if kind == "hf" else None,
            name=kind,
            **{name: getattr(self, f"{kind}_{name}") for name in hyper},
        )

    def setup(self) -> None:
        self.lf = self._branch("lf")
        self.hf = self._branch("hf")

    def lf_logits(self, tokens_lf: jax.Array, class_ids: jax.Array, *, train: bool) -> jax.Array:
        """LF logits float32 [B, num_tokens_lf, codebook_size_lf] from (masked) LF ids."""
        return self.lf(tokens_lf, None, class_ids, train=train)

    def hf_logits(
        self, tokens_lf: jax.Array, tokens_hf: jax.Array, class_ids: jax.Array, *, train: bool
    ) -> jax.Array:
        """HF logits float32 [B, num_tokens_hf, codebook_size_hf] from complete LF ids and
        (masked) HF ids."""
        return self.hf(tokens_lf, tokens_hf, class_ids, train=train)

    def __call__(
        self, tokens_lf: jax.Array, tokens_hf: jax.Array, class_ids: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Both branches' logits on the same inputs (LF on tokens_lf, HF on both)."""
        return (
            self.lf_logits(tokens_lf, class_ids, train=train),
            self.hf_logits(tokens_lf, tokens_hf, class_ids, train=train),
        )
