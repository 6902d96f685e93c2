"""Default hyperparameters (SPEC §2, §3, §4) as `ml_collections.ConfigDict`s.

The files in `configs/` are thin wrappers around these builders. The config argument `tiny`
(e.g. `--config=configs/stage1_vibcreg.py:tiny`) shrinks model, batch and step counts so a whole
run takes seconds, for tests and smoke runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from ssl_vqvae.errors import UserError, did_you_mean

SSL_METHODS = ("none", "barlowtwins", "vibcreg")
PRIOR_VARIANTS = ("auto", "token_index", "full_embedding")
MASKING_MODES = ("thesis", "standard")
CONFIG_ARGUMENTS = ("tiny",)  # what may follow the config file name: `configs/x.py:tiny`


def _check_argument(arg: str | None) -> None:
    """Rejects what follows `:` in `--config=configs/x.py:<arg>` unless it is known."""
    if arg and arg not in CONFIG_ARGUMENTS:
        raise UserError(
            f"unknown config argument {arg!r} (after ':' in --config); expected nothing or one "
            f"of {CONFIG_ARGUMENTS}{did_you_mean(arg, CONFIG_ARGUMENTS)}"
        )


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict:
    """`{"a.b": leaf}` for every leaf of a (nested) config or of its JSON form."""
    leaves = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, Mapping)):
            leaves.update(flatten(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def _data(batch_size: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "dataset": "GunPoint",
            "root": "",  # UCR archive folder; empty = bundled sets, then the UCR pip packages
            "variable_length": "error",  # error | resample | zero_pad (NaN-padded sets)
            "batch_size": batch_size,
            "eval_batch_size": 128,
        }
    )


def _train() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "num_epochs": 1000,
            "num_steps": 0,  # > 0 overrides num_epochs
            "log_every": 50,
            "eval_every_epochs": 20,
            "checkpoint_every": 1000,
            # Also save after this long (<= 0: never on time): slow steps never go unsaved long.
            "checkpoint_every_minutes": 10.0,
        }
    )


def _optim(weight_decay: float = 1e-3) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"learning_rate": 1e-3, "weight_decay": weight_decay})


def stage1(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-1 (tokenizer) config for `method` in SSL_METHODS."""
    _check_argument(arg)
    if method not in SSL_METHODS:
        hint = did_you_mean(method, SSL_METHODS)
        raise UserError(f"ssl.method={method!r}; expected one of {SSL_METHODS}{hint}")
    config = ml_collections.ConfigDict()
    config.stage = "stage1"
    config.seed = 1
    config.data = _data(batch_size=128)
    config.model = ml_collections.ConfigDict(
        {
            "n_fft": 8,
            "hidden_dim": 64,  # also the codebook dimension
            "num_res_blocks": 4,
            "downsampled_width": 8,
            "dropout_rate": 0.0,
            "codebook_size": 32,
            "ema_decay": 0.9,
            "commitment_weight": 1.0,
            # reference | keep: keep never-used codewords finite (SPEC §7.11; short runs)
            "dead_code": "reference",
            # torch = PyTorch's default initialisers, as the reference (SPEC §7.10); or flax.
            "init": "torch",
        }
    )
    config.ssl = ml_collections.ConfigDict(
        {
            "method": method,
            "augmentations": "warp",  # preset (warp | slice | gauss) or comma-separated names
            "aug_recon_weight": 0.1,
            "projector_hidden_dim": 4096,
            "projector_output_dim": 4096,
            "iternorm_groups": 64,
            "barlow_off_diagonal_weight": 0.005,
            "barlow_weight": 1.0,
            "vibcreg_invariance_weight": 25.0,
            "vibcreg_variance_weight": 25.0,
            "vibcreg_covariance_weight": 100.0,
            "vibcreg_loss_scale": 0.01,
        }
    )
    config.optim = _optim()
    config.train = _train()
    config.train.probe_every = 0  # linear probes every N steps (0 = only at the end)
    # True: also the reference's final train-mode probe pass over train then test data, saved in
    # the tokenizer: leaks test-set BN/codebook statistics; for parity only (SPEC §7.12).
    config.train.reference_probe_pass = False
    config.train.plot_every_eval = True
    if arg == "tiny":
        _shrink_stage1(config)
    return config


def _shrink_stage1(config: ml_collections.ConfigDict) -> None:
    config.data.batch_size = 16
    config.data.eval_batch_size = 64
    config.model.hidden_dim = 16
    config.model.num_res_blocks = 1
    config.model.codebook_size = 16
    config.ssl.projector_hidden_dim = 32
    config.ssl.projector_output_dim = 32
    config.ssl.iternorm_groups = 4
    _shrink_train(config)


def _shrink_train(config: ml_collections.ConfigDict) -> None:
    config.train.num_steps = 8
    config.train.log_every = 4
    config.train.eval_every_epochs = 2
    config.train.checkpoint_every = 4


def stage2(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-2 (MaskGIT prior) config; the dataset and tokenizer come from the stage-1 run."""
    _check_argument(arg)
    config = ml_collections.ConfigDict()
    config.stage = "stage2"
    config.seed = 1
    config.stage1_workdir = ""  # empty = <workdir>/stage1 of the same experiment
    config.data = ml_collections.ConfigDict({"batch_size": 256, "eval_batch_size": 128})
    config.prior = ml_collections.ConfigDict(
        {
            "variant": "auto",  # auto = token_index for ssl.method=none, else full_embedding
            "hidden_dim": 256,
            "depth": 4,
            "num_heads": 2,
            "head_dim": 64,
            "mlp_dim": 256,
            "dropout_rate": 0.0,
            "p_unconditional": 0.2,
            "masking": "thesis",  # thesis (SPEC §4.4) | standard (MaskGIT, loss on masked only)
            "token_sample_temperature": 1.0,  # stochastic VQ targets (SPEC §4.1); 0 = argmax
            "init": "torch",  # Linear layers as torch initialises them (SPEC §7.10); or flax
        }
    )
    config.sampling = ml_collections.ConfigDict(
        {
            "num_steps": 10,
            "choice_temperature": 4.0,
            "guidance_scale": 1.0,
            # never sample codes unused by the train split's tokens (dead codes, SPEC §7.11)
            "mask_unused_codes": False,
        }
    )
    config.optim = _optim()
    config.train = _train()
    if arg == "tiny":
        config.data.batch_size = 16
        config.data.eval_batch_size = 64
        config.prior.hidden_dim = 32
        config.prior.depth = 1
        config.prior.head_dim = 16
        config.prior.mlp_dim = 32
        config.sampling.num_steps = 4
        _shrink_train(config)
    return config
