"""Drawing from categorical distributions given their probabilities, cheaply on any backend."""

import jax
import jax.numpy as jnp

# `sample_from_probs` finds the code in two levels: a block of this many codes, then the code.
SAMPLE_BLOCK = 32


def _inverse_cdf(masses: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index i of the interval of u in the cumulative sum of `masses` [..., n] (u [..., 1] in
    (0, total]), and u minus the mass before i. An i of zero mass is replaced by the row's
    largest mass: u lands there only by float rounding at an interval end."""
    cumulative = jnp.cumsum(masses, axis=-1)
    index = jnp.minimum(jnp.sum(cumulative < u, axis=-1), masses.shape[-1] - 1)
    chosen = jnp.take_along_axis(masses, index[..., None], axis=-1)
    index = jnp.where(chosen[..., 0] > 0, index, jnp.argmax(masses, axis=-1))
    before = jnp.take_along_axis(cumulative - masses, index[..., None], axis=-1)
    return index.astype(jnp.int32), u - before


def sample_from_probs(rng: jax.Array, probs: jax.Array) -> jax.Array:
    """One draw from each categorical `probs` [..., K] (rows summing to ~1): int32 [...].

    Inverse-CDF sampling with one uniform per row, where `jax.random.categorical` draws K Gumbel
    variates per row (its random bits and log(-log u) were ~3/4 of a decoding step on CPU at
    128 x 74 rows of 1024 codes). For K a multiple of SAMPLE_BLOCK the search runs on block
    masses, then inside the chosen block, so the only pass over all K codes is one sum. Same
    distribution as `categorical`, another random stream; a zero-probability code is never drawn.
    """
    size = probs.shape[-1]
    block = SAMPLE_BLOCK if size % SAMPLE_BLOCK == 0 and size > SAMPLE_BLOCK else size
    blocks = probs.reshape(*probs.shape[:-1], size // block, block)
    masses = jnp.sum(blocks, axis=-1)
    total = jnp.sum(masses, axis=-1, keepdims=True)
    u = jax.random.uniform(rng, total.shape, minval=jnp.finfo(jnp.float32).tiny) * total
    block_index, u = _inverse_cdf(masses, u)
    within = jnp.take_along_axis(blocks, block_index[..., None, None], axis=-2)[..., 0, :]
    code, _ = _inverse_cdf(within, u)
    return block_index * block + code
