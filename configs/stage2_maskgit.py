"""Stage 2 (MaskGIT prior): every field with its default (SPEC §4).

The dataset and the tokenizer come from the stage-1 run of the same workdir. Append `:tiny`
for a seconds-long smoke run (configs/arguments.py).
"""

from __future__ import annotations

import ml_collections

from configs import arguments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The stage-2 defaults, changed as the config argument `arg` asks."""
    config = ml_collections.ConfigDict()
    config.stage = "stage2"  # which trainer train.py runs
    config.seed = 1  # the thesis ran seeds 1-4 per configuration (SPEC §2)
    config.stage1_workdir = ""  # empty = <workdir>/stage1 of the same experiment

    config.data = ml_collections.ConfigDict()
    config.data.batch_size = 256  # stage-2 train loader (SPEC §1.3, §4)
    config.data.eval_batch_size = 128  # test loader (SPEC §1.3)

    config.prior = ml_collections.ConfigDict()
    # auto = token_index for ssl.method=none, else full_embedding; two_branch for an LF/HF
    # tokenizer (model.split=lfhf), whatever its ssl.method.
    config.prior.variant = "auto"
    config.prior.hidden_dim = 256  # transformer width (SPEC §4)
    config.prior.depth = 4  # transformer layers (SPEC §4)
    config.prior.num_heads = 2  # attention heads (SPEC §4)
    config.prior.head_dim = 64  # x-transformers' default: attention inner dim 128 (SPEC §4)
    config.prior.mlp_dim = 256  # feed-forward inner width, mult 1 (SPEC §4)
    config.prior.dropout_rate = 0.0  # the reference's dropout is off (SPEC §4.2)
    config.prior.p_unconditional = 0.2  # class dropout, for classifier-free guidance (§4.4)
    config.prior.masking = "thesis"  # thesis (SPEC §4.4) | standard (MaskGIT, loss on masked only)
    config.prior.token_sample_temperature = 1.0  # stochastic VQ targets (SPEC §4.1); 0 = argmax
    config.prior.init = "torch"  # Linear layers as torch initialises them (SPEC §7.10); or flax
    # Compute dtype: float32 (the reference's numerics) | bfloat16 (the transformer trunk; params,
    # norms' statistics, softmax, logits and the loss stay float32).
    config.prior.dtype = "float32"
    # The two_branch priors (LF prior: hidden_dim, depth, num_heads above; then the HF prior),
    # as the TimeVQVAE release defines them (configs/stage2_timevqvae.py).
    config.prior.embed_dim = 128  # token embedding width of both priors
    config.prior.ff_mult = 1  # feed-forward inner width int(dim * ff_mult * 2 / 3)
    config.prior.hf_hidden_dim = 32
    config.prior.hf_depth = 1
    config.prior.hf_num_heads = 1

    config.sampling = ml_collections.ConfigDict()
    config.sampling.num_steps = 10  # iterative decoding steps T (SPEC §4.5)
    config.sampling.choice_temperature = 4.0  # annealed Gumbel noise on confidences (§4.5)
    config.sampling.guidance_scale = 1.0  # CFG weight w; 1 = the conditional logits (SPEC §7.5)
    # never sample codes unused by the train split's tokens (dead codes, SPEC §7.11)
    config.sampling.mask_unused_codes = False
    config.sampling.hf_num_steps = 10  # two_branch: HF decoding steps (num_steps: LF)
    config.sampling.hf_choice_temperature = 0.0  # two_branch: HF choice temperature

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3  # AdamW, cosine-annealed to 0 (SPEC §4, §2.7)
    config.optim.weight_decay = 1e-3  # AdamW's decoupled decay (SPEC §4)

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 1000  # the thesis budget (SPEC §4)
    config.train.num_steps = 0  # > 0 overrides num_epochs
    config.train.log_every = 50  # steps between logged train metrics
    config.train.eval_every_epochs = 20  # validation loss on the test split (SPEC §4.4)
    config.train.checkpoint_every = 1000  # steps between checkpoints
    # Also save after this long (<= 0: never on time): slow steps never go unsaved long.
    config.train.checkpoint_every_minutes = 10.0
    # > 0: a jax.profiler trace of this many steps (after the first, compiling one) is written
    # to <stage>/profile/ (TensorBoard's profile plugin or Perfetto read it).
    config.train.profile_steps = 0
    return arguments.apply(config, arg)
