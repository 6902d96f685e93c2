"""The two-branch (LF/HF) tokenizer as a whole: geometry, band split, loss terms, SSL wiring,
and a tiny stage-1 + stage-2 run through the public API (configs stage1_timevqvae*).

The branches' layers are checked against the released package in
tests/test_parity_timevqvae_tokenizer.py and tests/test_parity_timevqvae_prior.py.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import Experiment, config_lib, layout, stage1, stage2, train_state, validation
from ssl_vqvae.errors import UserError
from ssl_vqvae.quantizer import QuantizerOutput
from ssl_vqvae.two_branch import TwoBranchVQVAE

LENGTH = 150  # GunPoint


def _settings(name: str):
    return validation.validate(config_lib.load_config_file(name))


def _abstract_variables(model: TwoBranchVQVAE, batch: int = 4):
    x = jax.ShapeDtypeStruct((batch, LENGTH, 1), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))


def test_release_tokenizer_has_the_packages_geometry_and_size():
    model = stage1.build_model(_settings("stage1_timevqvae"), LENGTH, 1)
    assert isinstance(model, TwoBranchVQVAE)
    # timevqvae 1.0.1 on GunPoint: LF 1 x 9 and HF 2 x 37 token grids, 85,076 trainable params.
    assert model.grid("lf") == (1, 9) and model.grid("hf") == (2, 37)
    assert model.token_segments == ((9, 1024), (74, 1024))
    variables = _abstract_variables(model)
    assert train_state.count_params(variables["params"]) == 85_076
    assert set(variables) == {"params", "batch_stats", "vq"}
    assert model.output_length == LENGTH


def test_2023_tokenizer_keeps_every_stft_row_per_branch():
    model = stage1.build_model(_settings("stage1_timevqvae2023"), LENGTH, 1)
    # n_fft 8: 5 rows; both encoders see the whole (zero-padded) map, as TimeVQVAE 2023.
    assert model.grid("lf") == (5, 9) and model.grid("hf") == (5, 38)
    assert model.token_segments == ((45, 32), (190, 32))
    assert model.output_length == LENGTH


@pytest.mark.parametrize("name", ["stage1_timevqvae:tiny", "stage1_timevqvae2023:tiny"])
def test_the_bands_add_up_to_the_series(name):
    model = stage1.build_model(_settings(name), LENGTH, 1)
    x = jnp.asarray(np.random.RandomState(0).randn(2, LENGTH, 1), jnp.float32)

    def bands(module: TwoBranchVQVAE, x):
        full = module.lf.stft(x)
        (u_lf, x_lf), (u_hf, x_hf) = module.lf.band(full), module.hf.band(full)
        return full, u_lf, u_hf, x_lf, x_hf

    full, u_lf, u_hf, x_lf, x_hf = model.apply({}, x, method=bands)
    np.testing.assert_allclose(u_lf + u_hf, full, atol=1e-6)
    assert np.all(np.asarray(u_lf)[:, 1:] == 0) and np.all(np.asarray(u_hf)[:, 0] == 0)
    np.testing.assert_allclose(x_lf + x_hf, x[:, : x_lf.shape[1]], atol=1e-5)


def _band(rng: np.random.RandomState, length: int = 10) -> dict[str, jnp.ndarray]:
    return {
        "x": jnp.asarray(rng.randn(3, length, 1), jnp.float32),
        "x_hat": jnp.asarray(rng.randn(3, length, 1), jnp.float32),
        "u": jnp.asarray(rng.randn(3, 5, 4, 2), jnp.float32),
        "u_hat": jnp.asarray(rng.randn(3, 5, 4, 2), jnp.float32),
    }


def _vq(commit: float) -> QuantizerOutput:
    one = jnp.ones(())
    return QuantizerOutput(one, jnp.zeros(2, jnp.int32), jnp.float32(commit), one, one)


@pytest.mark.parametrize("codec", ["timevqvae", "ncvqvae"])
def test_two_branch_loss_is_timevqvaes_sum_of_terms(codec):
    rng = np.random.RandomState(1)
    outputs = {"lf": {**_band(rng), "vq": _vq(0.25)}, "hf": {**_band(rng), "vq": _vq(0.5)}}
    ssl_settings = _settings("stage1_timevqvae").ssl
    loss, metrics = stage1.two_branch_loss(ssl_settings, codec, outputs)
    lf, hf = (
        {k: np.asarray(v) for k, v in outputs[b].items() if k != "vq"} for b in "lf hf".split()
    )
    expected = {
        "lf_time": np.mean((lf["x"] - lf["x_hat"]) ** 2),  # LF: MSE
        "hf_time": np.mean(np.abs(hf["x"] - hf["x_hat"])),  # HF: L1
    }
    if codec == "ncvqvae":  # TimeVQVAE 2023 adds both time-frequency MSEs
        expected["lf_tf_mse"] = np.mean((lf["u"] - lf["u_hat"]) ** 2)
        expected["hf_tf_mse"] = np.mean((hf["u"] - hf["u_hat"]) ** 2)
    else:
        assert "lf_tf_mse" not in metrics
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-6)
    np.testing.assert_allclose(loss, sum(expected.values()) + 0.75, rtol=1e-6)
    assert "ssl_loss" not in metrics


def test_two_branch_loss_with_ssl_weights_the_augmented_view():
    rng = np.random.RandomState(2)
    outputs = {"lf": {**_band(rng), "vq": _vq(0.0)}, "hf": {**_band(rng), "vq": _vq(0.0)}}
    plain, _ = stage1.two_branch_loss(_settings("stage1_timevqvae").ssl, "ncvqvae", outputs)
    ssl_settings = _settings("stage1_timevqvae_barlowtwins").ssl
    proj = jnp.asarray(rng.randn(8, 16), jnp.float32)
    outputs.update(aug_lf=_band(rng), aug_hf=_band(rng), proj=proj, proj_aug=proj[::-1])
    loss, metrics = stage1.two_branch_loss(ssl_settings, "ncvqvae", outputs)
    aug = sum(metrics[f"aug_{b}_{t}"] for b in ("lf", "hf") for t in ("time", "tf_mse"))
    expected = plain + ssl_settings.aug_recon_weight * aug + metrics["ssl_loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(metrics["ssl_loss"]) > 0


def test_one_projector_sees_both_bands_and_ssl_trains_both_encoders():
    settings = _settings("stage1_timevqvae_vibcreg:tiny")
    model = stage1.build_model(settings, LENGTH, 1)
    hidden = settings.model.hidden_dim
    x = jnp.asarray(np.random.RandomState(3).randn(8, LENGTH, 1), jnp.float32)
    # Jitted with the trainers' initialisation key: far cheaper to compile than eager init.
    init = jax.jit(lambda key: model.init(key, x, train=False))
    variables = init(train_state.initialisation_key(jax.random.key(0)))
    # Projector input: [mean ‖ max of LF codes ‖ mean ‖ max of HF codes] = 4 * hidden.
    first = variables["params"]["projector"]["Dense_0"]["kernel"]
    assert first.shape[0] == 4 * hidden

    params, others = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def ssl_only(params):
        outputs, _ = model.apply(
            {"params": params, **others},
            x,
            x[:, ::-1],
            train=True,
            mutable=["batch_stats", "vq"],
            rngs={"dropout": jax.random.key(1)},
        )
        return stage1.ssl_loss(settings.ssl, outputs["proj"], outputs["proj_aug"])[0]

    grads = jax.jit(jax.grad(ssl_only))(params)
    norm = {name: float(optax_norm(grads[name])) for name in ("lf", "hf", "projector")}
    assert norm["lf"] > 0 and norm["hf"] > 0 and norm["projector"] > 0
    # The decoders get nothing from the SSL loss.
    for branch in ("lf", "hf"):
        assert float(optax_norm(grads[branch]["decoder"])) == 0.0
        assert float(optax_norm(grads[branch]["encoder"])) > 0


def optax_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree)))


def test_prior_variant_follows_the_tokenizer():
    prior = _settings("stage2_maskgit").prior
    assert stage2.resolve_variant(prior, "vibcreg", "lfhf") == "two_branch"
    assert stage2.resolve_variant(prior, "none", "lfhf") == "two_branch"
    with pytest.raises(UserError, match="prior.variant='token_index' does not fit"):
        stage2.resolve_variant(dataclasses.replace(prior, variant="token_index"), "none", "lfhf")
    with pytest.raises(UserError, match="prior.variant='two_branch' does not fit"):
        stage2.resolve_variant(dataclasses.replace(prior, variant="two_branch"), "none", "none")


def test_release_codec_needs_the_split():
    config = config_lib.load_config_file("stage1_default")
    config.model.codec = "timevqvae"
    with pytest.raises(UserError, match="model.codec='timevqvae' needs model.split='lfhf'"):
        validation.validate(config)


@pytest.fixture(scope="module")
def two_branch_experiment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_branch")
    stage1.train_and_evaluate(
        config_lib.load_config_file("stage1_timevqvae_vibcreg:tiny"), str(workdir)
    )
    stage2.train_and_evaluate(config_lib.load_config_file("stage2_timevqvae:tiny"), str(workdir))
    return workdir


def test_two_branch_experiment_end_to_end(two_branch_experiment):
    resolved = layout.read_resolved(two_branch_experiment / "stage2")
    assert resolved["prior_variant"] == "two_branch"
    exp = Experiment.load(two_branch_experiment, require_prior=True)
    (num_lf, k_lf), (num_hf, k_hf) = exp.tokenizer.token_segments
    x = exp.dataset.test.x[:5]
    tokens = exp.encode(x)
    chex.assert_shape(tokens, (5, num_lf + num_hf))
    assert tokens[:, :num_lf].max() < k_lf and tokens[:, num_lf:].max() < k_hf
    series = exp.decode(tokens)
    chex.assert_shape(series, (5, LENGTH, 1))
    assert np.all(np.isfinite(series))
    bad = tokens.copy()
    bad[0, num_lf] = k_hf
    with pytest.raises(ValueError, match=f"ids {num_lf}..{num_lf + num_hf - 1} must lie in"):
        exp.decode(bad)

    samples, labels = exp.sample(6, class_id=1, seed=0)
    chex.assert_shape(samples, (6, LENGTH, 1))
    assert np.all(np.isfinite(samples)) and np.all(labels == 1)
    np.testing.assert_array_equal(samples, exp.sample(6, class_id=1, seed=0)[0])
    assert not np.array_equal(samples, exp.sample(6, class_id=1, seed=1)[0])
    guided, _ = exp.sample(6, class_id=1, seed=0, guidance_scale=2.0)
    assert np.all(np.isfinite(guided)) and not np.array_equal(guided, samples)
