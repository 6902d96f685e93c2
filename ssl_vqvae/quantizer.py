"""EMA vector quantiser (SPEC §2.5): a codebook learnt by moving averages, not by gradients.

The codebook and its EMA statistics live in the mutable collection ``'vq'`` (never in ``'params'``),
so an optimizer over ``params`` cannot touch them and they come out of
``apply(..., mutable=['vq'])`` like BatchNorm statistics.

The quantiser is a float32 island under mixed precision: it casts its input to float32, so the
distances, the assignments, the straight-through codewords, the commitment loss and the EMA
updates never see bfloat16 (an assignment flipped by rounding would change the token).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

VQ_COLLECTION = "vq"
_HIGHEST = jax.lax.Precision.HIGHEST
# How the codewords of codes the EMA has (almost) never assigned are updated (SPEC §7.11):
# "reference" sets e_k = m_k / n~_k for every code, as the reference, so a code unused from the
# start grows to ~decay^t |e_0| / eps; "keep" leaves e_k unchanged while that code is dead.
DEAD_CODE_MODES = ("reference", "keep")
# A code is dead while its EMA count n_k is below this fraction of one assignment's weight
# (1 - decay): a code used in the current batch never is, and a fading code is frozen ~45 steps
# (decay 0.9) after its last use, while n_k is still far above eps and m_k / n~_k its mean.
DEAD_CODE_FRACTION = 0.01


@struct.dataclass
class QuantizerOutput:
    """One quantiser call; ``...`` is the leading shape of the input ``z``."""

    quantized: jax.Array  # float32 [..., dim]: straight-through codewords z + sg(e - z)
    indices: jax.Array  # int32 [...]: assigned code of each vector
    commit_loss: jax.Array  # float32 []: commitment_weight * mean((z - sg(e))^2); 0 in eval
    perplexity: jax.Array  # float32 []: exp(entropy) of the batch code-usage histogram
    usage: jax.Array  # float32 []: fraction of codes assigned at least once in the batch


def code_logits(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Negative squared distances ``-||z_i - e_k||^2``.

    z: float [num_vectors, dim]; codebook: float32 [codebook_size, dim].
    Returns float32 [num_vectors, codebook_size].
    """
    z = z.astype(jnp.float32)
    # Full precision so that assignments do not flip under TPU/TF32 default matmul precision.
    cross = jnp.matmul(z, codebook.T, precision=_HIGHEST)
    return 2.0 * cross - jnp.sum(z**2, axis=-1, keepdims=True) - jnp.sum(codebook**2, axis=-1)


