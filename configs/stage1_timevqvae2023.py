"""Stage 1, TimeVQVAE's two-branch tokenizer as published at AISTATS 2023 (SPEC §4.6).

The LF / HF branches reuse NC-VQVAE's encoder, decoder and EMA quantiser (NC-VQVAE kept them
from this model): width 64, 4 residual blocks, n_fft 8 with no window (rectangular), LF / HF
latent widths 8 / 32, codebooks of 32 codes of dimension 64, EMA decay 0.8. Losses: LF time MSE
+ HF time L1 + both time-frequency MSEs + both commitments. AdamW lr 1e-3, weight decay 1e-5,
batch 128, 2000 epochs. Append `:tiny` for a smoke run.
"""

from __future__ import annotations

import ml_collections

from configs import arguments, stage1_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_default.get_config(arg)` with the 2023 two-branch tokenizer."""
    config = stage1_default.get_config()
    config.model.split = "lfhf"
    config.model.codec = "ncvqvae"
    config.model.n_fft = 8
    config.model.stft_window = "rect"
    config.model.downsampled_width = 8
    config.model.hf_downsampled_width = 32
    config.model.codebook_size = 32
    config.model.hf_codebook_size = 32
    config.model.ema_decay = 0.8
    config.optim.weight_decay = 1e-5
    config.train.num_epochs = 2000
    return arguments.apply(config, arg)
