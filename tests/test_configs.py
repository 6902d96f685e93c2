"""Config files: the loader, the one argument parser, SPEC defaults, variants and field sets."""

import importlib
import inspect
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from ssl_vqvae import config_lib, validation
from ssl_vqvae.errors import MissingInputError, UserError

ROOT = pathlib.Path(__file__).parent.parent
CONFIGS = ROOT / "configs"
FILES = ("stage1_default", *config_lib.STAGE1_CONFIGS.values(), "stage2_maskgit")
TWO_BRANCH_FILES = (
    "stage1_timevqvae",
    "stage1_timevqvae2023",
    "stage1_timevqvae_vibcreg",
    "stage1_timevqvae_barlowtwins",
    "stage2_timevqvae",
)

STAGE1_FIELDS = {
    *("stage", "seed"),
    *("data.dataset", "data.root", "data.variable_length"),
    *("data.batch_size", "data.eval_batch_size"),
    *("model.n_fft", "model.hidden_dim", "model.num_res_blocks", "model.downsampled_width"),
    *("model.dropout_rate", "model.codebook_size", "model.ema_decay"),
    *("model.commitment_weight", "model.dead_code", "model.init", "model.dtype"),
    *("model.split", "model.codec", "model.stft_window", "model.stft_normalized"),
    *("model.hf_downsampled_width", "model.hf_codebook_size", "model.codebook_dim"),
    *("model.kmeans_init", "model.init_dim"),
    *("ssl.method", "ssl.augmentations", "ssl.aug_recon_weight"),
    *("ssl.projector_hidden_dim", "ssl.projector_output_dim", "ssl.iternorm_groups"),
    *("ssl.barlow_off_diagonal_weight", "ssl.barlow_weight"),
    *("ssl.vibcreg_invariance_weight", "ssl.vibcreg_variance_weight"),
    *("ssl.vibcreg_covariance_weight", "ssl.vibcreg_loss_scale"),
    *("optim.learning_rate", "optim.weight_decay"),
    *("train.num_epochs", "train.num_steps", "train.log_every", "train.eval_every_epochs"),
    *("train.checkpoint_every", "train.checkpoint_every_minutes", "train.probe_every"),
    "train.profile_steps",
    *("train.reference_probe_pass", "train.plot_every_eval"),
}
STAGE2_FIELDS = {
    *("stage", "seed", "stage1_workdir", "data.batch_size", "data.eval_batch_size"),
    *("prior.variant", "prior.hidden_dim", "prior.depth", "prior.num_heads", "prior.head_dim"),
    *("prior.mlp_dim", "prior.dropout_rate", "prior.p_unconditional", "prior.masking"),
    *("prior.token_sample_temperature", "prior.init", "prior.dtype"),
    *("prior.embed_dim", "prior.ff_mult", "prior.hf_hidden_dim", "prior.hf_depth"),
    "prior.hf_num_heads",
    *("sampling.num_steps", "sampling.choice_temperature", "sampling.guidance_scale"),
    *("sampling.mask_unused_codes", "sampling.hf_num_steps", "sampling.hf_choice_temperature"),
    *("optim.learning_rate", "optim.weight_decay"),
    *("train.num_epochs", "train.num_steps", "train.log_every", "train.eval_every_epochs"),
    *("train.checkpoint_every", "train.checkpoint_every_minutes", "train.profile_steps"),
}
TINY_LOOP = {
    "data.batch_size": 16,
    "data.eval_batch_size": 64,
    "train.num_steps": 8,
    "train.log_every": 4,
    "train.eval_every_epochs": 2,
    "train.checkpoint_every": 4,
}
TINY = {
    "stage1": {
        **TINY_LOOP,
        "model.hidden_dim": 16,
        "model.num_res_blocks": 1,
        "model.codebook_size": 16,
        "model.hf_codebook_size": 16,
        "ssl.projector_hidden_dim": 32,
        "ssl.projector_output_dim": 32,
        "ssl.iternorm_groups": 4,
    },
    "stage2": {
        **TINY_LOOP,
        "prior.hidden_dim": 32,
        "prior.depth": 1,
        "prior.head_dim": 16,
        "prior.mlp_dim": 32,
        "prior.embed_dim": 16,
        "prior.hf_hidden_dim": 16,
        "sampling.num_steps": 4,
        "sampling.hf_num_steps": 4,
    },
}