def first_argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax(logits, -1)` for finite logits (the first index of the maximum), as a max and
    a min: XLA:CPU's variadic argmax reduction was 3x slower at 2368 x 1024."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    positions = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(logits == best, positions, logits.shape[-1]), axis=-1)


def ema_codebook_update(
    cluster_size: jax.Array,
    embed_sum: jax.Array,
    z: jax.Array,
    indices: jax.Array,
    decay: float,
    eps: float,
    previous_codebook: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA step of the codebook statistics with Laplace-smoothed counts (SPEC §2.5).

    cluster_size: float32 [K] (EMA counts n); embed_sum: float32 [K, D] (EMA sums m);
    z: float [N, D] assigned vectors; indices: int [N] their codes.
    previous_codebook: None (every code becomes m / n~, the reference) or float32 [K, D], the
      codebook before this step, whose rows dead codes keep (see DEAD_CODE_FRACTION).
    Returns the new (cluster_size [K], embed_sum [K, D], codebook [K, D]).
    """
    codebook_size = cluster_size.shape[0]
    # Per-code counts and sums as scatter-adds: the one-hot matmul they replace was a dense
    # [K, N] x [N, D] product (~9 ms of a 100 ms CPU step at K = 1024); the same sums.
    counts = jnp.zeros((codebook_size,), jnp.float32).at[indices].add(1.0)
    batch_sums = jnp.zeros(embed_sum.shape, jnp.float32).at[indices].add(z.astype(jnp.float32))
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * batch_sums
    total = cluster_size.sum()
    # Smoothing keeps unused codes finite (their count is ~eps, so they move far away instead).
    smoothed = (cluster_size + eps) / (total + codebook_size * eps) * total
    codebook = embed_sum / smoothed[:, None]
    if previous_codebook is not None:
        dead = cluster_size < DEAD_CODE_FRACTION * (1.0 - decay)
        codebook = jnp.where(dead[:, None], previous_codebook, codebook)
    return cluster_size, embed_sum, codebook


class VectorQuantizer(nn.Module):
    """Nearest-codeword (or sampled-codeword) quantiser with an EMA codebook.

    State in collection ``'vq'``: ``codebook`` [K, D] (init N(0, 1) from the 'params' rng),
    ``cluster_size`` [K] (init 0), ``embed_sum`` [K, D] (init = the initial codebook).
    ``dead_code`` is one of DEAD_CODE_MODES; it changes only the codewords of (nearly) unused
    codes, never the EMA statistics or the codewords of used codes.
    """

    codebook_size: int = 32
    dim: int = 64
    decay: float = 0.9
    eps: float = 1e-5
    commitment_weight: float = 1.0
    dead_code: str = "reference"

    def setup(self) -> None:
        if self.dead_code not in DEAD_CODE_MODES:
            raise ValueError(f"dead_code={self.dead_code!r}; expected one of {DEAD_CODE_MODES}")
        self.codebook = self.variable(VQ_COLLECTION, "codebook", self._initial_codebook)
        self.cluster_size = self.variable(
            VQ_COLLECTION, "cluster_size", jnp.zeros, (self.codebook_size,), jnp.float32
        )
        self.embed_sum = self.variable(VQ_COLLECTION, "embed_sum", lambda: self.codebook.value)

    def _initial_codebook(self) -> jax.Array:
        shape = (self.codebook_size, self.dim)
        return jax.random.normal(self.make_rng("params"), shape, jnp.float32)

    def __call__(
        self, z: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> QuantizerOutput:
        """Quantise ``z``: float [..., dim], in float32 whatever its dtype.

        ``sample_temperature=None`` assigns the nearest code; a positive temperature samples
        ``k ~ softmax(-||z - e_k||^2 / temperature)`` with the 'sample' rng (stage-2 tokens).
        With ``train`` and a mutable ``'vq'`` collection the codebook takes one EMA step after
        the lookup, so the returned codewords come from the codebook before this step.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last axis of size {self.dim}, got shape {z.shape}")
        if sample_temperature is not None and sample_temperature <= 0:
            raise ValueError(f"sample_temperature: expected > 0 or None, got {sample_temperature}")
        z = z.astype(jnp.float32)
        codebook = self.codebook.value
        flat_z = z.reshape(-1, self.dim)
        logits = code_logits(flat_z, codebook)
        if sample_temperature is None:
            flat_indices = first_argmax(logits)
        else:
            flat_indices = jax.random.categorical(
                self.make_rng("sample"), logits / sample_temperature, axis=-1
            )
        flat_indices = flat_indices.astype(jnp.int32)
        codes = jax.lax.stop_gradient(jnp.take(codebook, flat_indices, axis=0).reshape(z.shape))

        quantized = z + jax.lax.stop_gradient(codes - z)
        if train:
            commit_loss = self.commitment_weight * jnp.mean((z - codes) ** 2)
        else:
            commit_loss = jnp.zeros((), jnp.float32)

        if train and self.is_mutable_collection(VQ_COLLECTION) and not self.is_initializing():
            cluster_size, embed_sum, new_codebook = ema_codebook_update(
                self.cluster_size.value,
                self.embed_sum.value,
                jax.lax.stop_gradient(flat_z),
                flat_indices,
                self.decay,
                self.eps,
                previous_codebook=self.codebook.value if self.dead_code == "keep" else None,
            )
            self.cluster_size.value = cluster_size
            self.embed_sum.value = embed_sum
            self.codebook.value = new_codebook

        counts = jnp.zeros((self.codebook_size,), jnp.float32).at[flat_indices].add(1.0)
        probs = counts / flat_indices.shape[0]
        perplexity = jnp.exp(-jnp.sum(jax.scipy.special.xlogy(probs, probs)))
        usage = jnp.mean((counts > 0).astype(jnp.float32))
        return QuantizerOutput(
            quantized=quantized,
            indices=flat_indices.reshape(z.shape[:-1]),
            commit_loss=commit_loss,
            perplexity=perplexity,
            usage=usage,
        )

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Codewords of ``indices``: int [...] -> float32 [..., dim] (decodes stage-2 tokens)."""
        return jnp.take(self.codebook.value, indices, axis=0)
