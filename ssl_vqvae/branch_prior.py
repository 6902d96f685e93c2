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

from ssl_vqvae import initializers
from ssl_vqvae.prior_blocks import EMBED_INIT, Attention, FeedForward, Upscale, layer_norm
from ssl_vqvae.weight_norm import WeightNormDense

KINDS = ("lf", "hf")
HEAD_LAYER_NORM_EPS = 1e-12


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
        lf_context: jax.Array | None = None,
        context_only: bool = False,
    ) -> jax.Array:
        """tokens_lf: int32 [B, n_lf]; tokens_hf: int32 [B, n_hf] (HF) or None (LF);
        class_ids: int32 [B] in 0..num_classes. Returns float32 [B, num_tokens, K_branch].

        HF only: `context_only` returns the upscaled LF embeddings [B, num_tokens, embed_dim]
        (the LF context), and `lf_context` takes them instead of computing them from
        `tokens_lf`; decoding computes the context once per batch, not once per step.
        """
        self._check_inputs(tokens_lf, tokens_hf, class_ids, context_only)
        if self.kind == "lf":
            emb = self._token_embedding(tokens_lf, self.codebook_size_lf, "tok_emb_l", train)
        else:
            if lf_context is None:
                emb_lf = self._token_embedding(tokens_lf, self.codebook_size_lf, "tok_emb_l", train)
                lf_context = Upscale(name="projector")(emb_lf, self.num_tokens, train=train)
            if context_only:
                return lf_context
            emb_h = self._token_embedding(tokens_hf, self.codebook_size_hf, "tok_emb_h", train)
            emb = jnp.concatenate([lf_context, emb_h], axis=-1)
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
        x = layer_norm("head_norm", HEAD_LAYER_NORM_EPS)(x)
        codebook_size = self.codebook_size_lf if self.kind == "lf" else self.codebook_size_hf
        # Position 0 (the class) gets no logits: dropped before the widest layer.
        logits = WeightNormDense(codebook_size, name="head_out")(x[:, 1:])
        return logits.astype(jnp.float32)

    def _check_inputs(
        self,
        tokens_lf: jax.Array,
        tokens_hf: jax.Array | None,
        class_ids: jax.Array,
        context_only: bool,
    ) -> None:
        n_lf = self.num_tokens if self.kind == "lf" else self.num_tokens_lf
        if tokens_lf.ndim != 2 or tokens_lf.shape[1] != n_lf:
            raise ValueError(f"tokens_lf must be [batch, {n_lf}], got {tuple(tokens_lf.shape)}")
        if context_only and self.kind != "hf":
            raise ValueError("only the HF branch has an LF context")
        if self.kind == "hf" and not context_only:
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
        self,
        tokens_lf: jax.Array,
        tokens_hf: jax.Array,
        class_ids: jax.Array,
        *,
        train: bool,
        lf_context: jax.Array | None = None,
    ) -> jax.Array:
        """HF logits float32 [B, num_tokens_hf, codebook_size_hf] from complete LF ids (or their
        precomputed `hf_context`) and (masked) HF ids."""
        return self.hf(tokens_lf, tokens_hf, class_ids, train=train, lf_context=lf_context)

    def hf_context(self, tokens_lf: jax.Array, class_ids: jax.Array) -> jax.Array:
        """The HF prior's eval-mode input from the LF ids: float32 [B, num_tokens_hf, embed_dim]."""
        return self.hf(tokens_lf, None, class_ids, train=False, context_only=True)

    def __call__(
        self, tokens_lf: jax.Array, tokens_hf: jax.Array, class_ids: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Both branches' logits on the same inputs (LF on tokens_lf, HF on both)."""
        return (
            self.lf_logits(tokens_lf, class_ids, train=train),
            self.hf_logits(tokens_lf, tokens_hf, class_ids, train=train),
        )
