"""The release's quantiser (`timevqvae` 1.0.1 `VectorQuantize`): an EMA codebook in a projected
space, initialised by k-means on the first batch.

`ProjectedQuantizer` maps latents [..., dim] to the codebook space with `project_in`
(Dense dim -> codebook_dim), quantises there with `KMeansVectorQuantizer`, and maps the
straight-through codewords back with `project_out` (Dense codebook_dim -> dim). The commitment
loss `mean((z_p - sg(e))^2)` is taken in the projected space, as the release does.

`KMeansVectorQuantizer` is `quantizer.VectorQuantizer` (same lookup-before-EMA order, EMA
update with Laplace-smoothed counts, perplexity) with the release's k-means initialisation:
the codebook and EMA sums start at zero with `initted = False`; the first call with a mutable
`'vq'` collection (train or eval, as the release's first forward) runs `kmeans_iters` Lloyd
iterations on that call's vectors and sets codebook = EMA sums = the means, EMA counts = the
last iteration's cluster sizes, `initted = True`, before its lookup and EMA step.

Randomness of k-means: the release samples its initial means with `torch.randperm` /
`torch.randint`. Here the seed is drawn once from the 'params' rng at `init` and stored as
`kmeans_seed` (uint32 []) in `'vq'`, so applying the model needs no extra rng stream and the
initialisation is reproducible from the variables alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers
from ssl_vqvae.quantizer import VQ_COLLECTION, QuantizerOutput, VectorQuantizer, code_logits


def kmeans(
    samples: jax.Array, num_clusters: int, num_iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means from `num_clusters` sampled vectors (as the release's `kmeans`).

    Initial means: distinct samples (a permutation) when there are at least `num_clusters`,
    otherwise samples drawn with replacement. Each iteration assigns every sample to its nearest
    mean and moves each mean to its cluster's average; a mean with an empty cluster stays.

    samples: float32 [N, D]. Returns (means float32 [K, D], sizes int32 [K]), the sizes being the
    cluster sizes of the last iteration's assignment (before its means moved).
    """
    num = samples.shape[0]
    if num >= num_clusters:
        picks = jax.random.permutation(key, num)[:num_clusters]
    else:
        picks = jax.random.randint(key, (num_clusters,), 0, num)
    means = samples[picks]

    def step(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        means, _ = carry
        buckets = jnp.argmax(code_logits(samples, means), axis=-1)
        sizes = jnp.zeros((num_clusters,), jnp.int32).at[buckets].add(1)
        sums = jnp.zeros_like(means).at[buckets].add(samples)
        new_means = sums / jnp.maximum(sizes, 1)[:, None].astype(jnp.float32)
        return jnp.where((sizes == 0)[:, None], means, new_means), sizes

    initial = (means, jnp.zeros((num_clusters,), jnp.int32))
    return jax.lax.fori_loop(0, num_iters, step, initial)


class KMeansVectorQuantizer(VectorQuantizer):
    """`VectorQuantizer` whose codebook is k-means-initialised on its first batch (see module
    docstring); with `kmeans_init=False` it is `VectorQuantizer` plus a constant `initted`.

    Extra `'vq'` state: `initted` (bool []) and, with `kmeans_init`, `kmeans_seed` (uint32 []).
    """

    kmeans_init: bool = True
    kmeans_iters: int = 10

    def setup(self) -> None:
        super().setup()
        self.initted = self.variable(
            VQ_COLLECTION, "initted", lambda: jnp.asarray(not self.kmeans_init)
        )
        if self.kmeans_init:
            self.kmeans_seed = self.variable(
                VQ_COLLECTION,
                "kmeans_seed",
                lambda: jax.random.bits(self.make_rng("params"), (), jnp.uint32),
            )

    def _initial_codebook(self) -> jax.Array:
        if self.kmeans_init:
            return jnp.zeros((self.codebook_size, self.dim), jnp.float32)
        return super()._initial_codebook()

    def _initialize_from(self, flat_z: jax.Array) -> None:
        """Sets the codebook state from k-means on flat_z [N, dim] unless already initted."""

        def from_kmeans(_: None) -> tuple[jax.Array, ...]:
            key = jax.random.key(self.kmeans_seed.value)
            means, sizes = kmeans(flat_z, self.codebook_size, self.kmeans_iters, key)
            return means, means, sizes.astype(jnp.float32), jnp.asarray(True)

        def unchanged(_: None) -> tuple[jax.Array, ...]:
            return (
                self.codebook.value,
                self.embed_sum.value,
                self.cluster_size.value,
                self.initted.value,
            )

        state = jax.lax.cond(self.initted.value, unchanged, from_kmeans, None)
        self.codebook.value, self.embed_sum.value, self.cluster_size.value = state[:3]
        self.initted.value = state[3]

    def __call__(
        self, z: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> QuantizerOutput:
        """As `VectorQuantizer.__call__`, after the one-time k-means initialisation."""
        if (
            self.kmeans_init
            and self.is_mutable_collection(VQ_COLLECTION)
            and not self.is_initializing()
        ):
            flat_z = jax.lax.stop_gradient(z.astype(jnp.float32).reshape(-1, self.dim))
            self._initialize_from(flat_z)
        return super().__call__(z, train=train, sample_temperature=sample_temperature)


class ProjectedQuantizer(nn.Module):
    """project_in -> `KMeansVectorQuantizer` (codebook_dim) -> project_out, for z [..., dim].

    `quantized` of the output is in the latent space (dim); `indices`, `commit_loss`
    (commitment_weight * mse in the codebook space), `perplexity`, `usage` are the codebook's.
    Without a projection (`codebook_dim == dim`) both Dense layers are left out, as the release.
    Parameters: `project_in`, `project_out` (kernel [in, out], bias); state: `'vq'/vq/...`.
    """

    dim: int = 128
    codebook_size: int = 1024
    codebook_dim: int = 8
    decay: float = 0.8
    eps: float = 1e-5
    commitment_weight: float = 1.0
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code: str = "reference"
    param_init: str = initializers.TORCH

    def setup(self) -> None:
        if self.codebook_dim != self.dim:
            self.project_in = initializers.dense(self.codebook_dim, self.dim, self.param_init)
            self.project_out = initializers.dense(self.dim, self.codebook_dim, self.param_init)
        self.vq = KMeansVectorQuantizer(
            codebook_size=self.codebook_size,
            dim=self.codebook_dim,
            decay=self.decay,
            eps=self.eps,
            commitment_weight=self.commitment_weight,
            dead_code=self.dead_code,
            kmeans_init=self.kmeans_init,
            kmeans_iters=self.kmeans_iters,
        )

    def _out(self, codes: jax.Array) -> jax.Array:
        return self.project_out(codes) if self.codebook_dim != self.dim else codes

    def __call__(
        self, z: jax.Array, *, train: bool, sample_temperature: float | None = None
    ) -> QuantizerOutput:
        """z: float [..., dim] -> QuantizerOutput with `quantized` float32 [..., dim]."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last axis of size {self.dim}, got shape {z.shape}")
        z = z.astype(jnp.float32)
        projected = self.project_in(z) if self.codebook_dim != self.dim else z
        out = self.vq(projected, train=train, sample_temperature=sample_temperature)
        return out.replace(quantized=self._out(out.quantized))

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Latent-space codewords of ids: int [...] -> float32 [..., dim] (decodes tokens)."""
        return self._out(self.vq.lookup(indices))
