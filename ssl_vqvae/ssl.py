"""Non-contrastive self-supervised branch (SPEC §3.2–§3.5).

Global mean/max pooling of encoder maps, the siamese projector (optionally ending in IterNorm),
and the Barlow Twins and VIbCReg losses. The losses are plain functions of ``[batch, features]``
arrays; they hold for any batch of at least two samples.

Under mixed precision only the projector's Dense layers compute in bfloat16: its BatchNorm
statistics, IterNorm's whitening and both losses (with their cross-correlations) are float32,
and the projector returns float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers
from ssl_vqvae.normalization import BatchNorm

BT_STD_EPS = 1e-8  # added to the per-feature std before standardising (Barlow Twins)
VIBCREG_VAR_EPS = 1e-4  # added to the variance inside the hinge's square root (VIbCReg)
L2_NORMALIZE_EPS = 1e-12  # floor of column norms, as torch.nn.functional.normalize
_HIGHEST = jax.lax.Precision.HIGHEST


def pool_mean_max(z: jax.Array) -> jax.Array:
    """Global pooling of an encoder map: z: float [batch, H, W, D] -> [batch, 2D] (mean ++ max)."""
    if z.ndim != 4:
        raise ValueError(f"z: expected [batch, H, W, D], got shape {z.shape}")
    return jnp.concatenate([jnp.mean(z, axis=(1, 2)), jnp.max(z, axis=(1, 2))], axis=-1)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(x) for x >= 0 whose gradient is 0 rather than inf at x = 0 (constant features)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _check_views(z1: jax.Array, z2: jax.Array) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1, z2: expected equal [batch, D] shapes, got {z1.shape}, {z2.shape}")
    if z1.shape[0] < 2:
        raise ValueError(f"z1, z2: batch statistics need batch >= 2, got shape {z1.shape}")


def _off_diagonal_sum_of_squares(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_{i != j} (a^T b)_ij^2 for a, b: float32 [batch, D] -> [].

    For D > batch (the 4096-wide projector at batch 128) it never forms the D x D matrix:
    ||a^T b||_F^2 = sum((a a^T) * (b b^T)) over two batch x batch Grams (2 B^2 D multiply-adds
    instead of B D^2), minus the squared diagonal sum_i (sum_b a_bi b_bi)^2. Same value.
    """
    batch, dim = a.shape
    diagonal = jnp.sum(a * b, axis=0)
    if dim <= batch:
        cross = jnp.matmul(a.T, b, precision=_HIGHEST)
        return jnp.sum(jnp.where(jnp.eye(dim, dtype=bool), 0.0, cross) ** 2)
    gram_a = jnp.matmul(a, a.T, precision=_HIGHEST)
    gram_b = gram_a if b is a else jnp.matmul(b, b.T, precision=_HIGHEST)
    return jnp.sum(gram_a * gram_b) - jnp.sum(diagonal**2)


def _unbiased_variance(z: jax.Array) -> jax.Array:
    """Per-feature variance with Bessel's correction, as torch.var: [batch, D] -> [D]."""
    return jnp.var(z, axis=0, ddof=1)


def barlow_twins_loss(
    z1: jax.Array, z2: jax.Array, off_diagonal_weight: float = 0.005
) -> jax.Array:
    """Barlow Twins loss of two projected views z1, z2: float [batch, D] -> float32 [].

    ``[sum_i (1 - C_ii)^2 + w * sum_{i != j} C_ij^2] / D`` with ``C = z1_hat^T z2_hat / batch``
    and ``z_hat = (z - mean) / (std + 1e-8)``. The std is Bessel-corrected while C divides by the
    batch size (as the reference), so identical whitened views give C_ii = (B - 1) / B, not 1.
    """
    _check_views(z1, z2)
    batch, dim = z1.shape

    def standardise(z: jax.Array) -> jax.Array:
        z = z.astype(jnp.float32)
        std = _safe_sqrt(_unbiased_variance(z))
        return (z - jnp.mean(z, axis=0)) / (std + BT_STD_EPS)

    z1_hat, z2_hat = standardise(z1), standardise(z2)
    on_diagonal = jnp.sum((1.0 - jnp.sum(z1_hat * z2_hat, axis=0) / batch) ** 2)
    off_diagonal = _off_diagonal_sum_of_squares(z1_hat, z2_hat) / batch**2
    return (on_diagonal + off_diagonal_weight * off_diagonal) / dim


def _variance_hinge(z: jax.Array) -> jax.Array:
    """mean_d ReLU(1 - sqrt(Var_b z_d + 1e-4)) of z: [batch, D] -> []."""
    return jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(_unbiased_variance(z) + VIBCREG_VAR_EPS)))


def _feature_correlation_penalty(z: jax.Array) -> jax.Array:
    """mean of squared off-diagonal feature correlations of z: [batch, D] -> [] (over D^2)."""
    centred = z - jnp.mean(z, axis=0)
    norms = _safe_sqrt(jnp.sum(centred**2, axis=0))
    normalised = centred / jnp.maximum(norms, L2_NORMALIZE_EPS)
    return _off_diagonal_sum_of_squares(normalised, normalised) / z.shape[1] ** 2


