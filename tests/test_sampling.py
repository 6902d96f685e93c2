"""Tests for mask schedules, training masks, prior loss and MaskGIT decoding (SPEC §4.4, §4.5)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl_vqvae.categorical import sample_from_probs
from ssl_vqvae.sampling import (
    DecodeState,
    MaskingConvention,
    cosine_schedule,
    decode_loop,
    guided_logits,
    iterative_decode,
    mask_from_count,
    masked_count,
    masked_token_loss,
    sample_training_mask,
)
from ssl_vqvae.transformer import MaskGITTransformer

N, K, C, STEPS, BATCH = 12, 5, 3, 4, 8  # tokens, codebook size, classes, decoding steps, batch
NULL = C  # null-class id
MASK_ID = K
# Peaked logits make categorical sampling deterministic (exp(-PEAK) underflows next to 1).
PEAK = 100.0

# Class-dependent, token-independent logits: [C + 1, N, K].
TABLE = 2.0 * jax.random.normal(jax.random.key(42), (C + 1, N, K))
# Per-class target codes for the peaked fake, different for every class at every position.
TARGETS = (jnp.arange(N)[None, :] + jnp.arange(C + 1)[:, None]) % K  # [C + 1, N]


def table_logits(tokens: jax.Array, class_ids: jax.Array) -> jax.Array:
    del tokens
    return TABLE[class_ids]


def peaked_logits(tokens: jax.Array, class_ids: jax.Array) -> jax.Array:
    del tokens
    return PEAK * jax.nn.one_hot(TARGETS[class_ids], K)


@jax.jit
@chex.assert_max_traces(n=1)
def decode_table(class_ids: jax.Array, rng: jax.Array, guidance_scale: jax.Array) -> DecodeState:
    return decode_loop(
        table_logits,
        class_ids,
        num_tokens=N,
        codebook_size=K,
        num_steps=STEPS,
        guidance_scale=guidance_scale,
        null_class=NULL,
        rng=rng,
    )


@jax.jit
def decode_peaked(class_ids: jax.Array, rng: jax.Array, guidance_scale: jax.Array) -> jax.Array:
    return iterative_decode(
        peaked_logits,
        class_ids,
        num_tokens=N,
        codebook_size=K,
        num_steps=STEPS,
        guidance_scale=guidance_scale,
        null_class=NULL,
        rng=rng,
    )


def _class_ids(seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (BATCH,), 0, C + 1)


# --- schedule and training masks -------------------------------------------------------------


def test_cosine_schedule():
    np.testing.assert_allclose(cosine_schedule(0.0), 1.0)
    np.testing.assert_allclose(cosine_schedule(1.0), 0.0, atol=1e-7)
    np.testing.assert_allclose(cosine_schedule(0.5), np.sqrt(0.5), rtol=1e-6)
    values = cosine_schedule(jnp.linspace(0.0, 1.0, 101))
    chex.assert_shape(values, (101,))
    assert np.all(np.diff(np.asarray(values)) < 0)


def _numpy_masked_count(t: np.ndarray, num_tokens: int, convention: str) -> np.ndarray:
    scaled = np.cos(np.pi * t / 2) * num_tokens
    if convention == "thesis_keep":
        return num_tokens - np.floor(scaled)
    if convention == "thesis_replace":
        return np.floor(scaled)
    return np.maximum(np.ceil(scaled), 1)


@pytest.mark.parametrize("convention", list(MaskingConvention))
def test_masked_count_matches_formula(convention):
    t = np.random.default_rng(0).uniform(size=200)
    got = masked_count(jnp.asarray(t, jnp.float32), N, convention)
    chex.assert_type(got, jnp.int32)
    np.testing.assert_array_equal(got, _numpy_masked_count(t, N, convention))


def test_masked_count_known_values():
    # t = 0: gamma = 1. t = 0.5: gamma * 10 = 7.07. t = 0.99: gamma * 10 = 0.157.
    expected = {"thesis_keep": [0, 3, 10], "thesis_replace": [10, 7, 0], "standard": [10, 8, 1]}
    for convention, counts in expected.items():
        got = masked_count(jnp.array([0.0, 0.5, 0.99]), 10, convention)
        np.testing.assert_array_equal(got, counts)


def test_mask_from_count_is_exact_and_random():
    counts = jnp.array([0, 1, 5, N, 7, 7])
    mask = mask_from_count(jax.random.key(0), 6, N, counts)
    chex.assert_shape(mask, (6, N))
    chex.assert_type(mask, jnp.bool_)
    np.testing.assert_array_equal(mask.sum(axis=1), counts)
    assert not np.array_equal(mask[4], mask[5])  # rows draw their own positions
    scalar = mask_from_count(jax.random.key(1), 3, N, 4)
    np.testing.assert_array_equal(scalar.sum(axis=1), [4, 4, 4])


@pytest.mark.parametrize("convention", list(MaskingConvention))
def test_sample_training_mask_count(convention):
    sample = jax.jit(
        functools.partial(sample_training_mask, convention=convention), static_argnums=(1, 2)
    )
    for seed in range(5):
        rng = jax.random.key(seed)
        mask = sample(rng, BATCH, N)
        chex.assert_shape(mask, (BATCH, N))
        chex.assert_type(mask, jnp.bool_)
        # Rebuild the batch's t as documented: the first key of split(rng).
        t = jax.random.uniform(jax.random.split(rng)[0], ())
        np.testing.assert_array_equal(mask.sum(axis=1), masked_count(t, N, convention))
    chex.assert_trees_all_equal(
        sample(jax.random.key(7), BATCH, N), sample(jax.random.key(7), BATCH, N)
    )


def test_invalid_convention():
    with pytest.raises(ValueError, match="convention"):
        masked_count(0.5, N, "random")
    with pytest.raises(ValueError, match="convention"):
        masked_token_loss(
            jnp.zeros((1, N, K)), jnp.zeros((1, N), jnp.int32), jnp.ones((1, N), bool), "x"
        )


# --- loss ------------------------------------------------------------------------------------


def _numpy_ce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    return log_z - np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]


def test_masked_token_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, N, K)).astype(np.float32) * 3
    targets = rng.integers(0, K, size=(3, N))
    mask = rng.uniform(size=(3, N)) < 0.4
    ce = _numpy_ce(logits.astype(np.float64), targets)
    args = jnp.asarray(logits), jnp.asarray(targets, jnp.int32), jnp.asarray(mask)
    for convention in ("thesis_keep", "thesis_replace"):
        np.testing.assert_allclose(masked_token_loss(*args, convention), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(masked_token_loss(*args, "standard"), ce[mask].mean(), rtol=1e-5)


def test_standard_loss_ignores_unmasked_positions():
    logits = jax.random.normal(jax.random.key(0), (2, N, K))
    targets = jnp.zeros((2, N), jnp.int32)
    mask = jnp.zeros((2, N), bool).at[:, :3].set(True)
    grads = jax.grad(masked_token_loss)(logits, targets, mask, "standard")
    assert float(jnp.abs(grads[:, 3:]).max()) == 0.0
    assert float(jnp.abs(grads[:, :3]).min(axis=-1).min()) > 0.0
    empty = masked_token_loss(logits, targets, jnp.zeros((2, N), bool), "standard")
    np.testing.assert_array_equal(empty, 0.0)


def test_masked_token_loss_rejects_bad_shapes():
    targets = jnp.zeros((2, N + 1), jnp.int32)
    with pytest.raises(ValueError, match="expected logits"):
        masked_token_loss(jnp.zeros((2, N, K)), targets, targets > 0, "standard")


# --- classifier-free guidance ----------------------------------------------------------------


def test_guided_logits_formula_in_one_call():
    calls = []

    def recording_fn(tokens, class_ids):
        calls.append(tokens.shape[0])
        return table_logits(tokens, class_ids)

    class_ids = jnp.array([0, 1, NULL, 2])
    tokens = jnp.full((4, N), MASK_ID, jnp.int32)
    scale = 2.5
    got = guided_logits(recording_fn, tokens, class_ids, guidance_scale=scale, null_class=NULL)
    assert calls == [8]  # conditional and null passes share one call on a doubled batch
    cond, null = np.asarray(TABLE)[np.asarray(class_ids)], np.asarray(TABLE)[NULL]
    expected = null + scale * (cond - null)
    expected[2] = cond[2]  # the unconditional sample is not guided
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    calls.clear()
    plain = guided_logits(recording_fn, tokens, class_ids, guidance_scale=None, null_class=NULL)
    assert calls == [4]
    np.testing.assert_allclose(plain, cond)


@pytest.mark.parametrize(("scale", "expected_class"), [(0.0, "null"), (1.0, "cond")])
def test_guidance_scale_endpoints(scale, expected_class):
    class_ids = _class_ids()
    tokens = decode_peaked(class_ids, jax.random.key(0), jnp.float32(scale))
    target_class = jnp.full_like(class_ids, NULL) if expected_class == "null" else class_ids
    np.testing.assert_array_equal(tokens, TARGETS[target_class])


def test_null_class_samples_are_not_guided():
    """With w = 3 the guided logits of a conditional row are 3 l_cond - 2 l_null (argmax: cond)."""
    class_ids = jnp.array([0, NULL, 1, NULL, 2, 0, NULL, 1])
    tokens = decode_peaked(class_ids, jax.random.key(0), jnp.float32(3.0))
    np.testing.assert_array_equal(tokens, TARGETS[class_ids])


# --- iterative decoding ----------------------------------------------------------------------


def test_each_position_decoded_exactly_once():
    state = decode_table(_class_ids(), jax.random.key(0), jnp.float32(1.0))
    chex.assert_shape(state.history, (BATCH, STEPS, N))
    chex.assert_type(state.tokens, jnp.int32)
    history = np.asarray(state.history)
    final = np.asarray(state.tokens)
    np.testing.assert_array_equal(history[:, -1], final)
    assert np.all((final >= 0) & (final < K))  # no mask id survives
    known = history != MASK_ID
    # Once known, a position stays known with the same id until the end.
    assert np.all(known[:, 1:] >= known[:, :-1])
    np.testing.assert_array_equal(
        np.where(known, history, final[:, None]), final[:, None].repeat(STEPS, 1)
    )
    # Exactly floor(N cos(pi r / 2)) positions remain masked after step t (r = (t + 1) / T).
    ratios = np.arange(1, STEPS + 1) / STEPS
    remaining = np.floor(N * np.cos(np.pi * ratios / 2))  # float64: exactly 0 at the last step
    np.testing.assert_array_equal((~known).sum(axis=2), np.broadcast_to(remaining, (BATCH, STEPS)))
    np.testing.assert_array_equal(state.num_unknown, np.full(BATCH, N))
    assert int(state.step) == STEPS


def test_decoding_rng_determinism_and_no_retrace():
    class_ids = _class_ids()
    first = decode_table(class_ids, jax.random.key(0), jnp.float32(1.0)).tokens
    again = decode_table(class_ids, jax.random.key(0), jnp.float32(1.0)).tokens
    other_rng = decode_table(class_ids, jax.random.key(1), jnp.float32(1.0)).tokens
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first, other_rng)
    # New values of every argument, same shapes and dtypes.
    decode_table(_class_ids(1), jax.random.key(2), jnp.float32(2.0))
    # `decode_table` is wrapped in chex.assert_max_traces(n=1): reaching here means no retrace.


def test_unconditional_without_null_pass_matches_guided_path():
    null_ids = jnp.full((BATCH,), NULL, jnp.int32)
    kwargs = dict(num_tokens=N, codebook_size=K, num_steps=STEPS, null_class=NULL)
    decode = jax.jit(
        lambda rng, scale: iterative_decode(
            table_logits, null_ids, rng=rng, guidance_scale=scale, **kwargs
        ),
        static_argnums=1,
    )
    chex.assert_trees_all_equal(decode(jax.random.key(3), None), decode(jax.random.key(3), 1.0))


def test_sharded_batch_matches_single_device():
    # A fresh jit: a new input sharding legitimately retraces, which `decode_table` would flag.
    decode = jax.jit(
        lambda class_ids, rng: iterative_decode(
            table_logits, class_ids, num_tokens=N, codebook_size=K, null_class=NULL, rng=rng
        )
    )
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    class_ids = _class_ids()
    sharded_ids = jax.device_put(class_ids, NamedSharding(mesh, P("data")))
    sharded = decode(sharded_ids, jax.random.key(5))
    single = decode(class_ids, jax.random.key(5))
    assert sharded.sharding.spec == P("data")  # the batch stays sharded through the loop
    chex.assert_trees_all_equal(np.asarray(sharded), np.asarray(single))


def test_decode_rejects_bad_arguments():
    kwargs = dict(num_tokens=N, codebook_size=K, null_class=NULL, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        iterative_decode(table_logits, _class_ids(), num_steps=0, **kwargs)
    with pytest.raises(ValueError, match="class_ids"):
        iterative_decode(table_logits, _class_ids()[:, None], **kwargs)


def test_decode_with_tiny_transformer():
    model = MaskGITTransformer(
        codebook_size=K,
        num_tokens=N,
        num_classes=C,
        variant="full_embedding",
        embed_dim=8,
        hidden_dim=16,
        depth=1,
        num_heads=2,
        head_dim=4,
        mlp_dim=16,
    )
    class_ids = _class_ids()
    tokens = jnp.full((BATCH, N), MASK_ID, jnp.int32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), tokens, class_ids
    )
    logits_fn = functools.partial(model.apply, variables, train=False)
    sample = jax.jit(
        lambda rng: iterative_decode(
            logits_fn,
            class_ids,
            num_tokens=N,
            codebook_size=K,
            num_steps=STEPS,
            null_class=NULL,
            rng=rng,
        )
    )
    out = sample(jax.random.key(1))
    chex.assert_shape(out, (BATCH, N))
    chex.assert_type(out, jnp.int32)
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < K))
    chex.assert_trees_all_equal(out, sample(jax.random.key(1)))


def test_sample_from_probs_matches_the_distribution_and_skips_zero_probability_codes():
    probs = jnp.asarray([0.0, 0.5, 0.0, 0.2, 0.3, 0.0], jnp.float32)
    rows = jnp.broadcast_to(probs, (200_000, probs.size))
    draws = np.asarray(sample_from_probs(jax.random.key(7), rows))
    assert draws.dtype == np.int32 and draws.shape == (200_000,)
    frequencies = np.bincount(draws, minlength=probs.size) / draws.size
    assert np.all(frequencies[np.asarray(probs) == 0] == 0)
    # Binomial standard error at n = 2e5 is <= 1.2e-3; 5 sigma.
    np.testing.assert_allclose(frequencies, probs, atol=6e-3)
    # Unnormalised rows (softmax rounding) sample the normalised distribution.
    scaled = np.asarray(sample_from_probs(jax.random.key(8), rows * 0.9))
    np.testing.assert_allclose(np.bincount(scaled, minlength=6) / scaled.size, probs, atol=6e-3)


def test_two_level_sampling_with_empty_blocks_and_codes():
    """1024 codes (blocks of 32): mass in two blocks only, one of them partly zero."""
    probs = np.zeros(1024, np.float32)
    probs[[40, 45, 900]] = [0.25, 0.25, 0.5]
    rows = jnp.broadcast_to(jnp.asarray(probs), (100_000, 1024))
    draws = np.asarray(sample_from_probs(jax.random.key(9), rows))
    frequencies = np.bincount(draws, minlength=1024) / draws.size
    assert set(np.flatnonzero(frequencies)) == {40, 45, 900}
    np.testing.assert_allclose(frequencies[[40, 45, 900]], [0.25, 0.25, 0.5], atol=8e-3)
