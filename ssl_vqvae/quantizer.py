"""EMA vector quantiser (SPEC §2.5): a codebook learnt by moving averages, not by gradients.

The codebook and its EMA statistics live in the mutable collection ``'vq'`` (never in ``'params'``),
so an optimizer over ``params`` cannot touch them and they come out of
``apply(..., mutable=['vq'])`` like BatchNorm statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

VQ_COLLECTION = "vq"
_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class QuantizerOutput:
    """One quantiser call; ``...`` is the leading shape of the input ``z``."""

    quantized: jax.Array  # float [..., dim]: straight-through codewords z + sg(e - z)
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


def ema_codebook_update(
    cluster_size: jax.Array,
    embed_sum: jax.Array,
    z: jax.Array,
    indices: jax.Array,
    decay: float,
    eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA step of the codebook statistics with Laplace-smoothed counts (SPEC §2.5).

    cluster_size: float32 [K] (EMA counts n); embed_sum: float32 [K, D] (EMA sums m);
    z: float [N, D] assigned vectors; indices: int [N] their codes.
    Returns the new (cluster_size [K], embed_sum [K, D], codebook [K, D]).
    """
    codebook_size = cluster_size.shape[0]
    one_hot = jax.nn.one_hot(indices, codebook_size, dtype=jnp.float32)
    batch_sums = jnp.matmul(one_hot.T, z.astype(jnp.float32), precision=_HIGHEST)
    cluster_size = decay * cluster_size + (1.0 - decay) * one_hot.sum(axis=0)
    embed_sum = decay * embed_sum + (1.0 - decay) * batch_sums
    total = cluster_size.sum()
    # Smoothing keeps unused codes finite (their count is ~eps, so they move far away instead).
    smoothed = (cluster_size + eps) / (total + codebook_size * eps) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


class VectorQuantizer(nn.Module):
    """Nearest-codeword (or sampled-codeword) quantiser with an EMA codebook.

    State in collection ``'vq'``: ``codebook`` [K, D] (init N(0, 1) from the 'params' rng),
    ``cluster_size`` [K] (init 0), ``embed_sum`` [K, D] (init = the initial codebook).
    """

    codebook_size: int = 32
    dim: int = 64
    decay: float = 0.9
    eps: float = 1e-5
    commitment_weight: float = 1.0

    def setup(self) -> None:
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
        """Quantise ``z``: float [..., dim].

        ``sample_temperature=None`` assigns the nearest code; a positive temperature samples
        ``k ~ softmax(-||z - e_k||^2 / temperature)`` with the 'sample' rng (stage-2 tokens).
        With ``train`` and a mutable ``'vq'`` collection the codebook takes one EMA step after
        the lookup, so the returned codewords come from the codebook before this step.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last axis of size {self.dim}, got shape {z.shape}")
        if sample_temperature is not None and sample_temperature <= 0:
            raise ValueError(f"sample_temperature: expected > 0 or None, got {sample_temperature}")
        codebook = self.codebook.value
        flat_z = z.reshape(-1, self.dim)
        logits = code_logits(flat_z, codebook)
        if sample_temperature is None:
            flat_indices = jnp.argmax(logits, axis=-1)
        else:
            flat_indices = jax.random.categorical(
                self.make_rng("sample"), logits / sample_temperature, axis=-1
            )
        flat_indices = flat_indices.astype(jnp.int32)
        codes = jnp.take(codebook, flat_indices, axis=0).reshape(z.shape).astype(z.dtype)
        codes = jax.lax.stop_gradient(codes)

        quantized = z + jax.lax.stop_gradient(codes - z)
        if train:
            squared_error = (z.astype(jnp.float32) - codes.astype(jnp.float32)) ** 2
            commit_loss = self.commitment_weight * jnp.mean(squared_error)
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
