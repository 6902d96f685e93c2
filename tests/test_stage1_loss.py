"""Stage-1 loss composition (SPEC §2.6) and where the SSL branch attaches (SPEC §3.2-3.5).

The SSL references below are NumPy float64 re-derivations of the SPEC formulas, written apart
from `ssl_vqvae.ssl`, on small batches and feature counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import config_lib, stage1
from ssl_vqvae.quantizer import QuantizerOutput
from ssl_vqvae.vqvae import VQVAE

BATCH, LENGTH, PROJ_DIM = 6, 11, 5
STFT_SHAPE = (BATCH, 5, 3, 2)  # [B, H, W, 2C]
COMMIT = 0.37


def _numpy_barlow_twins(z1: np.ndarray, z2: np.ndarray, off_diagonal_weight: float) -> float:
    """SPEC §3.4: standardise (Bessel std + 1e-8), C = z1^T z2 / B, weighted squared errors / D."""
    batch, dim = z1.shape

    def standardise(z):
        return (z - z.mean(axis=0)) / (z.std(axis=0, ddof=1) + 1e-8)

    c = standardise(z1).T @ standardise(z2) / batch
    diagonal = np.diag(c)
    off_diagonal = np.sum(c**2) - np.sum(diagonal**2)
    return float((np.sum((1 - diagonal) ** 2) + off_diagonal_weight * off_diagonal) / dim)


def _numpy_vibcreg(z1: np.ndarray, z2: np.ndarray) -> float:
    """SPEC §3.5 with lambda = mu = 25, nu = 100 and the 0.01 scale."""

    def variance(z):
        return np.mean(np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + 1e-4)))

    def covariance(z):
        centred = z - z.mean(axis=0)
        normalised = centred / np.linalg.norm(centred, axis=0)
        m = normalised.T @ normalised
        np.fill_diagonal(m, 0.0)
        return np.mean(m**2)

    invariance = np.mean((z1 - z2) ** 2)
    return float(
        0.01
        * (
            25 * invariance
            + 25 * (variance(z1) + variance(z2))
            + 100 * (covariance(z1) + covariance(z2))
        )
    )


def _fixed_outputs(with_ssl: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    """Model outputs with known numbers; x_hat is one sample shorter than x (cropped MSE)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(BATCH, LENGTH, 1))
    x_aug = rng.normal(size=(BATCH, LENGTH, 1))
    outputs = {
        "x_hat": x[:, :-1] + 0.5 * rng.normal(size=(BATCH, LENGTH - 1, 1)),
        "u": rng.normal(size=STFT_SHAPE),
        "u_hat": rng.normal(size=STFT_SHAPE),
        "vq": QuantizerOutput(
            quantized=jnp.zeros((BATCH, 5, 2, 4)),
            indices=jnp.zeros((BATCH, 5, 2), jnp.int32),
            commit_loss=jnp.float32(COMMIT),
            perplexity=jnp.float32(3.0),
            usage=jnp.float32(0.5),
        ),
    }
    if with_ssl:
        # Large augmented-view errors (~9 and ~4) make a misplaced 0.1 weight visible.
        scales = np.array([0.2, 0.5, 1.0, 2.0, 4.0])  # some below 1: the variance hinge is active
        proj = rng.normal(size=(BATCH, PROJ_DIM)) * scales
        outputs.update(
            x_aug_hat=x_aug[:, :-1] + 3.0 * rng.normal(size=(BATCH, LENGTH - 1, 1)),
            u_aug=rng.normal(size=STFT_SHAPE),
            u_aug_hat=2.0 * rng.normal(size=STFT_SHAPE),
            proj=proj,
            proj_aug=proj + 0.3 * rng.normal(size=(BATCH, PROJ_DIM)),
        )
    as_f32 = {k: v if k == "vq" else jnp.asarray(v, jnp.float32) for k, v in outputs.items()}
    return as_f32, x, x_aug


def _mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.mark.parametrize("method", ["none", "barlowtwins", "vibcreg"])
def test_total_loss_is_the_hand_sum(method):
    config = config_lib.load_config_file(config_lib.STAGE1_CONFIGS[method]).ssl
    assert config.aug_recon_weight == 0.1
    outputs, x, x_aug = _fixed_outputs(with_ssl=method != "none")
    loss, metrics = stage1.stage1_loss(
        config, outputs, jnp.asarray(x, jnp.float32), jnp.asarray(x_aug, jnp.float32)
    )
    expected = {
        "time_mse": _mse(x[:, : LENGTH - 1], outputs["x_hat"]),
        "tf_mse": _mse(outputs["u"], outputs["u_hat"]),
        "commit_loss": COMMIT,
    }
    total = sum(expected.values())
    if method != "none":
        z1 = np.asarray(outputs["proj"], np.float64)
        z2 = np.asarray(outputs["proj_aug"], np.float64)
        expected.update(
            aug_time_mse=_mse(x_aug[:, : LENGTH - 1], outputs["x_aug_hat"]),
            aug_tf_mse=_mse(outputs["u_aug"], outputs["u_aug_hat"]),
            ssl_loss=(
                _numpy_barlow_twins(z1, z2, 0.005)
                if method == "barlowtwins"
                else _numpy_vibcreg(z1, z2)
            ),
        )
        # The two SSL losses differ clearly here, so running the wrong one fails.
        assert abs(_numpy_barlow_twins(z1, z2, 0.005) - _numpy_vibcreg(z1, z2)) > 0.1
        total += 0.1 * (expected["aug_time_mse"] + expected["aug_tf_mse"]) + expected["ssl_loss"]
    else:
        assert not {"aug_time_mse", "aug_tf_mse", "ssl_loss"} & set(metrics)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(loss, total, rtol=2e-5)
    assert metrics["loss"] is loss


