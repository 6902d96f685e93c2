"""MaskGIT schedules, training masks, masked-token loss and iterative decoding (SPEC §4.4, §4.5).

Plain jnp functions: the prior enters only through a `logits_fn(tokens, class_ids) -> logits`
callable, so decoding runs under `jit` with any model and shards over the batch axis (no host sync).
"""

import enum
import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from ssl_vqvae.categorical import sample_from_probs

# log(p + eps) in the re-masking confidence, as in the reference.
CONFIDENCE_EPS = 1e-5

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
"""(tokens: int32 [batch, N], class_ids: int32 [batch]) -> float [batch, N, K] logits."""


def cosine_schedule(r: jax.Array | float) -> jax.Array:
    """gamma(r) = cos(pi r / 2): the masked (or kept, §4.4) fraction at progress r in [0, 1]."""
    return jnp.cos(jnp.pi * jnp.asarray(r) / 2)


class MaskingConvention(enum.StrEnum):
    """How the training mask is drawn and which positions the loss covers.

    THESIS_KEEP: SPEC §4.4 token-index prior; n = floor(gamma(t) N) random positions keep their
      token, all others are masked; loss over all positions.
    THESIS_REPLACE: SPEC §4.4 full-embedding prior; the n chosen positions are masked; loss over
      all positions.
    STANDARD: MaskGIT; ceil(gamma(t) N) positions (at least 1) are masked; loss on masked ones only.
    """

    THESIS_KEEP = "thesis_keep"
    THESIS_REPLACE = "thesis_replace"
    STANDARD = "standard"


def _as_convention(convention: str) -> MaskingConvention:
    try:
        return MaskingConvention(convention)
    except ValueError:
        allowed = [c.value for c in MaskingConvention]
        raise ValueError(f"convention must be one of {allowed}, got {convention!r}") from None


def masked_count(t: jax.Array | float, num_tokens: int, convention: str) -> jax.Array:
    """Number of masked positions for mask-schedule time t in [0, 1): int32 with the shape of t."""
    convention = _as_convention(convention)
    scaled = cosine_schedule(t) * num_tokens
    if convention is MaskingConvention.THESIS_KEEP:
        count = num_tokens - jnp.floor(scaled)
    elif convention is MaskingConvention.THESIS_REPLACE:
        count = jnp.floor(scaled)
    else:
        count = jnp.clip(jnp.ceil(scaled), 1, num_tokens)
    return count.astype(jnp.int32)


def mask_from_count(
    rng: jax.Array, batch_size: int, num_tokens: int, count: jax.Array | int
) -> jax.Array:
    """Masks exactly `count` uniformly random positions per sample: bool [batch, num_tokens].

    count: int scalar or int [batch] (may be traced). Ranks of uniform noise, rather than a top-k
    with a static k, keep this jit-safe when the count is only known at run time.
    """
    noise = jax.random.uniform(rng, (batch_size, num_tokens))
    ranks = jnp.argsort(jnp.argsort(-noise, axis=-1), axis=-1)  # 0 = largest noise
    return ranks < jnp.expand_dims(jnp.asarray(count), -1)


def sample_training_mask(
    rng: jax.Array, batch_size: int, num_tokens: int, convention: str
) -> jax.Array:
    """Training mask for one batch: bool [batch, num_tokens], True = replaced by the mask token.

    One t ~ U(0, 1) is drawn for the whole batch (as the thesis), from the first key of
    `jax.random.split(rng)`; positions come from the second.
    """
    t_rng, position_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, ())
    count = masked_count(t, num_tokens, convention)
    return mask_from_count(position_rng, batch_size, num_tokens, count)


def masked_token_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, convention: str
) -> jax.Array:
    """Cross-entropy of the prior: float32 scalar.

    logits: float [batch, N, K]; targets: int32 [batch, N]; mask: bool [batch, N] (True = masked).
    Thesis conventions average over all positions (SPEC §4.4); "standard" averages over masked
    positions only (0 when nothing is masked).
    """
    convention = _as_convention(convention)
    if logits.ndim != 3 or targets.shape != logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            "expected logits [batch, N, K], targets and mask [batch, N]; got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}"
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if convention is MaskingConvention.STANDARD:
        weights = mask.astype(jnp.float32)
        return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.mean(nll)


def guided_logits(
    logits_fn: LogitsFn,
    tokens: jax.Array,
    class_ids: jax.Array,
    *,
    guidance_scale: jax.Array | float | None,
    null_class: int,
) -> jax.Array:
    """Classifier-free guided logits: float32 [batch, N, K].

    `l = l_null + w (l_cond - l_null)`, with both passes in ONE `logits_fn` call on a doubled batch.
    Samples whose class is already `null_class` get their plain logits. `guidance_scale=None`
    skips the null pass entirely (one call on the plain batch), e.g. for unconditional sampling.
    """
    if guidance_scale is None:
        return logits_fn(tokens, class_ids).astype(jnp.float32)
    batch = tokens.shape[0]
    null_ids = jnp.full_like(class_ids, null_class)
    both = logits_fn(
        jnp.concatenate([tokens, tokens], axis=0), jnp.concatenate([class_ids, null_ids], axis=0)
    ).astype(jnp.float32)
    cond, uncond = both[:batch], both[batch:]
    guided = uncond + guidance_scale * (cond - uncond)
    is_null = (class_ids == null_class)[:, None, None]
    return jnp.where(is_null, cond, guided)


