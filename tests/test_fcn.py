"""Tests for the FCN classifier: shapes, parameter count, TF-style SAME padding, BN modes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.evaluation import FCN
from ssl_vqvae.normalization import EPSILON as BN_EPSILON
from ssl_vqvae.normalization import MOMENTUM as BN_MOMENTUM

TINY = dict(num_classes=3, channels=(4, 6, 5), kernel_sizes=(8, 5, 3))
BATCH, LENGTH, IN_CHANNELS = 2, 16, 2
NOISE = 0.3


@pytest.fixture(scope="module")
def tiny():
    """A tiny FCN with perturbed params / batch stats so every term of the forward pass matters."""
    model = FCN(**TINY)
    x = jax.random.normal(jax.random.key(0), (BATCH, LENGTH, IN_CHANNELS), jnp.float32)

    @jax.jit
    def make_variables(x):
        variables = model.init(jax.random.key(1), x, train=False)
        leaves, treedef = jax.tree.flatten(variables)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        noisy = [
            leaf + NOISE * jax.random.normal(key, leaf.shape, leaf.dtype)
            for leaf, key in zip(leaves, keys, strict=True)
        ]
        variables = jax.tree.unflatten(treedef, noisy)
        # Running variances must stay positive.
        stats = jax.tree.map(lambda v: jnp.abs(v) + 0.5, variables["batch_stats"])
        return {"params": variables["params"], "batch_stats": stats}

    return model, make_variables(x), x


def _numpy_conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Cross-correlation with TF SAME padding: (k-1)//2 zeros left, k//2 right."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0)))
    out = np.zeros((x.shape[0], x.shape[1], kernel.shape[2]))
    for t in range(x.shape[1]):
        out[:, t] = np.einsum("bjc,jcf->bf", xp[:, t : t + k], kernel)
    return out + bias


def _numpy_fcn_eval(variables, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    params = jax.tree.map(np.asarray, variables["params"])
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    h = np.asarray(x, np.float64)
    for i in range(len(TINY["channels"])):
        conv, bn, st = params[f"Conv_{i}"], params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"]
        h = _numpy_conv_same(h, conv["kernel"], conv["bias"])
        h = (h - st["mean"]) / np.sqrt(st["var"] + BN_EPSILON) * bn["scale"] + bn["bias"]
        h = np.maximum(h, 0.0)
    pooled = h.mean(axis=1)
    logits = pooled @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    return logits, pooled


def test_shapes_and_dtypes(tiny):
    model, variables, x = tiny
    logits, features = model.apply(variables, x, train=False)
    chex.assert_shape(logits, (BATCH, TINY["num_classes"]))
    chex.assert_shape(features, (BATCH, TINY["channels"][-1]))
    assert logits.dtype == jnp.float32 and features.dtype == jnp.float32


def test_default_param_count_matches_formula():
    num_classes, in_channels = 5, 1
    model = FCN(num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 32, in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    # conv kernel + conv bias + BN scale/bias per layer, then the dense head.
    expected = (
        (8 * 1 * 128 + 128 + 2 * 128)
        + (5 * 128 * 256 + 256 + 2 * 256)
        + (3 * 256 * 128 + 128 + 2 * 128)
        + (128 * num_classes + num_classes)
    )
    assert count(shapes["params"]) == expected == 265_349
    assert count(shapes["batch_stats"]) == 2 * (128 + 256 + 128)


@pytest.mark.parametrize("kernel_size", [3, 4, 5, 8])
def test_same_padding_is_tf_style(kernel_size):
    x = jax.random.normal(jax.random.key(3), (2, 11, 3), jnp.float32)
    same = nn.Conv(4, kernel_size=(kernel_size,), padding="SAME")
    valid = nn.Conv(4, kernel_size=(kernel_size,), padding="VALID")
    params = same.init(jax.random.key(4), x)
    pads = ((0, 0), ((kernel_size - 1) // 2, kernel_size // 2), (0, 0))
    expected = valid.apply(params, jnp.asarray(np.pad(np.asarray(x), pads)))
    got = same.apply(params, x)
    chex.assert_shape(got, (2, 11, 4))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_eval_forward_matches_numpy_reference(tiny):
    model, variables, x = tiny
    logits, features = model.apply(variables, x, train=False)
    ref_logits, ref_features = _numpy_fcn_eval(variables, np.asarray(x))
    np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_eval_mode_is_deterministic_and_batch_independent(tiny):
    model, variables, x = tiny
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    first, second = apply(variables, x), apply(variables, x)
    chex.assert_trees_all_close(first, second, rtol=0, atol=0)
    # Running statistics: a sample's output does not depend on the rest of the batch.
    alone = apply(variables, x[:1])
    chex.assert_trees_all_close(alone, jax.tree.map(lambda a: a[:1], first), atol=1e-5)


def test_train_mode_updates_batch_stats_with_momentum(tiny):
    model, variables, x = tiny
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    conv = variables["params"]["Conv_0"]
    pre_bn = _numpy_conv_same(np.asarray(x, np.float64), np.asarray(conv["kernel"]), conv["bias"])
    old_mean = np.asarray(variables["batch_stats"]["BatchNorm_0"]["mean"])
    expected = BN_MOMENTUM * old_mean + (1 - BN_MOMENTUM) * pre_bn.mean(axis=(0, 1))
    np.testing.assert_allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], expected, atol=1e-5)


def test_gradients_reach_every_parameter(tiny):
    model, variables, x = tiny
    labels = jnp.arange(BATCH) % TINY["num_classes"]

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )[0]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss_fn))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(np.asarray(g) != 0), path


def test_rejects_non_3d_input():
    with pytest.raises(ValueError, match="x: expected"):
        FCN(num_classes=2).init(jax.random.key(0), jnp.zeros((4, 16)), train=False)
