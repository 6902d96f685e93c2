"""Series generation: MaskGIT decoding of token ids, then the frozen tokenizer's decoder.

`generator_for` hands out one cached `Generator` per configuration; it batches requests in a
few fixed sizes, so a process compiles its sampler once per size, not once per request. See
SPEC §4.5.
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

from ssl_vqvae import processes, sampling, sharding
from ssl_vqvae.branch_prior import TwoBranchPrior
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.two_branch import TwoBranchVQVAE
from ssl_vqvae.two_branch_objective import two_branch_decode
from ssl_vqvae.vqvae import VQVAE

Prior = MaskGITTransformer | TwoBranchPrior
Tokenizer = VQVAE | TwoBranchVQVAE

# Per-device batch sizes a generator compiles for: at most 4 programs per mesh, and steps of 4
# keep a request above the smallest rung padded by under 4x. 512 per device bounds memory as
# the former one-device cap of 512 did; 8 keeps single samples (plots, API) cheap.
BATCH_RUNGS = (8, 32, 128, 512)
# Distinct (prior, tokenizer, decoding) triples whose compiled samplers stay in memory.
GENERATOR_CACHE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """Iterative-decoding settings (SPEC §4 defaults)."""

    num_steps: int = 10
    choice_temperature: float = 4.0
    sample_temperature: float = 1.0
    # Code ids the prior may sample (e.g. those the training tokens use); None = every id.
    allowed_codes: tuple[int, ...] | None = None
    # Two-branch priors: the HF pass (num_steps and choice_temperature are the LF pass's).
    hf_num_steps: int = 10
    hf_choice_temperature: float = 0.0


def make_generator(
    prior: Prior, tokenizer: Tokenizer, decoding: DecodingConfig
) -> Callable[..., jax.Array]:
    """A jitted `generate(prior_variables, tokenizer_variables, class_ids, rng, guidance_scale)`.

    class_ids: int32 [B] (`prior.num_classes` = unconditional); guidance_scale: float [] or
    None (None: one pass per step, no classifier-free guidance). Returns float32 series
    [B, L_out, C] in the scaled units of the training data. A two-branch prior decodes the LF
    tokens first, then the HF tokens given them (each pass with its own steps and temperature).
    """
    if isinstance(prior, TwoBranchPrior):
        if decoding.allowed_codes is not None:
            raise ValueError("allowed_codes (mask_unused_codes) is not supported for LF/HF priors")

        def generate_two_branch(prior_variables, tokenizer_variables, class_ids, rng, scale):
            tokens_lf, tokens_hf = two_branch_decode(
                prior,
                prior_variables,
                class_ids,
                rng=rng,
                lf_steps=decoding.num_steps,
                hf_steps=decoding.hf_num_steps,
                lf_choice_temperature=decoding.choice_temperature,
                hf_choice_temperature=decoding.hf_choice_temperature,
                guidance_scale=scale,
                sample_temperature=decoding.sample_temperature,
            )
            tokens = jnp.concatenate([tokens_lf, tokens_hf], axis=1)
            return tokenizer.apply(tokenizer_variables, tokens, method="decode_tokens")

        return jax.jit(generate_two_branch)
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

    def generate(prior_variables, tokenizer_variables, class_ids, rng, guidance_scale):
        logits_fn = functools.partial(prior.apply, prior_variables, train=False)
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
        return tokenizer.apply(tokenizer_variables, tokens, method="decode_tokens")

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


def bucket_batch_size(
    num_samples: int, num_devices: int, rungs: tuple[int, ...] = BATCH_RUNGS
) -> int:
    """The smallest `rung * num_devices` that holds `num_samples`, else the largest one."""
    for rung in rungs:
        if rung * num_devices >= num_samples:
            return rung * num_devices
    return rungs[-1] * num_devices


class Generator:
    """One compiled sampler for a (prior, tokenizer, decoding) triple; see `generator_for`.

    Batch layout: `class_ids` is cut into consecutive batches of `bucket_batch_size(n, devices)`
    rows; batch i uses the key `fold_in(rng, i)` and the last one is padded by repeating its
    final class id (the padded rows are dropped). A row's sample depends on the batch size
    (random draws are per batch shape). The former size, min(512, n rounded up to the devices),
    equals this one, and so gives the same samples, only when that rounding of n is a
    `rung * devices` <= 512, or when n > 512 on one device.
    """

    def __init__(
        self,
        prior: Prior,
        tokenizer: Tokenizer,
        decoding: DecodingConfig,
        rungs: tuple[int, ...] = BATCH_RUNGS,
    ) -> None:
        self.decoding, self.rungs = decoding, rungs
        self.generate = make_generator(prior, tokenizer, decoding)

    def __call__(
        self,
        prior_variables: Any,
        tokenizer_variables: Any,
        class_ids: np.ndarray,
        rng: jax.Array,
        guidance_scale: float | None,
        mesh: Mesh,
    ) -> np.ndarray:
        """One series per entry of `class_ids` (int [n], n >= 1), batched over the mesh.

        guidance_scale: classifier-free guidance weight (see `guidance_argument`); None for no
        guidance. Returns float32 [n, L_out, C].
        """
        class_ids = np.asarray(class_ids, np.int32)
        if class_ids.ndim != 1 or class_ids.size == 0:
            raise ValueError(f"class_ids: expected a non-empty 1-D array, got {class_ids.shape}")
        batch_size = bucket_batch_size(len(class_ids), mesh.size, self.rungs)
        scale = guidance_argument(guidance_scale)
        outputs = []
        for index, start in enumerate(range(0, len(class_ids), batch_size)):
            chunk = class_ids[start : start + batch_size]
            padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1], np.int32)])
            ids = sharding.shard_batch({"y": padded}, mesh)["y"]
            series = self.generate(
                prior_variables, tokenizer_variables, ids, jax.random.fold_in(rng, index), scale
            )
            outputs.append(processes.to_host(series)[: len(chunk)])
        return np.concatenate(outputs)


@functools.lru_cache(maxsize=GENERATOR_CACHE_SIZE)
def generator_for(prior: Prior, tokenizer: Tokenizer, decoding: DecodingConfig) -> Generator:
    """The shared `Generator` of a configuration, so the API, CAS and the stage-2 evaluator
    compile one sampler between them.

    Keyed by value: unbound Linen modules are frozen dataclasses that hash and compare by their
    fields, as `DecodingConfig` does, and the weights are arguments of the call, not of the key.
    """
    return Generator(prior, tokenizer, decoding)
