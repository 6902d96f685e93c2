"""Stage 2 on a two-branch (LF/HF) tokenizer: the TimeVQVAE release's two priors and sampling.

LF prior: token embedding 128, width 128, 4 layers, 2 heads; HF prior: width 32, 1 layer,
1 head, fed the HF tokens and the upscaled LF tokens; feed-forward mult 1, token-embedding
dropout 0.3, class dropout 0.2, loss on masked tokens only. Sampling: LF first (10 steps, choice
temperature 10), then HF (10 steps, temperature 0), guidance scale 1. The release's trainer:
AdamW at 5e-3, batch 32, 40000 steps (its warmup and cosine floor are not
reproduced, see stage1_timevqvae.py). `stage2_maskgit.py` resolves to the same prior
architecture on an LF/HF tokenizer (prior.variant=auto) but keeps its own sizes and budget.
Append `:tiny` for a smoke run.
"""

from __future__ import annotations

import ml_collections

from configs import arguments, stage2_maskgit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`stage2_maskgit.get_config(arg)` with the release's priors and decoding."""
    config = stage2_maskgit.get_config()
    config.data.batch_size = 32
    config.prior.variant = "two_branch"
    config.prior.masking = "standard"
    config.prior.embed_dim = 128
    config.prior.hidden_dim = 128
    config.prior.depth = 4
    config.prior.num_heads = 2
    config.prior.head_dim = 64
    config.prior.ff_mult = 1
    config.prior.hf_hidden_dim = 32
    config.prior.hf_depth = 1
    config.prior.hf_num_heads = 1
    config.prior.dropout_rate = 0.3
    config.prior.p_unconditional = 0.2
    config.prior.token_sample_temperature = 0.0
    config.sampling.num_steps = 10
    config.sampling.choice_temperature = 10.0
    config.sampling.hf_num_steps = 10
    config.sampling.hf_choice_temperature = 0.0
    config.sampling.guidance_scale = 1.0
    config.optim.learning_rate = 5e-3
    config.optim.weight_decay = 1e-2
    config.train.num_epochs = 1
    config.train.num_steps = 40000
    return arguments.apply(config, arg)
