"""Tests of pooling, IterNorm, the projector and the SSL losses against numpy references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.ssl import (
    IterNorm,
    Projector,
    barlow_twins_loss,
    pool_mean_max,
    vibcreg_loss,
)

_bt = jax.jit(barlow_twins_loss)
_vibcreg = jax.jit(vibcreg_loss)


def _views(batch: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated views with non-trivial means and scales."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((batch, dim)) @ rng.standard_normal((dim, dim)) * 0.5
    z1 = base + 0.3 * rng.standard_normal((batch, dim)) + rng.standard_normal(dim)
    z2 = base * rng.uniform(0.5, 2.0, dim) + 0.3 * rng.standard_normal((batch, dim))
    return z1.astype(np.float32), z2.astype(np.float32)


def _orthogonal_features(batch: int, dim: int, seed: int) -> np.ndarray:
    """[batch, dim] with centred, mutually orthogonal columns of arbitrary scale and offset."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, dim))
    q, _ = np.linalg.qr(a - a.mean(0))
    return q * rng.uniform(0.5, 3.0, dim) + rng.standard_normal(dim)


# ---------------------------------------------------------------- numpy references (float64)


def _np_barlow_twins(z1: np.ndarray, z2: np.ndarray, lam: float) -> float:
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
    b, d = z1.shape
    n1 = (z1 - z1.mean(0)) / (z1.std(0, ddof=1) + 1e-8)
    n2 = (z2 - z2.mean(0)) / (z2.std(0, ddof=1) + 1e-8)
    c = n1.T @ n2 / b
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return (on + lam * off) / d


def _np_vibcreg_terms(z1: np.ndarray, z2: np.ndarray) -> dict[str, float]:
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)

    def var(z):
        return np.mean(np.maximum(0.0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4)))

    def cov(z):
        c = z - z.mean(0)
        c = c / np.linalg.norm(c, axis=0)
        m = c.T @ c
        np.fill_diagonal(m, 0.0)
        return np.mean(m**2)

    return {
        "invariance": np.mean((z1 - z2) ** 2),
        "variance": var(z1) + var(z2),
        "covariance": cov(z1) + cov(z2),
    }


def _np_iternorm_train(x: np.ndarray, groups: int, iterations: int, eps: float):
    """Reference IterNorm forward in train mode: returns (output, batch mean, whitening)."""
    x = x.astype(np.float64)
    b, d = x.shape
    c = d // groups
    out = np.empty_like(x)
    means, whitenings = [], []
    for g in range(groups):
        xg = x[:, g * c : (g + 1) * c].T  # [C, B]
        mean = xg.mean(1, keepdims=True)
        xc = xg - mean
        sigma = eps * np.eye(c) + xc @ xc.T / b
        tr = np.trace(sigma)
        sigma_n = sigma / tr
        p = np.eye(c)
        for _ in range(iterations):
            p = 1.5 * p - 0.5 * np.linalg.matrix_power(p, 3) @ sigma_n
        w = p / np.sqrt(tr)
        out[:, g * c : (g + 1) * c] = (w @ xc).T
        means.append(mean[:, 0])
        whitenings.append(w)
    return out, np.stack(means), np.stack(whitenings)


# ---------------------------------------------------------------- pooling


def test_pool_mean_max_matches_numpy():
    z = np.random.default_rng(0).standard_normal((3, 5, 4, 6)).astype(np.float32)
    pooled = pool_mean_max(jnp.asarray(z))
    chex.assert_shape(pooled, (3, 12))
    expected = np.concatenate([z.mean((1, 2)), z.max((1, 2))], axis=-1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="z"):
        pool_mean_max(jnp.zeros((3, 5, 6)))


# ---------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize(
    ("batch", "dim", "lam"), [(12, 16, 0.005), (6, 8, 0.5), (2, 8, 0.005), (24, 8, 0.005)]
)
def test_barlow_twins_matches_numpy(batch, dim, lam):
    z1, z2 = _views(batch, dim, seed=batch)
    loss = _bt(z1, z2, lam)
    chex.assert_shape(loss, ())
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, _np_barlow_twins(z1, z2, lam), rtol=1e-5)


