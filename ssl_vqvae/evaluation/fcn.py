"""Fully convolutional network (FCN) classifier for time series (SPEC §5.1).

The FCN is the feature extractor behind FID / IS and the classifier trained for CAS. Its
architecture mirrors the reference PyTorch `supervised_FCN` model so that ported weights map
one-to-one: convolutions keep their bias (PyTorch's default) even though BatchNorm follows.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_vqvae import initializers
from ssl_vqvae.normalization import BatchNorm


class FCN(nn.Module):
    """3 x [Conv1d "SAME", BatchNorm, ReLU] -> global average pool over time -> Dense.

    "SAME" padding is TensorFlow-style: for a kernel of size k the input gets (k - 1) // 2 zeros
    on the left and k // 2 on the right, i.e. the extra zero goes on the right for even k. This is
    exactly what `lax.conv_general_dilated(padding="SAME")` does at stride 1.

    Attributes:
      num_classes: number of output classes.
      channels: output channels of the three convolutions; the last one is the feature size.
      kernel_sizes: temporal kernel size of each convolution.
      param_init: "torch" (the reference's initialisers, default) or "flax".
    """

    num_classes: int
    channels: tuple[int, ...] = (128, 256, 128)
    kernel_sizes: tuple[int, ...] = (8, 5, 3)
    param_init: str = initializers.TORCH

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Classify a batch of series.

        Args:
          x: float32 [batch, length, channels] time series.
          train: use batch statistics (and update `batch_stats`) instead of running averages.

        Returns:
          logits: float32 [batch, num_classes].
          features: float32 [batch, channels[-1]], the pooled representation used for FID.
        """
        if x.ndim != 3:
            raise ValueError(f"x: expected [batch, length, channels], got shape {x.shape}")
        if len(self.channels) != len(self.kernel_sizes):
            raise ValueError(
                f"channels and kernel_sizes: expected equal lengths, got "
                f"{len(self.channels)} and {len(self.kernel_sizes)}"
            )
        h = x
        for features, kernel_size in zip(self.channels, self.kernel_sizes, strict=True):
            h = initializers.conv(
                features, h.shape[-1], (kernel_size,), self.param_init, padding="SAME"
            )(h)
            h = BatchNorm(use_running_average=not train)(h)
            h = nn.relu(h)
        pooled = jnp.mean(h, axis=1)
        logits = initializers.dense(self.num_classes, pooled.shape[-1], self.param_init)(pooled)
        return logits, pooled
