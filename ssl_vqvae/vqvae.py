"""The stage-1 tokenizer: STFT -> encoder -> EMA vector quantiser -> decoder -> ISTFT (SPEC §2).

With a projector (SSL methods) the model also encodes an augmented view, reconstructs it from
its continuous (unquantised) latents and projects the pooled latents of both views (SPEC §2.6,
§3.2). Mutable state: `batch_stats` (BatchNorm, IterNorm) and `vq` (the EMA codebook).

Mixed precision (`dtype`, config `model.dtype`): "float32", the default, is the reference's
numerics. "bfloat16" runs the encoder's and decoder's convolutions and the projector's Dense
layers in bfloat16 (their activations are bfloat16) while the parameters stay float32, so the
optimizer updates float32 weights. Kept in float32, where bfloat16's 8-bit mantissa (relative
rounding 2^-9 ~ 2e-3 per op) would bias or destabilise the result: the STFT / ISTFT and the
decoder's final resize, BatchNorm statistics and normalisation, the whole vector quantiser
(distances, assignments, codewords, commitment loss, EMA codebook), IterNorm's whitening, the
SSL losses and every reconstruction loss. The casts sit at those boundaries: the encoder and
decoder cast their input to the compute dtype, the quantiser, decoder and projector return
float32, so every output of this module is float32 whatever `dtype` is.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers, layers, stft
from ssl_vqvae.quantizer import QuantizerOutput, VectorQuantizer
from ssl_vqvae.ssl import Projector, pool_mean_max

MUTABLE_COLLECTIONS = ("batch_stats", "vq")


def conv_codec(module: Any) -> tuple[layers.Encoder, VectorQuantizer, layers.Decoder]:
    """NC-VQVAE's encoder, EMA quantiser and decoder (SPEC §2.3-§2.5), configured by the fields
    of `module` (this file's VQVAE, or one band of the two-branch tokenizer: same field names)."""
    num_down = layers.num_downsample_blocks(module.length, module.n_fft, module.downsampled_width)
    shared = dict(
        hidden_dim=module.hidden_dim,
        num_res_blocks=module.num_res_blocks,
        dropout_rate=module.dropout_rate,
        param_init=module.param_init,
        dtype=module.dtype,
    )
    quantizer = VectorQuantizer(
        codebook_size=module.codebook_size,
        dim=module.hidden_dim,
        decay=module.ema_decay,
        commitment_weight=module.commitment_weight,
        dead_code=module.dead_code,
    )
    return (
        layers.Encoder(num_down=num_down, **shared),
        quantizer,
        layers.Decoder(out_channels=2 * module.channels, num_up=num_down, **shared),
    )


def projector_for(module: Any) -> Projector:
    """The SSL projector configured by a tokenizer's `projector_*`, `use_iternorm`,
    `iternorm_groups`, `param_init` and `dtype` fields."""
    return Projector(
        hidden_dim=module.projector_hidden_dim,
        output_dim=module.projector_output_dim,
        use_iternorm=module.use_iternorm,
        iternorm_groups=module.iternorm_groups,
        param_init=module.param_init,
        dtype=module.dtype,
    )


class VQVAE(nn.Module):
    """NC-VQVAE tokenizer for series of a fixed `length` and `channels`.

    `projector_output_dim = 0` disables the SSL branch (the plain VQ-VAE baseline). `param_init`
    picks the parameter initialisers: "torch" (the reference's, default) or "flax". `dtype` is
    the compute dtype, "float32" or "bfloat16" (see the module docstring).
    """

    length: int
    channels: int = 1
    n_fft: int = 8
    hidden_dim: int = 64
    num_res_blocks: int = 4
    downsampled_width: int = 8
    dropout_rate: float = 0.0
    codebook_size: int = 32
    ema_decay: float = 0.9
    commitment_weight: float = 1.0
    dead_code: str = "reference"  # see quantizer.DEAD_CODE_MODES
    projector_hidden_dim: int = 4096
    projector_output_dim: int = 0
    use_iternorm: bool = False
    iternorm_groups: int = 64
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    def setup(self) -> None:
        initializers.compute_dtype(self.dtype)  # fails early on an unknown name
        self.encoder, self.quantizer, self.decoder = conv_codec(self)
        if self.projector_output_dim:
            self.projector = projector_for(self)

    @property
    def stft_hw(self) -> tuple[int, int]:
        """(H, W) of the STFT map of one series."""
        return self.n_fft // 2 + 1, stft.num_frames(self.length, self.n_fft)

    @property
    def token_grid(self) -> tuple[int, int]:
        """(H, W') of the latent map; the token sequence has H * W' entries, row-major."""
        height, width = self.stft_hw
        num_down = layers.num_downsample_blocks(self.length, self.n_fft, self.downsampled_width)
        return height, layers.encoded_width(width, num_down)

    @property
    def token_segments(self) -> tuple[tuple[int, int], ...]:
        """((tokens, codebook size),): one segment of ids, all from the one codebook."""
        height, width = self.token_grid
        return ((height * width, self.codebook_size),)

    def encode(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """x: float32 [B, L, C] -> (u [B, H, W, 2C] STFT, z [B, H, W', hidden_dim] in `dtype`)."""
        u = stft.stft(x, self.n_fft)
        return u, self.encoder(u, train=train)

    def decode(self, z: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """z: [B, H, W', hidden_dim] -> float32 (u_hat [B, H, W, 2C], x_hat [B, 2*(L//2), C])."""
        u_hat = self.decoder(z, self.stft_hw, train=train)
        return u_hat, stft.istft(u_hat, self.n_fft)

    def quantize(
        self, z: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> QuantizerOutput:
        return self.quantizer(z, train=train, sample_temperature=sample_temperature)

    def __call__(
        self, x: jax.Array, x_aug: jax.Array | None = None, *, train: bool
    ) -> dict[str, Any]:
        """Forward pass of both views (SPEC §2.6).

        Args:
          x: float32 [B, L, C] original series.
          x_aug: float32 [B, L, C] augmented view (SSL methods only), encoded in a separate call
            so BatchNorm sees each view's batch alone.

        Returns:
          dict with `u`, `u_hat`, `x_hat`, `vq` (QuantizerOutput) and, with `x_aug`, `u_aug`,
          `u_aug_hat`, `x_aug_hat`, `proj` and `proj_aug` (projected pooled latents).
        """
        u, z = self.encode(x, train=train)
        vq = self.quantize(z, train=train)
        u_hat, x_hat = self.decode(vq.quantized, train=train)
        outputs: dict[str, Any] = {"u": u, "u_hat": u_hat, "x_hat": x_hat, "vq": vq}
        if x_aug is None and self.is_initializing() and self.projector_output_dim:
            x_aug = x  # create the projector's variables at init
        if x_aug is not None:
            if not self.projector_output_dim:
                raise ValueError("x_aug given but the model has no projector (ssl.method=none)")
            u_aug, z_aug = self.encode(x_aug, train=train)
            u_aug_hat, x_aug_hat = self.decode(z_aug, train=train)
            outputs.update(
                u_aug=u_aug,
                u_aug_hat=u_aug_hat,
                x_aug_hat=x_aug_hat,
                proj=self.projector(pool_mean_max(vq.quantized), train=train),
                proj_aug=self.projector(pool_mean_max(z_aug), train=train),
            )
        return outputs

    def tokenize(self, x: jax.Array, sample_temperature: float | None = None) -> jax.Array:
        """Token ids of series (eval mode): float32 [B, L, C] -> int32 [B, H * W'].

        `sample_temperature` draws codes from softmax(-distance / T) (stochastic VQ, needs the
        'sample' rng); None takes the nearest code.
        """
        _, z = self.encode(x, train=False)
        vq = self.quantize(z, train=False, sample_temperature=sample_temperature)
        return vq.indices.reshape(x.shape[0], -1)

    def representation(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Pooled quantised latents for linear probes (SPEC §5.4): [B, L, C] -> [B, hidden_dim].

        `train=True` is the reference's probe: BatchNorm on batch statistics and, with mutable
        collections, updates of the BN running statistics and the EMA codebook (SPEC §7.12).
        """
        _, z = self.encode(x, train=train)
        return jnp.mean(self.quantize(z, train=train).quantized, axis=(1, 2))

    def reconstruct(self, x: jax.Array) -> jax.Array:
        """Eval-mode reconstruction through the quantiser: [B, L, C] -> [B, 2*floor(L/2), C]."""
        _, z = self.encode(x, train=False)
        return self.decode(self.quantize(z, train=False).quantized, train=False)[1]

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """Series from token ids (eval mode): int32 [B, H * W'] -> float32 [B, 2*floor(L/2), C]."""
        height, width = self.token_grid
        codes = self.quantizer.lookup(tokens).reshape(tokens.shape[0], height, width, -1)
        return self.decode(codes, train=False)[1]

    def codebook(self) -> jax.Array:
        """The frozen EMA codebook: float32 [codebook_size, hidden_dim]."""
        return self.quantizer.lookup(jnp.arange(self.codebook_size))