def vibcreg_loss(
    z1: jax.Array,
    z2: jax.Array,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 100.0,
    loss_scale: float = 0.01,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VIbCReg loss of two projected views z1, z2: float [batch, D] (SPEC §3.5).

    Returns ``loss_scale * (lambda * inv + mu * var + nu * cov)`` and the unweighted terms
    ``{'invariance', 'variance', 'covariance'}`` (variance and covariance summed over the views).
    """
    _check_views(z1, z2)
    z1 = z1.astype(jnp.float32)
    z2 = z2.astype(jnp.float32)
    terms = {
        "invariance": jnp.mean((z1 - z2) ** 2),
        "variance": _variance_hinge(z1) + _variance_hinge(z2),
        "covariance": _feature_correlation_penalty(z1) + _feature_correlation_penalty(z2),
    }
    weighted = (
        invariance_weight * terms["invariance"]
        + variance_weight * terms["variance"]
        + covariance_weight * terms["covariance"]
    )
    return loss_scale * weighted, terms


def newton_whitening_matrix(centred: jax.Array, num_iterations: int, eps: float) -> jax.Array:
    """Approximate per-group ZCA whitening matrices by Newton's iteration (IterNorm).

    centred: float32 [batch, groups, channels], zero mean over the batch.
    ``Sigma = eps I + X_c X_c^T / batch``, ``Sigma_N = Sigma / tr(Sigma)``,
    ``P_0 = I``, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N``; returns ``P_T / sqrt(tr(Sigma))``:
    float32 [groups, channels, channels]. Trace normalisation keeps the iteration convergent.
    """
    batch, groups, channels = centred.shape
    eye = jnp.eye(channels, dtype=centred.dtype)
    covariance = jnp.einsum("bgi,bgj->gij", centred, centred, precision=_HIGHEST) / batch
    sigma = covariance + eps * eye
    trace = jnp.trace(sigma, axis1=-2, axis2=-1)[:, None, None]
    sigma_normalised = sigma / trace
    p = jnp.broadcast_to(eye, (groups, channels, channels))
    for _ in range(num_iterations):
        p_cubed = jnp.matmul(jnp.matmul(p, p, precision=_HIGHEST), p, precision=_HIGHEST)
        p = 1.5 * p - 0.5 * jnp.matmul(p_cubed, sigma_normalised, precision=_HIGHEST)
    return p / jnp.sqrt(trace)


class IterNorm(nn.Module):
    """Group-wise decorrelating batch normalisation by Newton iterations (SPEC §3.5).

    Features are split into ``num_groups`` contiguous groups; each group is whitened with its
    batch covariance in train mode and with running statistics in eval mode, then a per-feature
    affine map (params ``scale`` = 1, ``bias`` = 0) is applied. Running ``mean`` [G, C] and
    ``whitening`` [G, C, C] live in ``'batch_stats'`` and follow the torch momentum convention
    ``running = (1 - momentum) * running + momentum * batch``.
    """

    num_groups: int = 64
    num_iterations: int = 5
    eps: float = 1e-5
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: float [batch, D] -> float32 [batch, D]; D must be divisible by ``num_groups``."""
        if x.ndim != 2:
            raise ValueError(f"x: expected [batch, D], got shape {x.shape}")
        batch, dim = x.shape
        if dim % self.num_groups:
            raise ValueError(
                f"x: feature size {dim} is not divisible by num_groups={self.num_groups}"
            )
        channels = dim // self.num_groups
        running_mean = self.variable(
            "batch_stats", "mean", jnp.zeros, (self.num_groups, channels), jnp.float32
        )
        running_whitening = self.variable(
            "batch_stats",
            "whitening",
            lambda: jnp.broadcast_to(
                jnp.eye(channels, dtype=jnp.float32), (self.num_groups, channels, channels)
            ),
        )
        groups = x.astype(jnp.float32).reshape(batch, self.num_groups, channels)
        if train:
            mean = jnp.mean(groups, axis=0)
            centred = groups - mean
            whitening = newton_whitening_matrix(centred, self.num_iterations, self.eps)
            if not self.is_initializing():
                running_mean.value = (
                    1.0 - self.momentum
                ) * running_mean.value + self.momentum * jax.lax.stop_gradient(mean)
                running_whitening.value = (
                    1.0 - self.momentum
                ) * running_whitening.value + self.momentum * jax.lax.stop_gradient(whitening)
        else:
            centred = groups - running_mean.value
            whitening = running_whitening.value
        whitened = jnp.einsum("gij,bgj->bgi", whitening, centred, precision=_HIGHEST)
        scale = self.param("scale", nn.initializers.ones, (dim,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (dim,), jnp.float32)
        return whitened.reshape(batch, dim) * scale + bias


class Projector(nn.Module):
    """Siamese projector g (SPEC §3.3): Dense-BN-ReLU, Dense-BN-ReLU, Dense (+ IterNorm).

    Apply it to each view in a separate call so that BatchNorm sees each view's batch alone.
    The Dense layers compute in `dtype` (initializers.COMPUTE_DTYPES); the output is float32.
    """

    hidden_dim: int = 4096
    output_dim: int = 4096
    use_iternorm: bool = False
    iternorm_groups: int = 64
    param_init: str = initializers.TORCH
    dtype: str = initializers.FLOAT32

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool) -> jax.Array:
        """h: float [batch, F] pooled features -> float32 [batch, output_dim]."""
        for _ in range(2):
            h = initializers.dense(self.hidden_dim, h.shape[-1], self.param_init, self.dtype)(h)
            h = BatchNorm(use_running_average=not train)(h)
            h = nn.relu(h)
        h = initializers.dense(self.output_dim, h.shape[-1], self.param_init, self.dtype)(h)
        h = h.astype(jnp.float32)
        if self.use_iternorm:
            h = IterNorm(num_groups=self.iternorm_groups)(h, train=train)
        return h
