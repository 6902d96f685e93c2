"""`sampling.mask_unused_codes`: the prior never samples codes the training tokens do not use."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import Experiment, config_lib, generate, layout, validation
from ssl_vqvae.decoding import decoding_config
from ssl_vqvae.sampling import iterative_decode

ROOT = pathlib.Path(__file__).parent.parent
N, K, C, STEPS, BATCH = 12, 6, 3, 4, 8  # tokens, codebook size, classes, decoding steps, batch
EXCLUDED = (0, 1, 2)
# Class-dependent logits that favour the excluded ids by e^4 ~ 55x each.
BIASED = jax.random.normal(jax.random.key(7), (C + 1, N, K)) + 4.0 * jnp.isin(
    jnp.arange(K), jnp.asarray(EXCLUDED)
)


def biased_logits(tokens: jax.Array, class_ids: jax.Array) -> jax.Array:
    del tokens
    return BIASED[class_ids]


@jax.jit
def _decode(rng: jax.Array, guidance_scale: jax.Array, code_mask: jax.Array | None) -> jax.Array:
    """Decodes the biased prior; `code_mask=None` is sampling without the option."""
    return iterative_decode(
        biased_logits,
        jnp.arange(BATCH) % (C + 1),
        num_tokens=N,
        codebook_size=K,
        num_steps=STEPS,
        guidance_scale=guidance_scale,
        null_class=C,
        rng=rng,
        code_mask=code_mask,
    )


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_masked_ids_are_never_sampled_and_no_mask_changes_nothing(scale):
    mask = ~jnp.isin(jnp.arange(K), jnp.asarray(EXCLUDED))
    scale = jnp.float32(scale)
    for seed in range(5):
        rng = jax.random.key(seed)
        masked = np.asarray(_decode(rng, scale, mask))
        assert masked.min() >= len(EXCLUDED) and masked.max() < K  # no excluded id, no mask id
        unmasked = np.asarray(_decode(rng, scale, None))
        assert np.isin(unmasked, EXCLUDED).mean() > 0.5  # the bias is strong enough to matter
        np.testing.assert_array_equal(np.asarray(_decode(rng, scale, jnp.ones(K, bool))), unmasked)


def test_allowed_codes_are_validated():
    prior = type("Prior", (), {"codebook_size": K})()
    for allowed in ((), (0, K)):
        decoding = generate.DecodingConfig(allowed_codes=allowed)
        with pytest.raises(ValueError, match="allowed_codes"):
            generate.make_generator(prior, None, decoding)


def test_decoding_config_reads_usage_and_override():
    config = config_lib.load_config_file("stage2_maskgit:tiny")
    sampling = validation.validate(config).sampling
    assert not sampling.mask_unused_codes
    assert decoding_config(sampling, None).allowed_codes is None
    with pytest.raises(ValueError, match="retrain stage 2"):
        decoding_config(sampling, None, mask_unused_codes=True)
    usage = [3, 0, 1, 0]
    assert decoding_config(sampling, usage, mask_unused_codes=True).allowed_codes == (0, 2)
    config.sampling.mask_unused_codes = True
    sampling = validation.validate(config).sampling
    assert decoding_config(sampling, usage).allowed_codes == (0, 2)
    assert decoding_config(sampling, usage, mask_unused_codes=False).allowed_codes is None


def test_stage2_records_nearest_code_usage_of_train_split(tiny_experiment):
    loaded = Experiment.load(tiny_experiment, require_prior=True)
    usage = np.asarray(loaded.stage2_resolved["code_usage"])
    train = loaded.dataset.train
    tokens = loaded.encode(train.x, scaled=True)
    np.testing.assert_array_equal(
        usage, np.bincount(tokens.ravel(), minlength=loaded.tokenizer.codebook_size)
    )
    assert usage.sum() == len(train) * tokens.shape[1]


@pytest.fixture(scope="module")
def one_code(tiny_experiment, tmp_path_factory):
    """A copy of the tiny experiment whose recorded usage allows a single code: (workdir, id)."""
    workdir = tmp_path_factory.mktemp("one_code") / "exp"
    shutil.copytree(tiny_experiment, workdir)
    path = workdir / "stage2" / layout.RESOLVED_FILE
    record = json.loads(path.read_text())
    code = int(np.argmax(record["code_usage"]))
    record["code_usage"] = [int(k == code) for k in range(len(record["code_usage"]))]
    path.write_text(json.dumps(record))
    assert layout.read_resolved(workdir / "stage2")["code_usage"][code] == 1
    return workdir, code


def _constant_series(loaded: Experiment, code: int) -> np.ndarray:
    num_tokens = int(np.prod(loaded.tokenizer.token_grid))
    return loaded.decode(np.full((1, num_tokens), code))[0]


def test_api_samples_only_allowed_codes(one_code):
    workdir, code = one_code
    loaded = Experiment.load(workdir, require_prior=True)
    expected = _constant_series(loaded, code)
    masked, _ = loaded.sample(4, class_id=0, mask_unused_codes=True, seed=1)
    for series in masked:  # every token is `code`, so every sample is its constant decoding
        np.testing.assert_allclose(series, expected, rtol=1e-5, atol=1e-5)
    plain, _ = loaded.sample(4, class_id=0, seed=1)  # the config's default: off
    assert not np.allclose(plain[0], expected, atol=1e-3)


def test_sample_cli_flag(one_code, tmp_path):
    workdir, code = one_code
    result = subprocess.run(
        [
            sys.executable,
            "sample.py",
            f"--workdir={workdir}",
            "--class_id=1",
            "--num_samples=2",
            "--mask_unused_codes",
            f"--output={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = _constant_series(Experiment.load(workdir, require_prior=True), code)
    with np.load(tmp_path / "samples.npz") as saved:
        assert saved["samples"].shape == (2, *expected.shape)
        for series in saved["samples"]:
            np.testing.assert_allclose(series, expected, rtol=1e-5, atol=1e-5)
