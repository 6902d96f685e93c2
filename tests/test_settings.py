"""`validation.validate`: config -> frozen settings, checked, without touching the config."""

import copy
import dataclasses
import json
import pathlib

import pytest

from ssl_vqvae import config_lib, settings, validation
from ssl_vqvae.errors import UserError

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("stage*.py"))
STAGE1, STAGE2 = "stage1_vibcreg", "stage2_maskgit"


def _config(name, arg=None):
    """The ConfigDict of `configs/<name>.py`, as `--config=configs/<name>.py:<arg>` gives it."""
    return config_lib.load_config_file(f"{name}:{arg}" if arg else name)


def _tree(name, arg=None):
    return _config(name, arg).to_dict()


def _sections(value):
    """`value` and every settings object nested in it."""
    yield value
    for field in dataclasses.fields(value):
        child = getattr(value, field.name)
        if isinstance(child, settings.Settings):
            yield from _sections(child)


ALL = [(path.stem, arg) for path in CONFIGS for arg in (None, "tiny")]


def test_every_config_file_is_covered():
    names = {name for name, _ in ALL}
    assert {"stage1_vqvae", "stage1_barlowtwins", "stage1_vibcreg", "stage2_maskgit"} <= names


@pytest.mark.parametrize("name, arg", ALL)
def test_round_trip_equals_the_config(name, arg):
    config = _config(name, arg)
    result = validation.validate(config)
    assert type(result).stage == config.stage
    assert result.to_dict() == config.to_dict()
    assert json.dumps(result.to_dict(), sort_keys=True) == config.to_json(sort_keys=True)
    assert type(result).from_dict(result.to_dict()) == result
    assert validation.validate(json.loads(json.dumps(config.to_dict()))) == result


@pytest.mark.parametrize("name", [STAGE1, STAGE2])
def test_every_field_has_a_rule(name):
    result = validation.validate(_config(name))
    _, rules = validation.STAGES[type(result).stage]
    assert set(config_lib.flatten(result.to_dict())) == set(rules)


@pytest.mark.parametrize("name", [STAGE1, STAGE2])
def test_settings_are_frozen_and_hashable(name):
    result = validation.validate(_config(name))
    sections = list(_sections(result))
    assert len(sections) == 6  # the root and its five sections
    for section in sections:
        field = dataclasses.fields(section)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, field, 0)
        hash(section)
    assert validation.validate(_config(name)) == result
    assert hash(validation.validate(_config(name))) == hash(result)
    tree = _tree(name)
    tree["seed"] += 1
    assert validation.validate(tree) != result
    assert len({result, validation.validate(tree)}) == 2


def test_stage_dispatch():
    assert isinstance(validation.validate(_config(STAGE1)), settings.Stage1Settings)
    assert isinstance(validation.validate(_config(STAGE2)), settings.Stage2Settings)
    assert isinstance(validation.validate(_config(STAGE1)).train, settings.Stage1LoopSettings)
    assert type(validation.validate(_config(STAGE2)).train) is settings.LoopSettings
    tree = _tree(STAGE1)
    tree["stage"] = "stage2"  # a stage-1 config read as stage 2 has unknown sections
    with pytest.raises(UserError, match="unknown config field model;"):
        validation.validate(tree)
    tree["stage"] = "stage3"
    with pytest.raises(UserError, match=r"config field stage='stage3'; expected one of \("):
        validation.validate(tree)
    del tree["stage"]
    with pytest.raises(UserError, match="missing config field stage;"):
        validation.validate(tree)


