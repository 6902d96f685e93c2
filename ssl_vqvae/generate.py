"""Series generation: MaskGIT decoding of token ids, then the frozen tokenizer's decoder.

See SPEC §4.5.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ssl_vqvae import sampling, sharding
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """Iterative-decoding settings (SPEC §4 defaults)."""

    num_steps: int = 10
    choice_temperature: float = 4.0
    sample_temperature: float = 1.0
    # Code ids the prior may sample (e.g. those the training tokens use); None = every id.
    allowed_codes: tuple[int, ...] | None = None


def make_generator(
    prior: MaskGITTransformer, tokenizer: VQVAE, decoding: DecodingConfig
) -> Callable[..., jax.Array]:
    """A jitted `generate(prior_params, tokenizer_variables, class_ids, rng, guidance_scale)`.

    class_ids: int32 [B] (`prior.num_classes` = unconditional); guidance_scale: float [] or
    None (None: one pass per step, no classifier-free guidance). Returns float32 series
    [B, 2*floor(L/2), C] in the scaled units of the training data.
    """
    code_mask = None
    if decoding.allowed_codes is not None:
        allowed = np.asarray(decoding.allowed_codes, np.int64)
        if allowed.size == 0 or allowed.min() < 0 or allowed.max() >= prior.codebook_size:
            raise ValueError(
                f"allowed_codes: expected a non-empty set of ids in [0, {prior.codebook_size}), "
                f"got {decoding.allowed_codes}"
            )
        code_mask = np.zeros(prior.codebook_size, bool)
        code_mask[allowed] = True

    def generate(prior_params, tokenizer_variables, class_ids, rng, guidance_scale):
        logits_fn = functools.partial(prior.apply, {"params": prior_params}, train=False)
        tokens = sampling.iterative_decode(
            logits_fn,
            class_ids,
            num_tokens=prior.num_tokens,
            codebook_size=prior.codebook_size,
            num_steps=decoding.num_steps,
            choice_temperature=decoding.choice_temperature,
            guidance_scale=guidance_scale,
            null_class=prior.num_classes,
            rng=rng,
            sample_temperature=decoding.sample_temperature,
            code_mask=code_mask,
        )
        return tokenizer.apply(tokenizer_variables, tokens, method=VQVAE.decode_tokens)

    return jax.jit(generate)


def guidance_argument(guidance_scale: float | None) -> jax.Array | None:
    """The `guidance_scale` argument of a generator for a requested scale.

    Scale 1 gives `l_null + 1 * (l_cond - l_null) = l_cond`, so the null-class pass is skipped
    (None): the same logits up to float rounding at half the prior cost. The reference still
    evaluates both passes (SPEC §4.5); pass the scale as an array to do the same.
    """
    if guidance_scale is None or guidance_scale == 1.0:
        return None
    return jnp.float32(guidance_scale)


def generation_batch_size(num_samples: int, num_devices: int, largest: int = 512) -> int:
    """A batch size that is a multiple of the device count and no larger than needed."""
    size = min(largest, -(-num_samples // num_devices) * num_devices)
    return max(num_devices, size)


def generate_in_batches(
    generate: Callable[..., jax.Array],
    prior_params: Any,
    tokenizer_variables: Any,
    class_ids: np.ndarray,
    rng: jax.Array,
    guidance_scale: float | None,
    batch_size: int,
    mesh: Mesh,
) -> np.ndarray:
    """Generates one series per entry of `class_ids`, `batch_size` at a time over the mesh.

    The last batch is padded (repeating its final class) so every call has the same shape.
    """
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {mesh.size} devices")
    scale = guidance_argument(guidance_scale)
    outputs = []
    for index, start in enumerate(range(0, len(class_ids), batch_size)):
        chunk = class_ids[start : start + batch_size]
        padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1])])
        ids = sharding.shard_batch({"y": padded.astype(np.int32)}, mesh)["y"]
        series = generate(
            prior_params, tokenizer_variables, ids, jax.random.fold_in(rng, index), scale
        )
        outputs.append(np.asarray(series)[: len(chunk)])
    return np.concatenate(outputs)