@pytest.mark.parametrize("method", ["simsiam", "none", ""])
def test_unknown_ssl_method_is_rejected(method):
    config = config_lib.load_config_file("stage1_vibcreg").ssl
    config.method = method
    outputs, x, x_aug = _fixed_outputs(with_ssl=True)
    pattern = rf"ssl\.method={method!r}.*'barlowtwins'.*'vibcreg'"
    with pytest.raises(ValueError, match=pattern):
        stage1.ssl_loss(config, outputs["proj"], outputs["proj_aug"])
    with pytest.raises(ValueError, match=pattern):
        stage1.stage1_loss(config, outputs, jnp.asarray(x), jnp.asarray(x_aug))


def _pool(z: np.ndarray) -> np.ndarray:
    """SPEC §3.2: concat(mean over h, w; max over h, w): [B, H, W, D] -> [B, 2D]."""
    return np.concatenate([z.mean(axis=(1, 2)), z.max(axis=(1, 2))], axis=-1)


@pytest.fixture(scope="module")
def vibcreg_forward():
    """A tiny VIbCReg tokenizer (with IterNorm) and one train-mode forward of both views."""
    model = stage1.build_model(
        config_lib.load_config_file("stage1_vibcreg:tiny"), length=64, channels=1
    )
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 64, 1)), jnp.float32)
    x_aug = jnp.asarray(rng.normal(size=(8, 64, 1)), jnp.float32)
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    outputs, _ = model.apply(variables, x, x_aug, train=True, mutable=["batch_stats", "vq"])
    return model, variables, x, x_aug, outputs


def _train_apply(model: VQVAE, variables, *args, method):
    """`model.apply` in train mode (batch statistics) discarding the updated collections."""
    return model.apply(variables, *args, method=method, mutable=["batch_stats", "vq"])[0]


def test_augmented_view_is_reconstructed_from_continuous_latents(vibcreg_forward):
    model, variables, _, x_aug, outputs = vibcreg_forward
    _, z_aug = _train_apply(model, variables, x_aug, method=lambda m, x: m.encode(x, train=True))
    u_hat, x_hat = _train_apply(
        model, variables, z_aug, method=lambda m, z: m.decode(z, train=True)
    )
    np.testing.assert_allclose(outputs["u_aug_hat"], u_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["x_aug_hat"], x_hat, rtol=1e-5, atol=1e-5)
    # Decoding the quantised z' instead gives a clearly different reconstruction.
    quantized = _train_apply(
        model, variables, z_aug, method=lambda m, z: m.quantize(z, train=False).quantized
    )
    _, x_hat_quantized = _train_apply(
        model, variables, quantized, method=lambda m, z: m.decode(z, train=True)
    )
    assert np.max(np.abs(np.asarray(x_hat_quantized - outputs["x_aug_hat"]))) > 1e-2


def test_projector_inputs_are_pooled_quantized_and_pooled_augmented_latents(vibcreg_forward):
    model, variables, x, x_aug, outputs = vibcreg_forward
    encode = lambda m, x: m.encode(x, train=True)[1]
    z = np.asarray(_train_apply(model, variables, x, method=encode), np.float64)
    z_aug = np.asarray(_train_apply(model, variables, x_aug, method=encode), np.float64)
    codebook = np.asarray(variables["vq"]["quantizer"]["codebook"], np.float64)
    distances = np.sum((z[..., None, :] - codebook) ** 2, axis=-1)
    z_q = codebook[np.argmin(distances, axis=-1)]  # nearest codewords, pre-update codebook
    np.testing.assert_allclose(outputs["vq"].quantized, z_q, atol=1e-5)

    def project(pooled):
        return _train_apply(
            model,
            variables,
            jnp.asarray(pooled, jnp.float32),
            method=lambda m, p: m.projector(p, train=True),
        )

    np.testing.assert_allclose(outputs["proj"], project(_pool(z_q)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["proj_aug"], project(_pool(z_aug)), rtol=1e-4, atol=1e-5)
    # The continuous original-view latents would give something else.
    assert np.max(np.abs(np.asarray(outputs["proj"] - project(_pool(z))))) > 1e-2


def test_plain_vqvae_has_no_ssl_branch():
    model = stage1.build_model(
        config_lib.load_config_file("stage1_vqvae:tiny"), length=64, channels=1
    )
    x = jnp.ones((2, 64, 1))
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    outputs = model.apply(variables, x, train=False)
    assert not {"proj", "proj_aug", "x_aug_hat"} & set(outputs)
    assert "projector" not in variables["params"]
    with pytest.raises(ValueError, match="no projector"):
        model.apply(variables, x, x, train=False)
