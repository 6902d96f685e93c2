"""Stage 1, TimeVQVAE's two-branch tokenizer as the current release (`timevqvae` 1.0.1) builds it.

Model settings are the package's `VQVAE` defaults: n_fft 4 (Hann, normalised STFT), init width 4,
bottleneck 128, 2 residual blocks per stage, LF / HF latent widths 8 / 32, codebooks of 1024
codes looked up in an 8-dimensional projection with k-means initialisation, EMA decay 0.8,
dropout 0.3 in the residual blocks. Losses: LF time MSE + HF time L1 + both commitments. The
release's trainer (TimeVQVAE repository, configs/config.yaml): AdamW at 5e-3 (torch's default
weight decay 0.01), batch 32, 20000 steps; its 5 % linear warmup and cosine floor of 5e-4 are
not reproduced (this project's cosine schedule to 0 runs instead). Append `:tiny` for a smoke
run.
"""

from __future__ import annotations

import ml_collections

from configs import arguments, stage1_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage1_default.get_config(arg)` with the release's two-branch tokenizer."""
    config = stage1_default.get_config()
    config.data.batch_size = 32
    config.model.split = "lfhf"
    config.model.codec = "timevqvae"
    config.model.n_fft = 4
    config.model.stft_window = "hann"
    config.model.stft_normalized = True
    config.model.hidden_dim = 128
    config.model.init_dim = 4
    config.model.num_res_blocks = 2
    config.model.downsampled_width = 8
    config.model.hf_downsampled_width = 32
    config.model.dropout_rate = 0.3
    config.model.codebook_size = 1024
    config.model.hf_codebook_size = 1024
    config.model.codebook_dim = 8
    config.model.kmeans_init = True
    config.model.ema_decay = 0.8
    config.optim.learning_rate = 5e-3
    config.optim.weight_decay = 1e-2
    config.train.num_epochs = 1
    config.train.num_steps = 20000
    return arguments.apply(config, arg)