STAGE1_BAD = [
    ("seed", -1, "seed=-1; expected an integer >= 0"),
    ("data.batch_size", True, "data.batch_size=True; expected an integer >= 1"),
    ("data.variable_length", "pad", "data.variable_length='pad'; expected one of"),
    ("model.codebook_size", 1, "model.codebook_size=1; expected an integer >= 2"),
    ("model.n_fft", 6, "model.n_fft=6; expected a power of 2 >= 4"),
    ("ssl.method", "vibcrg", "ssl.method='vibcrg'; .*did you mean 'vibcreg'\\?"),
    ("ssl.augmentations", "warp,jitter", "ssl.augmentations='warp,jitter': .*jitter"),
    ("ssl.iternorm_groups", 5, "ssl.projector_output_dim=4096 must be divisible by .*groups=5"),
    ("optim.learning_rate", 0.0, "optim.learning_rate=0.0; expected a finite number > 0"),
    ("train.log_every", 0, "train.log_every=0; expected an integer >= 1"),
    ("train.probe_every", 1.5, "train.probe_every=1.5; expected an integer >= 0"),
    ("train.plot_every_eval", 1, "train.plot_every_eval=1; expected true or false"),
]
STAGE2_BAD = [
    ("stage1_workdir", None, "stage1_workdir=None; expected a string"),
    ("data.eval_batch_size", 0, "data.eval_batch_size=0; expected an integer >= 1"),
    ("prior.p_unconditional", 1.5, r"prior.p_unconditional=1.5; expected a number in \[0, 1\]"),
    ("sampling.guidance_scale", -1.0, "sampling.guidance_scale=-1.0; expected a finite number"),
    ("optim.weight_decay", float("nan"), "optim.weight_decay=nan; expected a finite number >= 0"),
    ("train.num_steps", -5, "train.num_steps=-5; expected an integer >= 0"),
]


def _set(tree, path, value):
    *sections, field = path.split(".")
    for section in sections:
        tree = tree[section]
    tree[field] = value


@pytest.mark.parametrize(
    "name, path, value, message",
    [(STAGE1, *case) for case in STAGE1_BAD] + [(STAGE2, *case) for case in STAGE2_BAD],
)
def test_bad_value_names_the_field(name, path, value, message):
    tree = _tree(name)
    _set(tree, path, value)
    with pytest.raises(UserError, match=f"^config field {message}") as error:
        validation.validate(tree)
    assert "\n" not in str(error.value)


def test_unknown_and_missing_fields_are_refused():
    tree = _tree(STAGE1)
    tree["train"]["num_step"] = 5
    with pytest.raises(
        UserError, match=r"unknown config field train.num_step; .*'train.num_steps'"
    ):
        validation.validate(tree)
    tree = _tree(STAGE2)
    tree["sead"] = 1
    with pytest.raises(UserError, match="unknown config field sead; .*did you mean 'seed'"):
        validation.validate(tree)
    tree = _tree(STAGE2)
    del tree["sampling"]["mask_unused_codes"]
    with pytest.raises(UserError, match="^missing config field sampling.mask_unused_codes;"):
        validation.validate(tree)
    tree = _tree(STAGE1)
    tree["model"] = 3
    with pytest.raises(UserError, match="^config field model=3; expected a section with n_fft"):
        validation.validate(tree)
    tree = _tree(STAGE1)
    tree["train"]["num_steps"] = {"value": 5}
    with pytest.raises(UserError, match="^config field train.num_steps is a section;"):
        validation.validate(tree)


def test_ignore_drops_resolved_values_of_a_stored_config():
    stored = {**_tree(STAGE2), "run_id": "abc", "resolved_variant": "full_embedding"}
    stored.update(stage1_dir="/w/stage1", stage1_run_id="def", code_usage=[3, 0, 1])
    with pytest.raises(UserError, match="unknown config field"):
        validation.validate(stored)
    assert validation.validate(stored, ignore=validation.RESOLVED_KEYS) == validation.validate(
        _config(STAGE2)
    )
    with pytest.raises(UserError, match="unknown config field sead"):
        validation.validate({**stored, "sead": 1}, ignore=validation.RESOLVED_KEYS)


@pytest.mark.parametrize("locked", [True, False])
@pytest.mark.parametrize("name", [STAGE1, STAGE2])
def test_validate_neither_changes_nor_unlocks_the_config(name, locked):
    config = _config(name, "tiny")
    if locked:
        config.lock()
    else:
        config.unlock()
    before = config.to_json(sort_keys=False)
    validation.validate(config)
    assert config.to_json(sort_keys=False) == before
    assert config.is_locked == locked and config.train.is_locked == locked
    tree = config.to_dict()
    snapshot = copy.deepcopy(tree)
    validation.validate(tree)
    assert tree == snapshot


def test_check_series_length_takes_tokenizer_settings():
    model = validation.validate(_config(STAGE1)).model
    validation.check_series_length(model, "GunPoint", 150)
    with pytest.raises(UserError, match="length 4 are too short for model.n_fft=8"):
        validation.check_series_length(model, "Short", 4)
    wide = dataclasses.replace(model, n_fft=16)
    with pytest.raises(UserError, match="length 8 are too short for model.n_fft=16"):
        validation.check_series_length(wide, "Short", 8)
