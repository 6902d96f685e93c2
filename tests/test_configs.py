"""Config files load, hold SPEC defaults, shrink with :tiny and reject typos."""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from ssl_vqvae import config_lib

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def _load(name, *overrides):
    argv = ["prog", f"--config={CONFIGS / name}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize(
    "name, method",
    [
        ("stage1_vqvae.py", "none"),
        ("stage1_barlowtwins.py", "barlowtwins"),
        ("stage1_vibcreg.py", "vibcreg"),
    ],
)
def test_stage1_configs_hold_spec_defaults(name, method):
    config = _load(name)
    assert config.ssl.method == method and config.stage == "stage1"
    assert (config.model.n_fft, config.model.hidden_dim, config.model.codebook_size) == (8, 64, 32)
    assert config.data.batch_size == 128 and config.ssl.aug_recon_weight == 0.1
    assert config.optim.learning_rate == 1e-3 and config.train.num_epochs == 1000


def test_stage2_config_defaults():
    config = _load("stage2_maskgit.py")
    assert (config.prior.hidden_dim, config.prior.depth, config.prior.num_heads) == (256, 4, 2)
    assert config.sampling.num_steps == 10 and config.sampling.choice_temperature == 4.0
    assert config.data.batch_size == 256 and config.prior.p_unconditional == 0.2


def test_tiny_and_command_line_overrides():
    config = _load(
        "stage1_vibcreg.py:tiny", "--config.data.dataset=FordA", "--config.ssl.augmentations=slice"
    )
    assert config.train.num_steps == 8 and config.model.hidden_dim == 16
    assert config.data.dataset == "FordA" and config.ssl.augmentations == "slice"


def test_unknown_key_and_argument_fail():
    with pytest.raises(Exception, match="no_such_field"):
        _load("stage1_vibcreg.py", "--config.train.no_such_field=1")
    with pytest.raises(ValueError, match="unknown config argument 'huge'"):
        config_lib.stage1("vibcreg", "huge")
    with pytest.raises(ValueError, match="ssl.method='simclr'"):
        config_lib.stage1("simclr")
