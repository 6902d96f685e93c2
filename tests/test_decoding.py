"""MaskGIT decoding re-masks exactly the k lowest-confidence tokens at every step (SPEC §4.5).

The fake prior gives position n exactly `m[n]` equally likely codes (the others impossible), so
whichever code is sampled there has probability 1 / m[n]: every confidence is known in advance
without reproducing the categorical draws. It also makes the token already held at a known
position impossible, so were known positions not given +inf confidence they would be the least
confident of all and be re-masked first. `decode_loop` keeps the tokens after every step in
`history`, which is compared step by step with a NumPy re-computation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.sampling import decode_loop

N = K = 12  # tokens, codebook size
STEPS = 4
MASK_ID = K
NULL = 2  # null class id (no guidance pass)
IMPOSSIBLE = -1e9
# Possible codes per position, a different order in each row; all distinct, so no ties.
LIVE = np.array([[3, 12, 8, 1, 10, 5, 2, 9, 7, 4, 11, 6], [9, 7, 2, 12, 4, 6, 10, 1, 3, 11, 8, 5]])
BASE_LOGITS = np.where(LIVE[..., None] > np.arange(K), 0.0, IMPOSSIBLE).astype(np.float32)


def fake_logits(tokens: jax.Array, class_ids: jax.Array) -> jax.Array:
    """Codes 0 .. m[n] - 1 equally likely; the code held at a known position impossible."""
    del class_ids
    held = jax.nn.one_hot(tokens, K, dtype=bool) & (tokens != MASK_ID)[..., None]
    return jnp.where(held, IMPOSSIBLE, jnp.asarray(BASE_LOGITS))


def _decode(choice_temperature: float, rng: jax.Array) -> np.ndarray:
    """Tokens after each step: int32 [batch, STEPS, N]."""
    state = decode_loop(
        fake_logits,
        jnp.full((LIVE.shape[0],), NULL, jnp.int32),
        num_tokens=N,
        codebook_size=K,
        num_steps=STEPS,
        choice_temperature=choice_temperature,
        guidance_scale=None,
        null_class=NULL,
        rng=rng,
    )
    return np.asarray(state.history)


def _choice_noise(rng: jax.Array) -> list[np.ndarray]:
    """The Gumbel noise of each step: step t splits its key into (next, sample, choice)."""
    noise = []
    for _ in range(STEPS):
        rng, _, choice_rng = jax.random.split(rng, 3)
        noise.append(np.asarray(jax.random.gumbel(choice_rng, LIVE.shape), np.float64))
    return noise


def _expected_remask(step: int, unknown: np.ndarray, noise: np.ndarray, anneal: float):
    """bool [batch, N]: the k lowest of log(1/m + 1e-5) + anneal * noise, known ones at +inf."""
    k = int(np.floor(N * np.cos(np.pi * (step + 1) / STEPS / 2)))  # U = N: all unknown at first
    confidence = np.where(unknown, np.log(1.0 / LIVE + 1e-5) + anneal * noise, np.inf)
    remask = np.zeros(LIVE.shape, bool)
    for row, order in enumerate(np.argsort(confidence, axis=-1)):
        remask[row, order[:k]] = True
    return remask


def _check_history(history: np.ndarray, expected: list[np.ndarray]) -> None:
    previous = np.full(LIVE.shape, MASK_ID)
    for step, remask in enumerate(expected):
        tokens = history[:, step]
        np.testing.assert_array_equal(tokens == MASK_ID, remask, err_msg=f"step {step}")
        known = previous != MASK_ID
        np.testing.assert_array_equal(tokens[known], previous[known])  # never re-masked
        filled = ~remask & ~known
        assert np.all(tokens[filled] < LIVE[filled])  # newly decoded: a possible code
        previous = tokens


def _expected_steps(history: np.ndarray, noise: list[np.ndarray], anneals: list[float]):
    """The re-masks of each step given the tokens the run actually kept before it."""
    expected = []
    unknown = np.ones(LIVE.shape, bool)
    for step in range(STEPS):
        expected.append(_expected_remask(step, unknown, noise[step], anneals[step]))
        unknown = history[:, step] == MASK_ID
    return expected


def test_zero_temperature_remasks_the_least_likely_tokens():
    """Without noise step t leaves the k_t = floor(12 cos(pi (t + 1) / 8)) = 11, 8, 4, 0
    positions with the most possible codes (lowest p = 1 / m) masked."""
    history = _decode(0.0, jax.random.key(0))
    expected = _expected_steps(history, [np.zeros(LIVE.shape)] * STEPS, [0.0] * STEPS)
    for remask, k in zip(expected, [11, 8, 4, 0], strict=True):
        assert remask.sum(axis=-1).tolist() == [k, k]
        np.testing.assert_array_equal(remask, LIVE > 12 - k)
    _check_history(history, expected)


@pytest.mark.parametrize("temperature, seed", [(4.0, 12), (1.0, 11)])
def test_annealed_gumbel_noise_decides_the_remasked_tokens(temperature, seed):
    """conf = log(p + 1e-5) + choice_temperature (1 - r) g, r = (t + 1) / T."""
    rng = jax.random.key(seed)
    history = _decode(temperature, rng)
    noise = _choice_noise(rng)
    annealed = [temperature * (1 - (step + 1) / STEPS) for step in range(STEPS)]
    expected = _expected_steps(history, noise, annealed)
    assert [r.sum(axis=-1).tolist() for r in expected] == [[11, 11], [8, 8], [4, 4], [0, 0]]
    # The noise matters, and so does its annealing: for these keys some step would differ
    # without noise, and some without the (1 - r) factor.
    for anneals in ([0.0] * STEPS, [temperature] * STEPS):
        other = _expected_steps(history, noise, anneals)
        assert any(not np.array_equal(a, b) for a, b in zip(expected, other, strict=True))
    _check_history(history, expected)


def test_last_step_remasks_nothing_even_with_huge_noise():
    history = _decode(1e3, jax.random.key(5))
    assert not np.any(history[:, -1] == MASK_ID)
    assert np.all(history[:, -1] < LIVE)
