"""The FCN's eval-mode outputs over many series: logits, class probabilities, FID features."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ssl_vqvae import inference, pipeline
from ssl_vqvae.evaluation.fcn import FCN

BATCH_SIZE = 256  # series per call (rounded to the device count)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_features(model: FCN, variables: dict[str, Any], x: jax.Array) -> jax.Array:
    """Eval-mode forward pass, outputs side by side: [B, L, C] -> [B, num_classes + features]."""
    logits, features = model.apply(variables, x, train=False)
    return jnp.concatenate([logits, features], axis=-1)


def fcn_logits_and_features(
    model: FCN, variables: dict[str, Any], x: np.ndarray, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, num_classes] and pooled features [N, 128] of series x [N, L', C], eval mode.

    The FCN pools globally over time, so `L'` may differ from the training length (e.g. the
    `2 * floor(L / 2)` samples left by the STFT round trip for odd `L`).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 3:
        raise ValueError(f"x: expected [num_series, length, channels], got shape {x.shape}")
    outputs = inference.apply_in_batches(
        functools.partial(_logits_and_features, model),
        variables,
        x,
        pipeline.round_to_devices(BATCH_SIZE, mesh.size),
        mesh,
    )
    return outputs[:, : model.num_classes], outputs[:, model.num_classes :]


def fcn_outputs(
    model: FCN, variables: dict[str, Any], x: np.ndarray, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities p(y|x) float32 [N, K] (for IS) and features float32 [N, 128] (FID)."""
    logits, features = fcn_logits_and_features(model, variables, x, mesh)
    probs = scipy.special.softmax(logits.astype(np.float64), axis=-1)
    return probs.astype(np.float32), features
