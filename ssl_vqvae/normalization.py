"""BatchNorm with PyTorch's conventions, used by every BatchNorm of the project.

`flax.linen.BatchNorm` moves its running variance towards the *biased* batch variance (÷ n);
torch's `BatchNorm1d/2d` normalise with the biased variance too but move `running_var`
towards the *unbiased* one (÷ (n - 1)), n = elements per channel. The two drift apart by
n / (n - 1) per update (6/5 for a projector batch of 6, 45/44 for a small feature map), which
only shows in eval mode. This module keeps Flax's names (`scale`, `bias`; `batch_stats` `mean`,
`var`) so checkpoints and parameter trees are unchanged, and computes the batch variance in two
passes (mean of squared deviations), as torch does, instead of E[x^2] - E[x]^2.

Under mixed precision (a bfloat16 input) the statistics, running averages, normalisation and
affine map are computed in float32 and only the result is cast back to the input's dtype.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch momentum 0.1 == weight 0.9 of the old running value; torch's default eps.
MOMENTUM = 0.9
EPSILON = 1e-5


class BatchNorm(nn.Module):
    """Normalises over every axis but the last (features), as torch's BatchNorm1d/2d.

    Attributes:
      use_running_average: eval mode: normalise with the running statistics, update nothing.
      momentum: weight of the old running value in each update.
      epsilon: added to the variance before the square root.
    """

    use_running_average: bool
    momentum: float = MOMENTUM
    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float [..., features] -> [..., features] in x's dtype (computed in float32)."""
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        out_dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if not self.is_initializing():
                count = math.prod(x.shape[axis] for axis in axes)
                unbiased = var * (count / max(count - 1, 1))
                keep = self.momentum
                running_mean.value = keep * running_mean.value + (1.0 - keep) * mean
                running_var.value = keep * running_var.value + (1.0 - keep) * unbiased
        return ((x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(out_dtype)