def test_barlow_twins_of_identical_decorrelated_views_is_one_over_batch_squared():
    # Bessel-corrected std with a 1/B cross-correlation gives C = (B - 1)/B * I exactly
    # (reference quirk), so the loss is D * (1/B)^2 / D = 1/B^2 rather than 0.
    batch, dim = 16, 8
    z = _orthogonal_features(batch, dim, seed=3).astype(np.float32)
    np.testing.assert_allclose(_bt(z, z, 0.005), 1.0 / batch**2, rtol=1e-4)


def test_barlow_twins_is_invariant_to_feature_affine_maps():
    z1, z2 = _views(10, 8, seed=4)
    scale = np.random.default_rng(5).uniform(0.5, 4.0, 8).astype(np.float32)
    np.testing.assert_allclose(_bt(z1 * scale + 3.0, z2, 0.005), _bt(z1, z2, 0.005), rtol=1e-4)


# ---------------------------------------------------------------- VIbCReg


@pytest.mark.parametrize(("batch", "dim"), [(16, 32), (6, 8), (2, 8), (24, 8)])
def test_vibcreg_matches_numpy(batch, dim):
    z1, z2 = _views(batch, dim, seed=batch + 100)
    loss, terms = _vibcreg(z1, z2)
    expected = _np_vibcreg_terms(z1, z2)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)
    total = 0.01 * (
        25 * expected["invariance"] + 25 * expected["variance"] + 100 * expected["covariance"]
    )
    np.testing.assert_allclose(loss, total, rtol=1e-5)