@flax.struct.dataclass
class DecodeState:
    """Carry of the iterative decoding loop."""

    step: jax.Array  # int32 []: index of the next decoding step
    tokens: jax.Array  # int32 [batch, N]: current ids, the mask id where still unknown
    rng: jax.Array  # PRNG key, split once per step
    num_unknown: jax.Array  # int32 [batch]: U, unknown positions before the first step
    history: jax.Array  # int32 [batch, num_steps, N]: tokens after each step


def _lowest_k(confidence: jax.Array, k: jax.Array) -> jax.Array:
    """bool [batch, N]: True at the k[b] lowest-confidence positions of each row (exactly k)."""
    ranks = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
    return ranks < k[:, None]


def _decode_step(
    state: DecodeState,
    *,
    logits_fn: LogitsFn,
    class_ids: jax.Array,
    mask_id: int,
    num_steps: int,
    choice_temperature: float,
    guidance_scale: jax.Array | float | None,
    null_class: int,
    sample_temperature: float,
    code_mask: jax.Array | None,
) -> DecodeState:
    rng, sample_rng, choice_rng = jax.random.split(state.rng, 3)
    logits = guided_logits(
        logits_fn, state.tokens, class_ids, guidance_scale=guidance_scale, null_class=null_class
    )
    logits = logits / sample_temperature
    if code_mask is not None:
        logits = jnp.where(code_mask, logits, -jnp.inf)
    unknown = state.tokens == mask_id
    probs = jax.nn.softmax(logits, axis=-1)
    sampled = jnp.where(unknown, sample_from_probs(sample_rng, probs), state.tokens)

    ratio = (state.step + 1) / num_steps
    # float32 cos(pi/2) is slightly negative; the clip makes the last step re-mask exactly 0.
    num_to_mask = jnp.floor(state.num_unknown * cosine_schedule(ratio))
    num_to_mask = jnp.clip(num_to_mask, 0, state.num_unknown).astype(jnp.int32)

    chosen = jnp.take_along_axis(probs, sampled[..., None], axis=-1)[..., 0]
    # Already-known positions get +inf so they are never re-masked.
    confidence = jnp.where(unknown, jnp.log(chosen + CONFIDENCE_EPS), jnp.inf)
    gumbel = jax.random.gumbel(choice_rng, confidence.shape)
    confidence = confidence + choice_temperature * (1.0 - ratio) * gumbel

    tokens = jnp.where(_lowest_k(confidence, num_to_mask), mask_id, sampled)
    return state.replace(
        step=state.step + 1,
        tokens=tokens,
        rng=rng,
        history=state.history.at[:, state.step].set(tokens),
    )


def decode_loop(
    logits_fn: LogitsFn,
    class_ids: jax.Array,
    *,
    num_tokens: int,
    codebook_size: int,
    num_steps: int = 10,
    choice_temperature: float = 4.0,
    guidance_scale: jax.Array | float | None = 1.0,
    null_class: int,
    rng: jax.Array,
    sample_temperature: float = 1.0,
    code_mask: jax.Array | None = None,
) -> DecodeState:
    """Runs MaskGIT iterative decoding (SPEC §4.5) and returns the final `DecodeState`.

    Starts from all-mask tokens (mask id = `codebook_size`). Each step samples every unknown
    position from `softmax(l / sample_temperature)` (l = CFG logits, see `guided_logits`), then
    re-masks exactly `floor(U cos(pi r / 2))` of them, r = (step + 1) / num_steps, choosing the
    lowest `log(p + 1e-5) + choice_temperature (1 - r) Gumbel` confidences. `num_steps` is static;
    everything else may be traced. `code_mask` (bool [codebook_size], True = allowed; None = all)
    sets the logits of disallowed ids to -inf, so they are never sampled.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if class_ids.ndim != 1:
        raise ValueError(f"class_ids must have shape [batch], got {tuple(class_ids.shape)}")
    mask_id = codebook_size
    tokens = jnp.full((class_ids.shape[0], num_tokens), mask_id, jnp.int32)
    init = DecodeState(
        step=jnp.zeros((), jnp.int32),
        tokens=tokens,
        rng=rng,
        num_unknown=jnp.sum(tokens == mask_id, axis=-1, dtype=jnp.int32),
        history=jnp.broadcast_to(tokens[:, None, :], (tokens.shape[0], num_steps, num_tokens)),
    )
    step_fn = functools.partial(
        _decode_step,
        logits_fn=logits_fn,
        class_ids=class_ids,
        mask_id=mask_id,
        num_steps=num_steps,
        choice_temperature=choice_temperature,
        guidance_scale=guidance_scale,
        null_class=null_class,
        sample_temperature=sample_temperature,
        code_mask=code_mask,
    )
    return jax.lax.fori_loop(0, num_steps, lambda _, state: step_fn(state), init)


def iterative_decode(
    logits_fn: LogitsFn,
    class_ids: jax.Array,
    *,
    num_tokens: int,
    codebook_size: int,
    num_steps: int = 10,
    choice_temperature: float = 4.0,
    guidance_scale: jax.Array | float | None = 1.0,
    null_class: int,
    rng: jax.Array,
    sample_temperature: float = 1.0,
    code_mask: jax.Array | None = None,
) -> jax.Array:
    """Samples token ids with MaskGIT decoding (see `decode_loop`): int32 [batch, num_tokens].

    class_ids: int32 [batch]; pass `null_class` for unconditional samples (and, to skip the
    second pass entirely, `guidance_scale=None`).
    """
    return decode_loop(
        logits_fn,
        class_ids,
        num_tokens=num_tokens,
        codebook_size=codebook_size,
        num_steps=num_steps,
        choice_temperature=choice_temperature,
        guidance_scale=guidance_scale,
        null_class=null_class,
        rng=rng,
        sample_temperature=sample_temperature,
        code_mask=code_mask,
    ).tokens
