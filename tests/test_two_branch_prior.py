"""The two-branch prior's training objective and decoding (`two_branch_objective`), and the
input checks of `branch_prior`; parity of the networks themselves is in
test_parity_timevqvae_prior.py."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.branch_prior import BranchTransformer, TwoBranchPrior
from ssl_vqvae.prior_blocks import nearest_indices
from ssl_vqvae.two_branch_objective import (
    release_training_mask,
    two_branch_decode,
    two_branch_prior_loss,
)

N_LF, N_HF, K_LF, K_HF, N_CLASSES, BATCH = 3, 10, 8, 6, 2, 4
TINY = {
    "num_tokens_lf": N_LF,
    "num_tokens_hf": N_HF,
    "codebook_size_lf": K_LF,
    "codebook_size_hf": K_HF,
    "num_classes": N_CLASSES,
    "embed_dim": 8,
    "lf_hidden_dim": 16,
    "lf_n_layers": 1,
    "hf_hidden_dim": 16,
    "hf_n_layers": 1,
}


def _tokens(seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.randint(keys[0], (BATCH, N_LF), 0, K_LF),
        jax.random.randint(keys[1], (BATCH, N_HF), 0, K_HF),
        jax.random.randint(keys[2], (BATCH,), 0, N_CLASSES + 1),
    )


@functools.cache
def _tiny() -> tuple[TwoBranchPrior, dict]:
    prior = TwoBranchPrior(**TINY)
    tokens_lf, tokens_hf, class_ids = _tokens()
    # Random values in the shapes of `init` (whose compile is slow on CPU); positive variances.
    shapes = jax.eval_shape(
        functools.partial(prior.init, train=False),
        jax.random.key(0),
        tokens_lf,
        tokens_hf,
        class_ids,
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype), shapes)
    stats = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes["batch_stats"])
    return prior, {"params": params["params"], "batch_stats": stats}


def _release_count_probs(n: int) -> np.ndarray:
    """P(masked = m), m = 0..n: known = floor(cos(pi r / 2) n) <= n - 1, r ~ U(0, 1)."""
    probs = np.zeros(n + 1)
    for known in range(n):
        probs[n - known] = (math.acos(known / n) - math.acos((known + 1) / n)) * 2 / math.pi
    return probs


def test_release_training_mask_count_distribution():
    n, batch = 8, 8192
    mask = jax.jit(release_training_mask, static_argnums=(1, 2))(jax.random.key(0), batch, n)
    chex.assert_shape(mask, (batch, n))
    chex.assert_type(mask, bool)
    counts = np.asarray(mask.sum(-1))
    assert counts.min() >= 1 and counts.max() <= n
    observed = np.bincount(counts, minlength=n + 1) / batch
    np.testing.assert_allclose(observed, _release_count_probs(n), atol=0.02)
    # Each position is masked equally often (positions uniformly random).
    np.testing.assert_allclose(np.asarray(mask.mean(0)), counts.mean() / n, atol=0.03)


def test_release_training_mask_draws_a_ratio_per_sample():
    counts = np.asarray(release_training_mask(jax.random.key(1), 64, 16).sum(-1))
    assert len(np.unique(counts)) > 4  # one ratio for the whole batch would give one count


def _hand_ce(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> float:
    logits, targets, mask = (np.asarray(a, np.float64) for a in (logits, targets, mask))
    log_z = np.log(np.exp(logits).sum(-1))
    picked = np.take_along_axis(logits, targets.astype(int)[..., None], -1)[..., 0]
    return float(((log_z - picked) * mask).sum() / mask.sum())


def test_loss_is_masked_cross_entropy_of_both_branches():
    prior, variables = _tiny()
    tokens_lf, tokens_hf, class_ids = _tokens(1)
    rng = jax.random.key(3)
    loss_fn = jax.jit(functools.partial(two_branch_prior_loss, prior, train=False))
    loss, metrics, stats = loss_fn(variables, tokens_lf, tokens_hf, class_ids, rng)
    keys = jax.random.split(rng, 4)
    mask_lf = release_training_mask(keys[0], BATCH, N_LF)
    mask_hf = release_training_mask(keys[1], BATCH, N_HF)
    masked_lf = jnp.where(mask_lf, K_LF, tokens_lf)
    masked_hf = jnp.where(mask_hf, K_HF, tokens_hf)
    apply = jax.jit(
        functools.partial(prior.apply, variables, train=False), static_argnames="method"
    )
    logits_lf = apply(masked_lf, class_ids, method="lf_logits")
    logits_hf = apply(tokens_lf, masked_hf, class_ids, method="hf_logits")  # TRUE LF ids
    expected_lf = _hand_ce(logits_lf, tokens_lf, mask_lf)
    expected_hf = _hand_ce(logits_hf, tokens_hf, mask_hf)
    np.testing.assert_allclose(float(metrics["loss_lf"]), expected_lf, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_hf"]), expected_hf, rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected_lf + expected_hf, rtol=1e-5)
    chex.assert_trees_all_equal(stats, variables["batch_stats"])
    # The HF branch must see the true LF ids: masked LF ids give a different loss.
    wrong = _hand_ce(apply(masked_lf, masked_hf, class_ids, method="hf_logits"), tokens_hf, mask_hf)
    assert abs(wrong - expected_hf) > 1e-4


def test_train_mode_updates_batch_stats_and_drops_out():
    prior, variables = _tiny()
    tokens_lf, tokens_hf, class_ids = _tokens(2)
    args = (variables, tokens_lf, tokens_hf, class_ids, jax.random.key(4))
    loss_fn = jax.jit(functools.partial(two_branch_prior_loss, prior), static_argnames="train")
    train_loss, _, stats = loss_fn(*args, train=True)
    eval_loss, _, _ = loss_fn(*args, train=False)
    assert np.isfinite(float(train_loss)) and float(train_loss) != float(eval_loss)
    chex.assert_trees_all_equal_shapes(stats, variables["batch_stats"])
    new, old = stats["hf"]["projector"]["norm"], variables["batch_stats"]["hf"]["projector"]["norm"]
    assert not np.allclose(new["mean"], old["mean"]) and not np.allclose(new["var"], old["var"])


DECODE = {"lf_steps": 3, "hf_steps": 4, "lf_choice_temperature": 10.0, "hf_choice_temperature": 0.0}


def test_decode_shapes_determinism_and_no_mask_ids():
    prior, variables = _tiny()
    class_ids = jnp.array([0, 1, N_CLASSES, 1])
    run = functools.partial(two_branch_decode, prior, variables, class_ids, **DECODE)
    tokens_lf, tokens_hf = run(rng=jax.random.key(0), guidance_scale=2.0)
    chex.assert_shape([tokens_lf, tokens_hf], [(BATCH, N_LF), (BATCH, N_HF)])
    chex.assert_type([tokens_lf, tokens_hf], jnp.int32)
    assert int(tokens_lf.max()) < K_LF and int(tokens_hf.max()) < K_HF
    assert int(tokens_lf.min()) >= 0 and int(tokens_hf.min()) >= 0
    again = run(rng=jax.random.key(0), guidance_scale=2.0)
    chex.assert_trees_all_equal((tokens_lf, tokens_hf), again)
    other = run(rng=jax.random.key(1), guidance_scale=2.0)
    assert not (np.array_equal(other[0], tokens_lf) and np.array_equal(other[1], tokens_hf))


class CopyingPrior(TwoBranchPrior):
    """LF logits flat (random LF ids); HF logits pick the (upsampled) LF id modulo K_HF."""

    def lf_logits(self, tokens_lf, class_ids, *, train):
        return jnp.zeros((*tokens_lf.shape, self.codebook_size_lf))

    def hf_context(self, tokens_lf, class_ids):
        return jnp.zeros((*tokens_lf.shape, 1))

    def hf_logits(self, tokens_lf, tokens_hf, class_ids, *, train, lf_context=None):
        assert tokens_lf.shape[0] == tokens_hf.shape[0] == class_ids.shape[0]
        assert lf_context.shape[0] == tokens_lf.shape[0]
        source = tokens_lf[:, nearest_indices(self.num_tokens_lf, self.num_tokens_hf)]
        return 50.0 * jax.nn.one_hot(source % self.codebook_size_hf, self.codebook_size_hf)


@pytest.mark.parametrize("guidance_scale", [None, 3.0])
def test_hf_pass_sees_the_decoded_lf_tokens(guidance_scale):
    prior = CopyingPrior(**TINY)
    tokens_lf, tokens_hf = two_branch_decode(
        prior,
        {},
        jnp.array([0, 1, 1, N_CLASSES]),
        rng=jax.random.key(5),
        guidance_scale=guidance_scale,
        **DECODE,
    )
    assert len(np.unique(np.asarray(tokens_lf))) > 1
    expected = np.asarray(tokens_lf)[:, nearest_indices(N_LF, N_HF)] % K_HF
    np.testing.assert_array_equal(np.asarray(tokens_hf), expected)


def test_nearest_indices_match_torch_nearest():
    np.testing.assert_array_equal(nearest_indices(3, 7), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(nearest_indices(4, 4), [0, 1, 2, 3])


def test_branch_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="kind"):
        BranchTransformer("mf", 4, 8, 8, 16, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="num_tokens_lf"):
        BranchTransformer("hf", 4, 8, 8, 16, 1, 1, 1, 2)
    prior, variables = _tiny()
    tokens_lf, tokens_hf, class_ids = _tokens()
    apply = functools.partial(prior.apply, variables, train=False)
    with pytest.raises(ValueError, match="tokens_lf"):
        apply(tokens_lf[:, :2], class_ids, method="lf_logits")
    with pytest.raises(ValueError, match="tokens_hf"):
        apply(tokens_lf, tokens_hf[:, :5], class_ids, method="hf_logits")
    with pytest.raises(ValueError, match="class_ids"):
        apply(tokens_lf, class_ids[:2], method="lf_logits")


def test_cached_lf_context_gives_the_same_hf_logits():
    """Decoding computes the HF prior's LF context once per batch; it must equal the logits
    computed from the LF ids, and the context must depend on them."""
    prior, variables = _tiny()
    tokens_lf, tokens_hf, class_ids = _tokens(3)
    direct = prior.apply(
        variables, tokens_lf, tokens_hf, class_ids, train=False, method="hf_logits"
    )
    context = prior.apply(variables, tokens_lf, class_ids, method="hf_context")
    chex.assert_shape(context, (BATCH, N_HF, TINY["embed_dim"]))
    cached = prior.apply(
        variables,
        tokens_lf,
        tokens_hf,
        class_ids,
        train=False,
        lf_context=context,
        method="hf_logits",
    )
    np.testing.assert_allclose(cached, direct, atol=1e-6)
    other = prior.apply(variables, (tokens_lf + 1) % K_LF, class_ids, method="hf_context")
    assert not np.allclose(other, context)
