"""Tests of the EMA vector quantiser against a numpy reference of SPEC §2.5."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.quantizer import QuantizerOutput, VectorQuantizer, first_argmax

K, D = 8, 4
DECAY, EPS, BETA = 0.9, 1e-5, 0.25
Z_SHAPE = (2, 3, 5, D)
VQ = VectorQuantizer(codebook_size=K, dim=D, decay=DECAY, eps=EPS, commitment_weight=BETA)


@jax.jit
def _init(key: jax.Array, z: jax.Array) -> dict:
    return VQ.init(key, z, train=True)


@jax.jit
def _train(variables: dict, z: jax.Array) -> tuple[QuantizerOutput, dict]:
    return VQ.apply(variables, z, train=True, mutable=["vq"])


@jax.jit
def _eval_mutable(variables: dict, z: jax.Array) -> tuple[QuantizerOutput, dict]:
    return VQ.apply(variables, z, train=False, mutable=["vq"])


@functools.partial(jax.jit, static_argnums=3)
def _sample(variables: dict, z: jax.Array, key: jax.Array, temperature: float) -> QuantizerOutput:
    return VQ.apply(variables, z, train=False, sample_temperature=temperature, rngs={"sample": key})


@jax.jit
def _lookup(variables: dict, indices: jax.Array) -> jax.Array:
    return VQ.apply(variables, indices, method=VectorQuantizer.lookup)


@pytest.fixture(scope="module")
def variables() -> dict:
    return _init(jax.random.key(0), jnp.zeros(Z_SHAPE))


def _inputs(variables: dict, seed: int = 1) -> jax.Array:
    """Vectors scattered around the first half of the codes, so some codes stay unused."""
    codebook = np.asarray(variables["vq"]["codebook"])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, K // 2, size=Z_SHAPE[:-1])
    return jnp.asarray(codebook[picks] + 0.3 * rng.standard_normal(Z_SHAPE), jnp.float32)


def _np_nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    flat = z.reshape(-1, D).astype(np.float64)
    dist = ((flat[:, None, :] - codebook[None].astype(np.float64)) ** 2).sum(-1)
    return dist.argmin(-1)


def _np_ema(n: np.ndarray, m: np.ndarray, z: np.ndarray, idx: np.ndarray):
    """Reference EMA step (SPEC §2.5), float64."""
    flat = z.reshape(-1, D).astype(np.float64)
    counts = np.bincount(idx, minlength=K)
    sums = np.zeros((K, D))
    np.add.at(sums, idx, flat)
    n = DECAY * n + (1 - DECAY) * counts
    m = DECAY * m + (1 - DECAY) * sums
    smoothed = (n + EPS) / (n.sum() + K * EPS) * n.sum()
    return n, m, m / smoothed[:, None]


def test_init_state(variables):
    assert set(variables) == {"vq"}, "the codebook must not be a trainable param"
    state = variables["vq"]
    chex.assert_shape(state["codebook"], (K, D))
    chex.assert_shape(state["embed_sum"], (K, D))
    chex.assert_shape(state["cluster_size"], (K,))
    np.testing.assert_array_equal(state["cluster_size"], np.zeros(K))
    np.testing.assert_array_equal(state["embed_sum"], state["codebook"])
    assert state["codebook"].dtype == jnp.float32
    chex.assert_trees_all_equal(_init(jax.random.key(0), jnp.zeros(Z_SHAPE)), variables)
    other = _init(jax.random.key(1), jnp.zeros(Z_SHAPE))["vq"]["codebook"]
    assert not np.allclose(other, state["codebook"])


def test_outputs_are_nearest_codebook_rows(variables):
    z = _inputs(variables)
    out, _ = _eval_mutable(variables, z)
    codebook = np.asarray(variables["vq"]["codebook"])
    chex.assert_shape(out.quantized, Z_SHAPE)
    chex.assert_shape(out.indices, Z_SHAPE[:-1])
    assert out.indices.dtype == jnp.int32
    np.testing.assert_array_equal(out.indices.reshape(-1), _np_nearest(np.asarray(z), codebook))
    np.testing.assert_allclose(out.quantized, codebook[np.asarray(out.indices)], atol=1e-6)
    np.testing.assert_array_equal(_lookup(variables, out.indices), codebook[out.indices])


def test_ema_update_matches_numpy_for_two_steps(variables):
    z1, z2 = _inputs(variables, seed=1), _inputs(variables, seed=2)
    codebook0 = np.asarray(variables["vq"]["codebook"], np.float64)
    n, m = np.zeros(K), codebook0.copy()

    out1, state1 = _train(variables, z1)
    idx1 = _np_nearest(np.asarray(z1), codebook0)
    np.testing.assert_array_equal(out1.indices.reshape(-1), idx1)
    # Lookup uses the codebook before this step's EMA update.
    np.testing.assert_allclose(out1.quantized, codebook0[idx1].reshape(Z_SHAPE), atol=1e-6)
    n, m, codebook1 = _np_ema(n, m, np.asarray(z1), idx1)
    np.testing.assert_allclose(state1["vq"]["cluster_size"], n, rtol=1e-5)
    np.testing.assert_allclose(state1["vq"]["embed_sum"], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state1["vq"]["codebook"], codebook1, rtol=1e-5)

    out2, state2 = _train(state1, z2)
    idx2 = _np_nearest(np.asarray(z2), codebook1)
    np.testing.assert_array_equal(out2.indices.reshape(-1), idx2)
    np.testing.assert_allclose(out2.quantized, codebook1[idx2].reshape(Z_SHAPE), rtol=1e-5)
    n, m, codebook2 = _np_ema(n, m, np.asarray(z2), idx2)
    np.testing.assert_allclose(state2["vq"]["cluster_size"], n, rtol=1e-5)
    np.testing.assert_allclose(state2["vq"]["embed_sum"], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state2["vq"]["codebook"], codebook2, rtol=1e-5)


def test_commit_loss_matches_numpy_and_is_zero_in_eval(variables):
    z = _inputs(variables)
    out, _ = _train(variables, z)
    codes = np.asarray(variables["vq"]["codebook"])[np.asarray(out.indices)]
    expected = BETA * np.mean((np.asarray(z, np.float64) - codes) ** 2)
    np.testing.assert_allclose(out.commit_loss, expected, rtol=1e-5)
    chex.assert_shape(out.commit_loss, ())
    eval_out, _ = _eval_mutable(variables, z)
    assert float(eval_out.commit_loss) == 0.0


def test_perplexity_and_usage_match_numpy(variables):
    z = _inputs(variables)
    out, _ = _eval_mutable(variables, z)
    counts = np.bincount(np.asarray(out.indices).reshape(-1), minlength=K)
    probs = counts / counts.sum()
    used = probs[probs > 0]
    np.testing.assert_allclose(out.perplexity, np.exp(-np.sum(used * np.log(used))), rtol=1e-5)
    np.testing.assert_allclose(out.usage, np.count_nonzero(counts) / K, rtol=1e-6)


def test_straight_through_gradient_is_identity(variables):
    z = _inputs(variables)
    w = jax.random.normal(jax.random.key(5), Z_SHAPE)

    def objective(z):
        out, _ = VQ.apply(variables, z, train=True, mutable=["vq"])
        return jnp.sum(out.quantized * w)

    np.testing.assert_array_equal(jax.jit(jax.grad(objective))(z), w)


def test_commit_loss_gradient_pulls_z_towards_codes(variables):
    z = _inputs(variables)
    out, _ = _train(variables, z)
    codes = np.asarray(variables["vq"]["codebook"])[np.asarray(out.indices)]

    def commit(z):
        return VQ.apply(variables, z, train=True, mutable=["vq"])[0].commit_loss

    expected = 2 * BETA * (np.asarray(z) - codes) / z.size
    np.testing.assert_allclose(jax.jit(jax.grad(commit))(z), expected, rtol=1e-5, atol=1e-8)


def test_no_gradient_reaches_the_codebook(variables):
    z = _inputs(variables)
    w = jax.random.normal(jax.random.key(6), Z_SHAPE)

    def objective(state):
        out, _ = VQ.apply({"vq": state}, z, train=True, mutable=["vq"])
        return jnp.sum(out.quantized * w) + out.commit_loss

    grads = jax.jit(jax.grad(objective))(variables["vq"])
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_eval_and_immutable_train_leave_state_unchanged(variables):
    z = _inputs(variables)
    _, state = _eval_mutable(variables, z)
    chex.assert_trees_all_equal(state, variables)
    # Train mode without a mutable 'vq' collection computes the loss but skips the EMA step.
    out = VQ.apply(variables, z, train=True)
    assert float(out.commit_loss) > 0.0


def test_sampling_cold_limit_is_argmax_and_deterministic(variables):
    z = _inputs(variables)
    greedy, _ = _eval_mutable(variables, z)
    cold = _sample(variables, z, jax.random.key(7), 1e-6)
    np.testing.assert_array_equal(cold.indices, greedy.indices)
    first = _sample(variables, z, jax.random.key(8), 1.0)
    again = _sample(variables, z, jax.random.key(8), 1.0)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.indices.dtype == jnp.int32
    assert np.all((np.asarray(first.indices) >= 0) & (np.asarray(first.indices) < K))
    codebook = np.asarray(variables["vq"]["codebook"])
    np.testing.assert_allclose(first.quantized, codebook[np.asarray(first.indices)], atol=1e-6)


def test_sampling_frequencies_follow_softmax_of_negative_distances(variables):
    codebook = np.asarray(variables["vq"]["codebook"], np.float64)
    # One vector between codes 0 and 1, repeated: empirical code frequencies ~ softmax.
    point = 0.5 * (codebook[0] + codebook[1])
    z = jnp.asarray(np.broadcast_to(point, Z_SHAPE[:-1] + (D,)), jnp.float32)
    temperature = 2.0
    logits = -((point - codebook) ** 2).sum(-1) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    keys = jax.random.split(jax.random.key(9), 200)
    sample_many = jax.jit(jax.vmap(lambda k: _sample(variables, z, k, temperature).indices))
    samples = np.asarray(sample_many(keys)).reshape(-1)
    freq = np.bincount(samples, minlength=K) / samples.size
    np.testing.assert_allclose(freq, probs, atol=0.02)


def test_bad_inputs_raise(variables):
    with pytest.raises(ValueError, match="z"):
        VQ.apply(variables, jnp.zeros((3, D + 1)), train=False)
    with pytest.raises(ValueError, match="sample_temperature"):
        VQ.apply(variables, jnp.zeros((3, D)), train=False, sample_temperature=0.0)


def test_first_argmax_is_argmax_with_ties_to_the_first():
    logits = jax.random.normal(jax.random.key(0), (64, 1024))
    logits = logits.at[3, 10].set(9.0).at[3, 20].set(9.0)  # a tie: the first index wins
    np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, axis=-1))
    assert int(first_argmax(logits)[3]) == 10