def _flat(spec):
    return config_lib.flatten(config_lib.load_config_file(spec))


def _load(name, *overrides):
    """The config `python train.py --config=configs/<name>` gets from absl's config_flags."""
    argv = ["prog", f"--config={CONFIGS / name}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.fixture(autouse=True)
def _repo_root_on_path(monkeypatch):
    """As `python train.py` has it: the script's folder, the repo root, first on sys.path."""
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture
def arguments():
    return importlib.import_module("configs.arguments")


@pytest.mark.parametrize("method, name", list(config_lib.STAGE1_CONFIGS.items()))
def test_stage1_configs_hold_spec_defaults(method, name):
    config = _load(f"{name}.py")
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


def test_unknown_field_fails():
    with pytest.raises(Exception, match="no_such_field"):
        _load("stage1_vibcreg.py", "--config.train.no_such_field=1")


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_loader_gives_what_absl_gives_in_every_form(name, arg, tmp_path, monkeypatch):
    expected = config_lib.flatten(_load(f"{name}.py{arg}"))
    assert _flat(f"{CONFIGS / name}.py{arg}") == expected  # absolute path
    assert _flat(f"{name}{arg}") == expected  # bare name
    monkeypatch.chdir(ROOT)
    assert _flat(f"configs/{name}.py{arg}") == expected  # relative to the working directory
    monkeypatch.chdir(tmp_path)
    assert _flat(f"{name}{arg}") == expected


def test_loader_makes_configs_importable_from_any_directory(tmp_path):
    """In a fresh interpreter whose working directory holds no `configs` package."""
    code = (
        "import sys; from ssl_vqvae import config_lib; "
        "a = config_lib.load_config_file('stage1_barlowtwins:tiny'); "
        "b = config_lib.load_config_file(sys.argv[1]); "
        "print(a.ssl.method, a.model.hidden_dim, b.stage, b.prior.depth)"
    )
    spec = f"{CONFIGS / 'stage2_maskgit.py'}:tiny"
    result = subprocess.run(
        [sys.executable, "-c", code, spec], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["barlowtwins", "16", "stage2", "1"]


def test_loader_reports_missing_files_and_files_without_get_config(tmp_path):
    with pytest.raises(MissingInputError, match="did you mean 'stage1_vibcreg'"):
        config_lib.load_config_file("stage1_vibcrg:tiny")
    with pytest.raises(MissingInputError, match=r"no config file stage1_vibcreg; "):
        config_lib.load_config_file("stage1_vibcreg", bare_names=False)  # as the CLI calls it
    missing = tmp_path / "configs" / "stage1.py"
    missing.parent.mkdir()
    (missing.parent / "stage1_vqvae.py").write_text("def get_config(arg=None):\n    pass\n")
    (missing.parent / "helpers.py").write_text("X = 1\n")  # not a config file: not listed
    with pytest.raises(MissingInputError) as error:
        config_lib.load_config_file(f"{missing}:tiny")
    assert f"(in {missing.parent}: {missing.parent / 'stage1_vqvae.py'})" in str(error.value)
    with pytest.raises(UserError, match="helpers.py defines no get_config"):
        config_lib.load_config_file(str(missing.parent / "helpers.py"))


@pytest.mark.parametrize("name", FILES + TWO_BRANCH_FILES)
def test_every_file_rejects_an_unknown_argument_in_one_line(name):
    with pytest.raises(UserError) as error:
        config_lib.load_config_file(f"{name}:tnyi")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("unknown config argument 'tnyi' (after ':' in --config)")
    assert message.endswith("did you mean 'tiny'?")


@pytest.mark.parametrize("name", FILES + TWO_BRANCH_FILES)
def test_tiny_shrinks_each_stage_and_only_through_the_parser(name, arguments):
    default = config_lib.load_config_file(name)
    flat, tiny = config_lib.flatten(default), _flat(f"{name}:tiny")
    assert set(tiny) == set(flat)  # shrinks fields, adds none
    changed = {key: value for key, value in tiny.items() if value != flat[key]}
    assert changed == TINY[default.stage]
    assert config_lib.flatten(arguments.apply(default, "tiny")) == tiny
    assert _flat(f"{name}:") == flat  # an empty argument is no argument, as for absl


def test_parser_handles_every_listed_argument_and_refuses_unknown_stages(arguments):
    for arg in config_lib.CONFIG_ARGUMENTS:
        for name in ("stage1_default", "stage2_maskgit"):
            default = _flat(name)
            assert _flat(f"{name}:{arg}") != default
    config = config_lib.load_config_file("stage2_maskgit")
    config.stage = "stage3"
    with pytest.raises(UserError, match="stage='stage3'"):
        arguments.apply(config, "tiny")


@pytest.mark.parametrize("method, name", list(config_lib.STAGE1_CONFIGS.items()))
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_variants_differ_from_the_default_only_in_ssl_method(method, name, arg):
    default, variant = _flat(f"stage1_default{arg}"), _flat(f"{name}{arg}")
    assert variant == {**default, "ssl.method": method}


def test_method_files_cover_every_ssl_method():
    assert set(config_lib.STAGE1_CONFIGS) == set(config_lib.SSL_METHODS)


@pytest.mark.parametrize("name", FILES + TWO_BRANCH_FILES)
def test_field_sets_are_pinned(name):
    flat = _flat(name)
    assert set(flat) == (STAGE1_FIELDS if flat["stage"] == "stage1" else STAGE2_FIELDS)


@pytest.mark.parametrize("name", TWO_BRANCH_FILES)
@pytest.mark.parametrize("arg", ["", ":tiny"])
def test_two_branch_files_validate(name, arg):
    settings = validation.validate(config_lib.load_config_file(f"{name}{arg}"))
    if settings.stage == "stage1":
        assert settings.model.split == "lfhf"
    else:
        assert settings.prior.variant == "two_branch"


def test_release_config_is_the_installed_packages_defaults():
    """configs/stage1_timevqvae.py against `timevqvae.vqvae.VQVAE`'s own defaults."""
    vqvae = pytest.importorskip("timevqvae.vqvae", reason="needs the peers extra: make peers")
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(vqvae.VQVAE.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    model = config_lib.load_config_file("stage1_timevqvae").model
    assert {
        "n_fft": model.n_fft,
        "init_dim": model.init_dim,
        "hid_dim": model.hidden_dim,
        "downsampled_width_l": model.downsampled_width,
        "downsampled_width_h": model.hf_downsampled_width,
        "encoder_n_resnet_blocks": model.num_res_blocks,
        "decoder_n_resnet_blocks": model.num_res_blocks,
        "codebook_size_l": model.codebook_size,
        "codebook_size_h": model.hf_codebook_size,
        "kmeans_init": model.kmeans_init,
        "codebook_dim": model.codebook_dim,
    } == defaults
    quantizer = inspect.signature(
        pytest.importorskip("timevqvae.vector_quantization").VectorQuantize
    )
    assert quantizer.parameters["decay"].default == model.ema_decay
    encoder = inspect.signature(pytest.importorskip("timevqvae.models.vq_vae_encdec").VQVAEEncoder)
    assert encoder.parameters["dropout"].default == model.dropout_rate
