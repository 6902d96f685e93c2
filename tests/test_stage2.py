"""Stage-2 training, the public Experiment API, sample.py and the CLI's error messages."""

import dataclasses
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssl_vqvae import Experiment, config_lib, layout, stage2, validation
from ssl_vqvae.metric_log import read_metrics

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def loaded(tiny_experiment):
    return Experiment.load(tiny_experiment, require_prior=True)


def test_stage2_artifacts_and_variant(tiny_experiment):
    run = tiny_experiment / "stage2"
    resolved = layout.read_resolved(run)
    assert resolved["prior_variant"] == "full_embedding"  # ssl.method=vibcreg (SPEC §4.3)
    assert resolved["masking_convention"] == "thesis_replace" and resolved["stage1_workdir"] == ""
    assert resolved["stage1_run_id"] == layout.read_resolved(tiny_experiment / "stage1")["run_id"]
    # The stored config is the request as given: nothing resolved is written into it.
    assert (
        layout.read_config(run).to_dict()
        == config_lib.load_config_file("stage2_maskgit:tiny").to_dict()
    )
    assert (run / "checkpoints" / "8").is_dir() and list((run / "plots").glob("samples_*.png"))
    evals = [r for r in read_metrics(run) if "eval/loss" in r]
    assert evals and np.isfinite(evals[-1]["eval/loss"])


def test_variant_and_masking_resolution():
    prior = validation.validate(config_lib.load_config_file("stage2_maskgit")).prior
    assert stage2.resolve_variant(prior, "none") == "token_index"
    assert stage2.resolve_variant(prior, "barlowtwins") == "full_embedding"
    assert stage2.masking_convention("thesis", "token_index") == "thesis_keep"
    assert stage2.masking_convention("thesis", "full_embedding") == "thesis_replace"
    assert stage2.masking_convention("standard", "token_index") == "standard"
    with pytest.raises(ValueError, match="prior.variant='gpt'"):
        stage2.resolve_variant(dataclasses.replace(prior, variant="gpt"), "none")


def test_stage2_without_stage1_names_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "stage1")):
        stage2.train_and_evaluate(config_lib.load_config_file("stage2_maskgit:tiny"), str(tmp_path))


def test_stage2_resumes(tiny_experiment, tmp_path, capsys):
    shutil.copytree(tiny_experiment, tmp_path, dirs_exist_ok=True)
    config = config_lib.load_config_file("stage2_maskgit:tiny")
    config.train.num_steps = 12
    state = stage2.train_and_evaluate(config, str(tmp_path))
    assert "resumed from step 8" in capsys.readouterr().out and int(state.step) == 12


def test_api_encode_decode_represent(loaded):
    dataset = loaded.dataset
    raw = dataset.unscale(dataset.test.x[:5, :, 0])
    tokens = loaded.encode(raw)
    assert tokens.shape == (5, 45) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < loaded.tokenizer.codebook_size
    assert loaded.represent(raw).shape == (5, loaded.tokenizer.hidden_dim)
    series = loaded.decode(tokens)
    assert series.shape == (5, 150, 1) and np.all(np.isfinite(series))
    with pytest.raises(ValueError, match=r"series: expected shape \[B, 150"):
        loaded.encode(raw[:, :100])
    with pytest.raises(ValueError, match="tokens: ids must lie in"):
        loaded.decode(tokens + 100)


def test_api_sampling_is_seeded_and_conditional(loaded):
    a, labels = loaded.sample(6, class_id=1, seed=3)
    b, _ = loaded.sample(6, class_id=1, seed=3)
    c, _ = loaded.sample(6, class_id=1, seed=4)
    assert a.shape == (6, 150, 1) and labels.tolist() == [1] * 6
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The class reaches the prior: with the same seed (the same random draws), class 0 and the
    # null class give other series; a sampler that dropped the class id would repeat `a`.
    other_class, _ = loaded.sample(6, class_id=0, seed=3)
    unconditional, ids = loaded.sample(6, None, seed=3)
    assert unconditional.shape == (6, 150, 1) and set(ids) == {loaded.dataset.num_classes}
    assert not np.array_equal(a, other_class)
    assert not np.array_equal(a, unconditional)
    assert not np.array_equal(other_class, unconditional)
    with pytest.raises(ValueError, match="class_id=7"):
        loaded.sample(2, class_id=7)


def _run(*args):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_sample_cli_writes_npz_and_png(tiny_experiment, tmp_path):
    result = _run(
        "sample.py", f"--workdir={tiny_experiment}", "--num_samples=4", f"--output={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "samples.npz") as saved:
        assert saved["samples"].shape == (8, 150, 1)
        assert sorted(set(saved["labels"].tolist())) == [0, 1]
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_cli_errors_are_one_line(tmp_path):
    result = _run("train.py", "--config=configs/stage2_maskgit.py:tiny", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr and "stage1" in result.stderr
    result = _run("sample.py", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_guidance_scale_one_skips_null_pass_with_same_samples(loaded):
    import jax
    import jax.numpy as jnp

    from ssl_vqvae import generate

    assert generate.guidance_argument(1.0) is None
    assert float(generate.guidance_argument(2.0)) == 2.0
    generator = generate.make_generator(loaded.prior, loaded.tokenizer, loaded.decoding())
    ids = jnp.array([0, 1, 0, 1], jnp.int32)
    args = (loaded.prior_variables, loaded.tokenizer_variables, ids, jax.random.key(5))
    one_pass = generator(*args, None)
    two_passes = generator(*args, jnp.float32(1.0))
    np.testing.assert_allclose(one_pass, two_passes, rtol=1e-5, atol=1e-5)