@pytest.mark.parametrize("loss_name", ["barlowtwins", "vibcreg"])
def test_batch_gram_form_equals_torch_cross_correlation_form(loss_name):
    """The D > batch path (batch x batch Grams) against the reference's D x D form in torch.

    Values and gradients at the projector's real width (4096, batch 128): the Gram form must be
    the same loss, not an approximation.
    """
    torch = pytest.importorskip(
        "torch", reason="parity extra not installed: pip install -e '.[parity]'"
    )
    batch, dim = 128, 4096
    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(dim, dim // 64)).astype(np.float32)
    z1 = (rng.normal(size=(batch, dim // 64)) @ mixing.T).astype(np.float32)
    z2 = (z1 + 0.5 * rng.normal(size=(batch, dim))).astype(np.float32)
    t1, t2 = (torch.tensor(z, dtype=torch.float64, requires_grad=True) for z in (z1, z2))
    eye = torch.eye(dim, dtype=torch.bool)
    if loss_name == "barlowtwins":
        standardise = lambda z: (z - z.mean(0)) / (z.std(0) + 1e-8)  # noqa: E731
        cross = standardise(t1).T @ standardise(t2) / batch
        expected = ((1 - cross.diagonal()).pow(2).sum() + 0.005 * cross[~eye].pow(2).sum()) / dim
        ours_fn = lambda a, b: barlow_twins_loss(a, b, 0.005)  # noqa: E731
    else:

        def covariance(z):
            normalised = torch.nn.functional.normalize(z - z.mean(0), dim=0)
            return (normalised.T @ normalised)[~eye].pow(2).sum() / dim**2

        expected = covariance(t1) + covariance(t2)
        ours_fn = lambda a, b: vibcreg_loss(a, b)[1]["covariance"]  # noqa: E731
    expected.backward()
    value, grads = jax.value_and_grad(ours_fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
    np.testing.assert_allclose(value, expected.item(), rtol=2e-5)
    for grad, reference in zip(grads, (t1.grad, t2.grad), strict=True):
        reference = reference.numpy()
        np.testing.assert_allclose(grad, reference, atol=1e-4 * np.abs(reference).max())


def test_vibcreg_weights_are_applied():
    z1, z2 = _views(8, 8, seed=7)
    loss, terms = vibcreg_loss(z1, z2, 1.0, 2.0, 3.0, 0.5)
    expected = 0.5 * (terms["invariance"] + 2 * terms["variance"] + 3 * terms["covariance"])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_vibcreg_terms_vanish_on_ideal_views():
    # Unit-norm orthogonal columns times 20 have std >= 20 * 0.5 / sqrt(11) > 1: no hinge.
    z = (_orthogonal_features(12, 8, seed=8) * 20.0).astype(np.float32)
    _, terms = _vibcreg(z, z)
    assert float(terms["invariance"]) == 0.0
    assert float(terms["variance"]) == 0.0
    np.testing.assert_allclose(terms["covariance"], 0.0, atol=1e-10)


@pytest.mark.parametrize("loss_fn", [_bt, lambda a, b: _vibcreg(a, b)[0]])
def test_loss_gradients_are_finite_with_a_constant_feature(loss_fn):
    z1, z2 = _views(6, 8, seed=9)
    z1[:, 3] = 2.0  # zero-variance feature: std/norm sqrt at 0
    g1, g2 = jax.grad(loss_fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    assert np.any(g1 != 0) and np.any(g2 != 0)


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="z1, z2"):
        barlow_twins_loss(jnp.zeros((4, 8)), jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="batch >= 2"):
        vibcreg_loss(jnp.zeros((1, 8)), jnp.zeros((1, 8)))


# ---------------------------------------------------------------- IterNorm

IN_BATCH, IN_DIM, IN_GROUPS = 10, 16, 4
ITERNORM = IterNorm(num_groups=IN_GROUPS)


@functools.partial(jax.jit, static_argnums=0)
def _iternorm_train(module: IterNorm, variables: dict, x: jax.Array):
    return module.apply(variables, x, train=True, mutable=["batch_stats"])


@functools.partial(jax.jit, static_argnums=0)
def _iternorm_eval(module: IterNorm, variables: dict, x: jax.Array):
    return module.apply(variables, x, train=False)


def _iternorm_input(batch: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))
    return (rng.standard_normal((batch, dim)) @ mix + rng.standard_normal(dim)).astype(np.float32)


@pytest.fixture(scope="module")
def iternorm_variables() -> dict:
    return ITERNORM.init(jax.random.key(0), jnp.zeros((IN_BATCH, IN_DIM)), train=True)


def test_iternorm_init(iternorm_variables):
    c = IN_DIM // IN_GROUPS
    chex.assert_trees_all_equal(
        iternorm_variables,
        {
            "params": {"scale": np.ones(IN_DIM), "bias": np.zeros(IN_DIM)},
            "batch_stats": {
                "mean": np.zeros((IN_GROUPS, c)),
                "whitening": np.broadcast_to(np.eye(c), (IN_GROUPS, c, c)),
            },
        },
    )


def test_iternorm_train_matches_numpy_recurrence_and_updates_running_stats(iternorm_variables):
    x = _iternorm_input(IN_BATCH, IN_DIM, seed=0)
    out, updates = _iternorm_train(ITERNORM, iternorm_variables, jnp.asarray(x))
    expected, mean, whitening = _np_iternorm_train(x, IN_GROUPS, 5, 1e-5)
    chex.assert_shape(out, (IN_BATCH, IN_DIM))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    c = IN_DIM // IN_GROUPS
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        stats["whitening"], 0.9 * np.eye(c) + 0.1 * whitening, rtol=1e-4, atol=1e-6
    )


def test_iternorm_whitens_each_group_with_enough_iterations():
    # ~10 steps converge on this well-conditioned input; many more would drift again, as the
    # uncoupled Newton iteration amplifies float32 rounding once converged.
    module = IterNorm(num_groups=IN_GROUPS, num_iterations=10)
    batch = 64
    x = jnp.asarray(_iternorm_input(batch, IN_DIM, seed=1))
    variables = module.init(jax.random.key(0), x, train=True)
    out, _ = _iternorm_train(module, variables, x)
    out = np.asarray(out, np.float64).reshape(batch, IN_GROUPS, IN_DIM // IN_GROUPS)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    c = IN_DIM // IN_GROUPS
    for g in range(IN_GROUPS):
        cov = out[:, g].T @ out[:, g] / batch
        np.testing.assert_allclose(cov, np.eye(c), atol=1e-3)


def test_iternorm_eval_uses_running_stats_and_affine(iternorm_variables):
    c = IN_DIM // IN_GROUPS
    rng = np.random.default_rng(2)
    mean = rng.standard_normal((IN_GROUPS, c)).astype(np.float32)
    whitening = rng.standard_normal((IN_GROUPS, c, c)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, IN_DIM).astype(np.float32)
    bias = rng.standard_normal(IN_DIM).astype(np.float32)
    variables = {
        "params": {"scale": scale, "bias": bias},
        "batch_stats": {"mean": mean, "whitening": whitening},
    }
    x = _iternorm_input(IN_BATCH, IN_DIM, seed=3)
    out = _iternorm_eval(ITERNORM, variables, jnp.asarray(x))
    groups = x.reshape(IN_BATCH, IN_GROUPS, c) - mean
    expected = np.einsum("gij,bgj->bgi", whitening, groups).reshape(IN_BATCH, IN_DIM)
    np.testing.assert_allclose(out, expected * scale + bias, rtol=1e-5, atol=1e-5)


def test_iternorm_rejects_indivisible_features():
    with pytest.raises(ValueError, match="num_groups"):
        IterNorm(num_groups=3).init(jax.random.key(0), jnp.zeros((4, 16)), train=True)


# ---------------------------------------------------------------- Projector

IN_FEATURES, HIDDEN, OUTPUT, BATCH = 6, 16, 8, 8


def _projector_param_count(f: int, h: int, o: int, iternorm: bool) -> int:
    # Dense(f->h) + BN(h) + Dense(h->h) + BN(h) + Dense(h->o) [+ IterNorm affine(o)].
    return (f * h + h) + 2 * h + (h * h + h) + 2 * h + (h * o + o) + (2 * o if iternorm else 0)


def _count(tree: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("use_iternorm", [False, True])
def test_projector_param_count_and_shapes(use_iternorm):
    module = Projector(HIDDEN, OUTPUT, use_iternorm=use_iternorm, iternorm_groups=2)
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((BATCH, IN_FEATURES)), train=True)
    )
    assert _count(variables["params"]) == _projector_param_count(
        IN_FEATURES, HIDDEN, OUTPUT, use_iternorm
    )
    whitening_stats = 2 * (OUTPUT // 2) + 2 * (OUTPUT // 2) ** 2 if use_iternorm else 0
    assert _count(variables["batch_stats"]) == 4 * HIDDEN + whitening_stats
    out = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=False), variables, jnp.ones((3, IN_FEATURES))
    )
    chex.assert_shape(out, (3, OUTPUT))
    assert out.dtype == jnp.float32


def test_projector_default_widths_shape_only():
    module = Projector(use_iternorm=True)
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((2, 128)), train=True)
    )
    assert _count(variables["params"]) == _projector_param_count(128, 4096, 4096, True)
    chex.assert_shape(variables["batch_stats"]["IterNorm_0"]["whitening"], (64, 64, 64))


def test_projector_vibcreg_gradients_are_finite():
    module = Projector(HIDDEN, OUTPUT, use_iternorm=True, iternorm_groups=2)
    rng = np.random.default_rng(4)
    h1 = jnp.asarray(rng.standard_normal((BATCH, IN_FEATURES)), jnp.float32)
    h2 = h1 + 0.1 * jnp.asarray(rng.standard_normal((BATCH, IN_FEATURES)), jnp.float32)
    variables = module.init(jax.random.key(1), h1, train=True)

    def loss_fn(params):
        stats = variables["batch_stats"]
        p1, _ = module.apply(
            {"params": params, "batch_stats": stats}, h1, train=True, mutable=["batch_stats"]
        )
        p2, _ = module.apply(
            {"params": params, "batch_stats": stats}, h2, train=True, mutable=["batch_stats"]
        )
        return vibcreg_loss(p1, p2)[0]

    grads = jax.jit(jax.grad(loss_fn))(variables["params"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # Dense biases feeding a batch normaliser cancel out; the kernels must all learn.
    for name in ("Dense_0", "Dense_1", "Dense_2"):
        assert np.any(np.asarray(grads[name]["kernel"]) != 0), name
