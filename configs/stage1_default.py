"""Stage 1 (tokenizer): every field with its default (SPEC §1-§3, §7).

The variants `stage1_vqvae.py`, `stage1_barlowtwins.py` and `stage1_vibcreg.py` import this file
and set only `ssl.method`. Append `:tiny` for a seconds-long smoke run (configs/arguments.py).
"""

from __future__ import annotations

import ml_collections

from configs import arguments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The stage-1 defaults, changed as the config argument `arg` asks."""
    config = ml_collections.ConfigDict()
    config.stage = "stage1"  # which trainer train.py runs
    config.seed = 1  # the thesis ran seeds 1-4 per configuration (SPEC §2)

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "GunPoint"  # UCR archive name (SPEC §1.1, §6); small, for a first run
    config.data.root = ""  # UCR archive folder; empty = bundled sets, then the UCR pip packages
    config.data.variable_length = "error"  # NaN-padded sets: error | resample | zero_pad
    config.data.batch_size = 128  # stage-1 train loader (SPEC §1.3)
    config.data.eval_batch_size = 128  # test loader (SPEC §1.3)

    config.model = ml_collections.ConfigDict()
    config.model.n_fft = 8  # STFT window: 5 frequency bins, hop 2 (SPEC §2.1)
    config.model.hidden_dim = 64  # encoder/decoder width, also the codebook dimension (SPEC §2)
    config.model.num_res_blocks = 4  # residual blocks in the encoder and in the decoder (§2.3)
    config.model.downsampled_width = 8  # sets the downsampling rate, hence the tokens (§2.2)
    config.model.dropout_rate = 0.0  # the reference's dropout is off (SPEC §2)
    config.model.codebook_size = 32  # K codewords (SPEC §2.5)
    config.model.ema_decay = 0.9  # codebook EMA decay gamma (SPEC §2, value unconfirmed)
    config.model.commitment_weight = 1.0  # beta of the commitment loss (SPEC §2.5)
    # reference | keep: keep never-used codewords finite (SPEC §7.11; short runs)
    config.model.dead_code = "reference"
    # torch = PyTorch's default initialisers, as the reference (SPEC §7.10); or flax.
    config.model.init = "torch"
    # Compute dtype: float32 (the reference's numerics) | bfloat16 (faster on GPUs/TPUs; params,
    # BatchNorm, the quantiser, STFT, SSL and reconstruction losses stay float32).
    config.model.dtype = "float32"
    # none = NC-VQVAE's one tokenizer | lfhf = TimeVQVAE's LF (STFT bin 0) and HF (bins 1..)
    # branches, each with its own encoder, codebook and decoder (configs/stage1_timevqvae*.py).
    config.model.split = "none"
    # Branch architecture: ncvqvae = NC-VQVAE's and TimeVQVAE 2023's conv stack (SPEC §2.3-§2.5)
    # | timevqvae = the current TimeVQVAE release's (lfhf only).
    config.model.codec = "ncvqvae"
    config.model.stft_window = "hann"  # hann (SPEC §2.1) | rect (TimeVQVAE 2023, SPEC §4.6)
    config.model.stft_normalized = False  # n_fft ** -0.5 scaling (the TimeVQVAE release)
    config.model.hf_downsampled_width = 32  # lfhf: the HF branch's latent width (SPEC §4.6)
    config.model.hf_codebook_size = 32  # lfhf: the HF codebook (codebook_size is the LF one)
    config.model.codebook_dim = 0  # timevqvae codec: projected codebook space; 0 = hidden_dim
    config.model.kmeans_init = False  # timevqvae codec: k-means codebook init on the 1st batch
    config.model.init_dim = 4  # timevqvae codec: width of the first encoder block

    config.ssl = ml_collections.ConfigDict()
    # none = plain VQ-VAE (SPEC §2.6); barlowtwins | vibcreg add the SSL loss (SPEC §3).
    config.ssl.method = "none"
    config.ssl.augmentations = "warp"  # preset (warp | slice | gauss) or comma-separated names
    config.ssl.aug_recon_weight = 0.1  # weight of the augmented view's reconstruction (§2.6)
    config.ssl.projector_hidden_dim = 4096  # projector Linear-BN-ReLU widths (SPEC §3.3)
    config.ssl.projector_output_dim = 4096  # the SSL losses' feature count D (SPEC §3.3)
    config.ssl.iternorm_groups = 64  # VIbCReg's IterNorm whitens 64 groups of 64 (SPEC §3.5)
    config.ssl.barlow_off_diagonal_weight = 0.005  # Barlow Twins lambda (SPEC §3.4)
    config.ssl.barlow_weight = 1.0  # L_SSL = weight * L_BT (SPEC §3.4)
    config.ssl.vibcreg_invariance_weight = 25.0  # VIbCReg lambda (SPEC §3.5)
    config.ssl.vibcreg_variance_weight = 25.0  # VIbCReg mu (SPEC §3.5)
    config.ssl.vibcreg_covariance_weight = 100.0  # VIbCReg nu; vibcreg's own default is 200
    config.ssl.vibcreg_loss_scale = 0.01  # L_SSL = scale * (lambda inv + mu var + nu cov)

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3  # AdamW, cosine-annealed to 0 (SPEC §2, §2.7)
    config.optim.weight_decay = 1e-3  # AdamW's decoupled decay (SPEC §2)

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 1000  # the thesis budget (SPEC §2)
    config.train.num_steps = 0  # > 0 overrides num_epochs
    config.train.log_every = 50  # steps between logged train metrics
    config.train.eval_every_epochs = 20  # validation on the test split, as the reference (§1.3)
    config.train.checkpoint_every = 1000  # steps between checkpoints
    # Also save after this long (<= 0: never on time): slow steps never go unsaved long.
    config.train.checkpoint_every_minutes = 10.0
    # > 0: a jax.profiler trace of this many steps (after the first, compiling one) is written
    # to <stage>/profile/ (TensorBoard's profile plugin or Perfetto read it).
    config.train.profile_steps = 0
    config.train.probe_every = 0  # linear probes every N steps (0 = only at the end; SPEC §5.4)
    # True: also the reference's final train-mode probe pass over train then test data, saved in
    # the tokenizer: leaks test-set BN/codebook statistics; for parity only (SPEC §7.12).
    config.train.reference_probe_pass = False
    config.train.plot_every_eval = True  # reconstruction plots at every evaluation
    return arguments.apply(config, arg)
