"""One frequency branch of TimeVQVAE's two-branch tokenizer: the LF branch (STFT bin 0) or the
HF branch (bins 1..), each with its own encoder, quantiser and decoder.

Two codecs:
- "ncvqvae": TimeVQVAE 2023 (SPEC §4.6), whose encoder, decoder and EMA quantiser NC-VQVAE kept
  (`layers`, `quantizer`): the encoder sees the whole STFT map with the other branch's rows set
  to zero, the decoded map is zeroed there again before the ISTFT.
- "timevqvae": the current release (`timevqvae` 1.0.1, `release_codec`): the encoder sees only
  the branch's rows, its latents are L2-normalised, the codebook is looked up in a projected
  space (k-means initialised), and the decoded series is linearly resized to the input length.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import config_lib, initializers, release_codec, stft
from ssl_vqvae.projected_quantizer import ProjectedQuantizer
from ssl_vqvae.quantizer import QuantizerOutput
from ssl_vqvae.vqvae import conv_codec

KINDS = ("lf", "hf")
CODECS = config_lib.CODECS


def row_mask(kind: str, num_rows: int) -> jnp.ndarray:
    """float32 [1, H, 1, 1]: 1 on the branch's STFT rows (LF: row 0; HF: rows 1..), else 0."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
    rows = jnp.arange(num_rows) == 0
    return jnp.where(rows if kind == "lf" else ~rows, 1.0, 0.0)[None, :, None, None]


class Branch(nn.Module):
    """Encoder -> quantiser -> decoder of one frequency band of series [B, length, channels]."""

    kind: str
    codec: str
    length: int
    channels: int
    n_fft: int
    window: str
    normalized: bool
    hidden_dim: int
    num_res_blocks: int
    init_dim: int  # "timevqvae" codec: width of the first encoder block
    downsampled_width: int
    dropout_rate: float
    codebook_size: int
    codebook_dim: int  # "timevqvae" codec: the projected codebook space
    kmeans_init: bool
    ema_decay: float
    commitment_weight: float
    dead_code: str
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    def setup(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec={self.codec!r}; expected one of {CODECS}")
        if self.codec == "ncvqvae":
            self.encoder, self.quantizer, self.decoder = conv_codec(self)
            return
        rate = release_codec.compute_downsample_rate(
            self.length, self.n_fft, self.downsampled_width
        )
        codec = dict(
            kind=self.kind,
            downsample_rate=rate,
            init_dim=self.init_dim,
            hid_dim=self.hidden_dim,
            n_resnet_blocks=self.num_res_blocks,
            dropout_rate=self.dropout_rate,
        )
        self.encoder = release_codec.ReleaseEncoder(**codec)
        self.decoder = release_codec.ReleaseDecoder(**codec, out_channels=2 * self.channels)
        self.quantizer = ProjectedQuantizer(
            dim=self.hidden_dim,
            codebook_size=self.codebook_size,
            codebook_dim=self.codebook_dim,
            decay=self.ema_decay,
            commitment_weight=self.commitment_weight,
            kmeans_init=self.kmeans_init,
        )

    @property
    def num_rows(self) -> int:
        return self.n_fft // 2 + 1

    def stft(self, x: jax.Array) -> jax.Array:
        """float32 [B, L, C] -> the full STFT map [B, H, W, 2C] with this model's window."""
        return stft.stft(x, self.n_fft, window=self.window, normalized=self.normalized)

    def band(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The branch's part of a full STFT map: (u_band [B, H, W, 2C] with the other rows
        zeroed, x_band its series), the reconstruction targets."""
        u_band = u * row_mask(self.kind, self.num_rows)
        return u_band, self.to_time(u_band)

    def to_time(self, u_band: jax.Array) -> jax.Array:
        """Series of a zero-padded band map (the release resizes it to `length`)."""
        x = stft.istft(u_band, self.n_fft, window=self.window, normalized=self.normalized)
        if self.codec == "timevqvae":
            x = release_codec.resize_linear(x, self.length)
        return x

    def encode(self, u: jax.Array, *, train: bool) -> jax.Array:
        """Full STFT map [B, H, W, 2C] -> latents [B, H', W', hidden_dim]."""
        if self.codec == "ncvqvae":
            return self.encoder(u * row_mask(self.kind, self.num_rows), train=train)
        return self.encoder(release_codec.branch_rows(u, self.kind), train=train)

    def quantize(
        self, z: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> QuantizerOutput:
        return self.quantizer(z, train=train, sample_temperature=sample_temperature)

    def decode(self, z: jax.Array, width: int, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Latents -> (u_hat [B, H, W_out, 2C] zero outside the band, x_hat [B, L_out, C]).

        `width` is the STFT width W the "ncvqvae" decoder resizes to; the release's decoder
        keeps its own width and resizes the series instead."""
        if self.codec == "ncvqvae":
            u_hat = self.decoder(z, (self.num_rows, width), train=train)
            u_hat = u_hat * row_mask(self.kind, self.num_rows)
        else:
            rows = self.decoder(z, train=train).astype(jnp.float32)
            u_hat = release_codec.place_rows(rows, self.kind, self.num_rows)
        return u_hat, self.to_time(u_hat)

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Codewords (in the latent space the decoder reads) of int ids [...] -> [..., D]."""
        return self.quantizer.lookup(indices)
