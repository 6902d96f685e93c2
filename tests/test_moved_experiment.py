"""A finished experiment is self-contained: moved elsewhere, with the original deleted and no
UCR files reachable, it loads, encodes, decodes and samples; evaluation says in one line that
the real-data metrics need the dataset."""

import json
import shutil

import numpy as np
import pytest

from ssl_vqvae import Experiment, artifacts, data, layout
from ssl_vqvae.errors import MissingInputError
from ssl_vqvae.evaluate import evaluate_experiment


@pytest.fixture(scope="module")
def moved(tiny_experiment, tmp_path_factory):
    """(the moved workdir, the encoding of the first test series before the move)."""
    series = data.load_ucr("GunPoint").test.x[:3]
    before = Experiment.load(tiny_experiment)
    expected = (before.encode(series, scaled=True), before.sample(4, 0, seed=3)[0])
    original = tmp_path_factory.mktemp("original") / "exp"
    shutil.copytree(tiny_experiment, original)
    target = tmp_path_factory.mktemp("elsewhere") / "moved_exp"
    shutil.move(original, target)
    assert not original.exists()
    return target, original, series, expected


@pytest.fixture
def no_ucr_files(monkeypatch, tmp_path):
    """Neither the bundled sets nor the UCR packages can be found."""
    monkeypatch.setattr(data, "BUNDLED_DIR", tmp_path / "nothing_here")
    monkeypatch.setattr(data, "package_data_dirs", lambda: [])
    with pytest.raises(MissingInputError):
        data.load_ucr("GunPoint")


def test_no_record_names_the_old_location(moved):
    target, original, _, _ = moved
    for path in target.rglob("*.json"):
        assert str(original) not in path.read_text(), path
    resolved = json.loads((target / "stage2" / layout.RESOLVED_FILE).read_text())
    assert resolved["stage1_workdir"] == ""


def test_moved_experiment_loads_encodes_and_samples_without_data(moved, no_ucr_files):
    target, _, series, (tokens, samples) = moved
    exp = Experiment.load(target, require_prior=True)
    assert exp.data.name == "GunPoint" and exp.data.length == 150
    np.testing.assert_array_equal(exp.encode(series, scaled=True), tokens)
    decoded = exp.decode(tokens)
    assert decoded.shape == (3, 150, 1) and np.all(np.isfinite(decoded))
    np.testing.assert_array_equal(exp.sample(4, 0, seed=3)[0], samples)


def test_load_model_needs_only_the_stage_folder(moved, no_ucr_files):
    target, _, _, _ = moved
    tokenizer = artifacts.load_model(target / "stage1")
    prior = artifacts.load_model(target / "stage2")
    assert type(tokenizer.module).__name__ == "VQVAE"
    assert type(prior.module).__name__ == "MaskGITTransformer"
    # Only the model item is read: no optimizer moments among the restored variables.
    assert set(tokenizer.variables) == {"params", "batch_stats", "vq"}
    assert set(prior.variables) == {"params"}
    assert prior.module.num_tokens == np.prod(tokenizer.module.token_grid)


def test_evaluation_says_it_needs_the_data_in_one_line(moved, no_ucr_files, tmp_path):
    target, _, _, _ = moved
    with pytest.raises(MissingInputError) as error:
        evaluate_experiment(target, fcn_epochs=1, cas_epochs=1, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "GunPoint" in message and "real" in message
