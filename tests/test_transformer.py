"""Tests for the bidirectional MaskGIT prior (SPEC §4.2, §4.3)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae.transformer import MaskGITTransformer, RMSNorm, init_embeddings_from_codebook

# A tiny "testing" config: every dimension distinct so the parameter-count formula catches swaps.
K, N, C = 7, 6, 3  # codebook size, tokens, classes
E, H, DEPTH, HEADS, HEAD_DIM, MLP = 8, 12, 2, 2, 5, 10
BATCH = 4
VARIANTS = ("token_index", "full_embedding")


def _model(variant: str, dropout_rate: float = 0.0) -> MaskGITTransformer:
    return MaskGITTransformer(
        codebook_size=K,
        num_tokens=N,
        num_classes=C,
        variant=variant,
        embed_dim=E,
        hidden_dim=H,
        depth=DEPTH,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        mlp_dim=MLP,
        dropout_rate=dropout_rate,
    )


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    tok_rng, cls_rng = jax.random.split(jax.random.key(seed))
    tokens = jax.random.randint(tok_rng, (BATCH, N), 0, K + 1)  # includes the mask id K
    class_ids = jax.random.randint(cls_rng, (BATCH,), 0, C + 1)  # includes the null class C
    return tokens, class_ids


@functools.cache
def _setup(variant: str):
    """(model, params, jitted eval apply) shared by all tests of a variant."""
    model = _model(variant)
    tokens, class_ids = _inputs()
    params = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(1), tokens, class_ids
    )["params"]
    apply = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, train=False))
    return model, params, apply


def _expected_param_count(variant: str) -> int:
    """Hand count from SPEC §4.2/§4.3."""
    stem = (
        (N + 1) * E  # pos_emb (N + 1 rows, first N used)
        + 2 * E  # embedding LayerNorm
        + (C + 1) * E  # class embedding incl. null class
        + E * H  # proj_in, no bias
        + (N + 1) * H  # hidden absolute position embedding
    )
    block = (
        H  # attention RMSNorm gain
        + 4 * H * HEADS * HEAD_DIM  # q, k, v, out, no bias
        + H  # feed-forward RMSNorm gain
        + (H * MLP + MLP)  # FF in
        + (MLP * H + H)  # FF out
    )
    trunk = DEPTH * block + H + H * E  # final RMSNorm, proj_out (no bias)
    head = (E * E + E) + 2 * E  # Dense + LayerNorm
    if variant == "token_index":
        embeddings = (K + 1) * E
        head += N * (K + 1)  # per-position logit bias
    else:
        embeddings = K * E + E  # finetuned codebook + mask vector
        head += E * K + K  # output Dense
    return embeddings + stem + trunk + head


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shape_and_dtype(variant):
    _, params, apply = _setup(variant)
    logits = apply(params, *_inputs(seed=2))
    chex.assert_shape(logits, (BATCH, N, K))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count(variant):
    _, params, _ = _setup(variant)
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert count == _expected_param_count(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bidirectional(variant):
    """Changing the LAST token changes the logits at the FIRST position (no causal mask)."""
    _, params, apply = _setup(variant)
    tokens, class_ids = _inputs()
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % (K + 1))
    diff = jnp.abs(apply(params, tokens, class_ids) - apply(params, changed, class_ids))
    assert np.all(np.asarray(diff[:, 0]).max(axis=-1) > 1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_class_conditioning_matters(variant):
    _, params, apply = _setup(variant)
    tokens, class_ids = _inputs()
    other = (class_ids + 1) % (C + 1)
    diff = jnp.abs(apply(params, tokens, class_ids) - apply(params, tokens, other))
    assert np.all(np.asarray(diff).max(axis=(1, 2)) > 1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_flow_to_embeddings(variant):
    model, params, _ = _setup(variant)
    tokens, class_ids = _inputs()
    tokens = tokens.at[:, 0].set(K)  # at least one masked position per sample

    def loss(p):
        return jnp.mean(model.apply({"params": p}, tokens, class_ids, train=False) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    chex.assert_tree_all_finite(grads)
    table = "tok_emb" if variant == "token_index" else "codebook"
    assert float(jnp.abs(grads[table]["embedding"]).sum()) > 0
    assert float(jnp.abs(grads["class_emb"]["embedding"]).sum()) > 0
    if variant == "full_embedding":
        assert float(jnp.abs(grads["mask_emb"]).sum()) > 0


def test_dropout_active_only_in_training():
    _, params, apply_without_dropout = _setup("full_embedding")
    model = _model("full_embedding", dropout_rate=0.5)
    tokens, class_ids = _inputs()

    @functools.partial(jax.jit, static_argnums=1)
    def apply(rng, train):
        return model.apply(
            {"params": params}, tokens, class_ids, train=train, rngs={"dropout": rng}
        )

    chex.assert_trees_all_close(
        apply(jax.random.key(0), False),
        apply_without_dropout(params, tokens, class_ids),
        atol=1e-5,
    )
    first, second = apply(jax.random.key(0), True), apply(jax.random.key(1), True)
    assert float(jnp.abs(first - second).max()) > 1e-6


def test_invalid_variant_and_shapes():
    with pytest.raises(ValueError, match="variant"):
        _model("causal")
    model, params, _ = _setup("token_index")
    tokens, class_ids = _inputs()
    with pytest.raises(ValueError, match="tokens"):
        model.apply({"params": params}, tokens[:, :-1], class_ids, train=False)
    with pytest.raises(ValueError, match="class_ids"):
        model.apply({"params": params}, tokens, class_ids[:-1], train=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_embeddings_from_codebook(variant):
    _, params, _ = _setup(variant)
    codebook = jax.random.normal(jax.random.key(3), (K, E))
    new = init_embeddings_from_codebook(params, codebook, variant)
    table = "tok_emb" if variant == "token_index" else "codebook"
    np.testing.assert_array_equal(new[table]["embedding"][:K], codebook)
    if variant == "token_index":  # the mask row keeps its initialisation
        np.testing.assert_array_equal(new[table]["embedding"][K], params[table]["embedding"][K])
    others = {key: value for key, value in new.items() if key != table}
    chex.assert_trees_all_equal(others, {k: v for k, v in params.items() if k != table})
    # Pure: the input params are untouched.
    assert not np.array_equal(params[table]["embedding"][:K], codebook)


def test_init_embeddings_from_codebook_rejects_bad_input():
    _, params, _ = _setup("token_index")
    with pytest.raises(ValueError, match="codebook must have shape"):
        init_embeddings_from_codebook(params, jnp.zeros((K + 1, E)), "token_index")
    with pytest.raises(ValueError, match="'codebook' entry"):
        init_embeddings_from_codebook(params, jnp.zeros((K, E)), "full_embedding")
    with pytest.raises(ValueError, match="variant"):
        init_embeddings_from_codebook(params, jnp.zeros((K, E)), "other")


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32)
    gain = np.random.default_rng(1).normal(size=(16,)).astype(np.float32)
    norm = RMSNorm()
    out = norm.apply({"params": {"scale": jnp.asarray(gain)}}, jnp.asarray(x))
    expected = x / np.linalg.norm(x, axis=-1, keepdims=True) * np.sqrt(16.0) * gain
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_rms_norm_is_safe_at_zero():
    norm = RMSNorm()
    params = norm.init(jax.random.key(0), jnp.zeros((2, 4)))
    chex.assert_trees_all_equal(params["params"]["scale"], jnp.ones(4))
    out = norm.apply(params, jnp.zeros((2, 4)))
    chex.assert_trees_all_equal(out, jnp.zeros((2, 4)))
    grad = jax.grad(lambda x: jnp.sum(norm.apply(params, x)))(jnp.zeros((2, 4)))
    chex.assert_tree_all_finite(grad)
