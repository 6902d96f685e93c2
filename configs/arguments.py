"""The one parser of config arguments: `<arg>` in `--config=configs/<file>.py:<arg>`.

Every `get_config(arg)` in configs/ ends in `apply`, so absl's config_flags and
`config_lib.load_config_file` treat an argument the same way.
"""

from __future__ import annotations

import ml_collections

from ssl_vqvae import config_lib
from ssl_vqvae.errors import UserError, did_you_mean

# Step counts and batches of `tiny`, the same for both stages.
_TINY_LOOP = {
    "data.batch_size": 16,
    "data.eval_batch_size": 64,
    "train.num_steps": 8,
    "train.log_every": 4,
    "train.eval_every_epochs": 2,
    "train.checkpoint_every": 4,
}

# argument -> stage -> the fields it sets. `tiny`: model, batches and step counts so small that
# a whole run takes seconds (tests and smoke runs).
_ARGUMENTS = {
    "tiny": {
        "stage1": {
            **_TINY_LOOP,
            "model.hidden_dim": 16,
            "model.num_res_blocks": 1,
            "model.codebook_size": 16,
            "model.hf_codebook_size": 16,
            "ssl.projector_hidden_dim": 32,
            "ssl.projector_output_dim": 32,
            "ssl.iternorm_groups": 4,
        },
        "stage2": {
            **_TINY_LOOP,
            "prior.hidden_dim": 32,
            "prior.depth": 1,
            "prior.head_dim": 16,
            "prior.mlp_dim": 32,
            "prior.embed_dim": 16,
            "prior.hf_hidden_dim": 16,
            "sampling.num_steps": 4,
            "sampling.hf_num_steps": 4,
        },
    },
}


def apply(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """`config` changed in place as `arg` asks (None or "" changes nothing), and returned.

    Raises:
      UserError: `arg` is not one of `config_lib.CONFIG_ARGUMENTS`, or it has no settings for
        `config.stage`.
    """
    if not arg:
        return config
    if arg not in config_lib.CONFIG_ARGUMENTS:
        raise UserError(
            f"unknown config argument {arg!r} (after ':' in --config); expected nothing or one "
            f"of {config_lib.CONFIG_ARGUMENTS}{did_you_mean(arg, config_lib.CONFIG_ARGUMENTS)}"
        )
    by_stage = _ARGUMENTS[arg]
    if config.stage not in by_stage:
        raise UserError(
            f"config argument {arg!r} applies to {tuple(by_stage)} configs; this config has "
            f"stage={config.stage!r}"
        )
    config.update_from_flattened_dict(by_stage[config.stage])
    return config
