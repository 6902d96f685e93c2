"""TimeVQVAE's two-branch tokenizer (`model.split = "lfhf"`), optionally self-supervised.

The STFT map is split into a low-frequency band (bin 0) and a high-frequency band (bins 1..);
each band has its own encoder, EMA codebook and decoder (`branch.Branch`), and the series is
the sum of the two decoded bands. Token ids are the LF ids followed by the HF ids:
int32 [B, N_LF + N_HF], each part row-major over its own token grid.

SSL on both branches: the augmented view goes through both encoders, and ONE projector sees the
concatenated pooled codes of both bands, [mean ‖ max of LF codes ‖ mean ‖ max of HF codes]. One
projector rather than one per band because the SSL losses then also decorrelate LF features
from HF features (Barlow Twins' and VIbCReg's off-diagonal terms span both bands), so the two
codebooks are pushed to carry non-redundant information, and because the projector (34.6 M
parameters at the thesis width) dominates the step's cost: a second one would double it.
Mutable state: `batch_stats` (BatchNorm, IterNorm) and `vq` (both codebooks).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers, layers, release_codec, stft
from ssl_vqvae.branch import Branch
from ssl_vqvae.ssl import pool_mean_max
from ssl_vqvae.vqvae import projector_for

MUTABLE_COLLECTIONS = ("batch_stats", "vq")


class TwoBranchVQVAE(nn.Module):
    """LF/HF tokenizer for series of a fixed `length` and `channels` (see the module docstring).

    `codec` picks the branches' architecture ("ncvqvae": TimeVQVAE 2023; "timevqvae": the
    current release, see `branch`). `projector_output_dim = 0` disables the SSL branch.
    """

    length: int
    channels: int = 1
    codec: str = "timevqvae"
    n_fft: int = 4
    window: str = "hann"
    normalized: bool = True
    hidden_dim: int = 128
    num_res_blocks: int = 2
    init_dim: int = 4
    lf_downsampled_width: int = 8
    hf_downsampled_width: int = 32
    dropout_rate: float = 0.3
    lf_codebook_size: int = 1024
    hf_codebook_size: int = 1024
    codebook_dim: int = 8
    kmeans_init: bool = True
    ema_decay: float = 0.8
    commitment_weight: float = 1.0
    dead_code: str = "reference"
    projector_hidden_dim: int = 4096
    projector_output_dim: int = 0
    use_iternorm: bool = False
    iternorm_groups: int = 64
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    def _branch(self, kind: str, name: str) -> Branch:
        lf = kind == "lf"
        return Branch(
            kind=kind,
            codec=self.codec,
            length=self.length,
            channels=self.channels,
            n_fft=self.n_fft,
            window=self.window,
            normalized=self.normalized,
            hidden_dim=self.hidden_dim,
            num_res_blocks=self.num_res_blocks,
            init_dim=self.init_dim,
            downsampled_width=self.lf_downsampled_width if lf else self.hf_downsampled_width,
            dropout_rate=self.dropout_rate,
            codebook_size=self.lf_codebook_size if lf else self.hf_codebook_size,
            codebook_dim=self.codebook_dim,
            kmeans_init=self.kmeans_init,
            ema_decay=self.ema_decay,
            commitment_weight=self.commitment_weight,
            dead_code=self.dead_code,
            param_init=self.param_init,
            dtype=self.dtype,
            name=name,
        )

    def setup(self) -> None:
        self.lf = self._branch("lf", "lf")
        self.hf = self._branch("hf", "hf")
        if self.projector_output_dim:
            self.projector = projector_for(self)

    # Static geometry --------------------------------------------------------------------------

    @property
    def stft_width(self) -> int:
        return stft.num_frames(self.length, self.n_fft)

    def grid(self, kind: str) -> tuple[int, int]:
        """(H', W') token grid of one branch."""
        rows = self.n_fft // 2 + 1
        width = self.lf_downsampled_width if kind == "lf" else self.hf_downsampled_width
        if self.codec == "ncvqvae":
            num_down = layers.num_downsample_blocks(self.length, self.n_fft, width)
            return rows, layers.encoded_width(self.stft_width, num_down)
        rate = release_codec.compute_downsample_rate(self.length, self.n_fft, width)
        band_rows = 1 if kind == "lf" else rows - 1
        return band_rows, release_codec.encoded_width(self.stft_width, rate)

    @property
    def num_tokens(self) -> tuple[int, int]:
        """(N_LF, N_HF)."""
        (h_l, w_l), (h_h, w_h) = self.grid("lf"), self.grid("hf")
        return h_l * w_l, h_h * w_h

    @property
    def token_segments(self) -> tuple[tuple[int, int], ...]:
        """((N_LF, K_LF), (N_HF, K_HF)): token ids are the LF ids, then the HF ids."""
        num_lf, num_hf = self.num_tokens
        return (num_lf, self.lf_codebook_size), (num_hf, self.hf_codebook_size)

    @property
    def output_length(self) -> int:
        """Length of decoded series: the release resizes to `length`, 2023 keeps the ISTFT's."""
        if self.codec == "timevqvae":
            return self.length
        return stft.hop_length(self.n_fft) * (self.stft_width - 1)

    # Forward passes ---------------------------------------------------------------------------

    def __call__(
        self, x: jax.Array, x_aug: jax.Array | None = None, *, train: bool
    ) -> dict[str, Any]:
        """Forward pass of both views.

        Returns a dict with, per branch `lf` / `hf`, `{u, x, u_hat, x_hat, vq}` (targets, their
        reconstruction through the quantiser, the QuantizerOutput) and `x_hat` (the sum). With
        `x_aug`: per branch `aug_lf` / `aug_hf` = `{u, x, u_hat, x_hat}` reconstructed from the
        continuous latents, and `proj`, `proj_aug` (projected pooled codes of both bands).
        """
        outputs: dict[str, Any] = {}
        pooled = []
        u = self.lf.stft(x)
        for kind, branch in (("lf", self.lf), ("hf", self.hf)):
            u_band, x_band = branch.band(u)
            vq = branch.quantize(branch.encode(u, train=train), train=train)
            u_hat, x_hat = branch.decode(vq.quantized, u.shape[2], train=train)
            outputs[kind] = {"u": u_band, "x": x_band, "u_hat": u_hat, "x_hat": x_hat, "vq": vq}
            pooled.append(pool_mean_max(vq.quantized))
        outputs["x_hat"] = outputs["lf"]["x_hat"] + outputs["hf"]["x_hat"]
        if x_aug is None and self.is_initializing() and self.projector_output_dim:
            x_aug = x  # create the projector's variables at init
        if x_aug is None:
            return outputs
        if not self.projector_output_dim:
            raise ValueError("x_aug given but the model has no projector (ssl.method=none)")
        pooled_aug = []
        u_aug = self.lf.stft(x_aug)
        for kind, branch in (("lf", self.lf), ("hf", self.hf)):
            u_band, x_band = branch.band(u_aug)
            z_aug = branch.encode(u_aug, train=train)
            u_hat, x_hat = branch.decode(z_aug, u_aug.shape[2], train=train)
            outputs[f"aug_{kind}"] = {"u": u_band, "x": x_band, "u_hat": u_hat, "x_hat": x_hat}
            pooled_aug.append(pool_mean_max(z_aug))
        outputs["proj"] = self.projector(jnp.concatenate(pooled, -1), train=train)
        outputs["proj_aug"] = self.projector(jnp.concatenate(pooled_aug, -1), train=train)
        return outputs

    def _codes(
        self, x: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> tuple[Any, Any]:
        u = self.lf.stft(x)
        return tuple(
            branch.quantize(
                branch.encode(u, train=train), train=train, sample_temperature=sample_temperature
            )
            for branch in (self.lf, self.hf)
        )

    def tokenize(self, x: jax.Array, sample_temperature: float | None = None) -> jax.Array:
        """Token ids (eval mode): float32 [B, L, C] -> int32 [B, N_LF + N_HF] (LF first)."""
        vq_lf, vq_hf = self._codes(x, train=False, sample_temperature=sample_temperature)
        batch = x.shape[0]
        return jnp.concatenate(
            [vq_lf.indices.reshape(batch, -1), vq_hf.indices.reshape(batch, -1)], axis=1
        )

    def representation(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Mean-pooled quantised latents of both bands: [B, L, C] -> [B, 2 * hidden_dim]."""
        vq_lf, vq_hf = self._codes(x, train=train)
        return jnp.concatenate(
            [jnp.mean(vq_lf.quantized, axis=(1, 2)), jnp.mean(vq_hf.quantized, axis=(1, 2))], -1
        )

    def reconstruct(self, x: jax.Array) -> jax.Array:
        """Eval-mode reconstruction through both quantisers: [B, L, C] -> [B, output_length, C]."""
        width = self.stft_width
        vq_lf, vq_hf = self._codes(x, train=False)
        return (
            self.lf.decode(vq_lf.quantized, width, train=False)[1]
            + self.hf.decode(vq_hf.quantized, width, train=False)[1]
        )

    def decode_tokens(self, tokens: jax.Array) -> jax.Array:
        """Series from token ids (eval mode): int32 [B, N_LF + N_HF] -> [B, output_length, C]."""
        num_lf, _ = self.num_tokens
        batch, width = tokens.shape[0], self.stft_width
        series = []
        for kind, branch, ids in (
            ("lf", self.lf, tokens[:, :num_lf]),
            ("hf", self.hf, tokens[:, num_lf:]),
        ):
            height, grid_width = self.grid(kind)
            codes = branch.lookup(ids).reshape(batch, height, grid_width, -1)
            series.append(branch.decode(codes, width, train=False)[1])
        return series[0] + series[1]
