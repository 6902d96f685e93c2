"""Parity of the MaskGIT prior (SPEC §4.2, §4.3) with x-transformers 1.27.19.

The reference prior is rebuilt here from real components: x-transformers'
`ContinuousTransformerWrapper` + `Encoder`, constructed with exactly the reference's arguments
(`models/stage2/transformers.py`, `configs/config.yaml: MaskGIT.prior_model`), wrapped in the
reference's embedding stem and prediction head written with `torch.nn` layers. Our Flax
parameters are copied across one-to-one; logits and the gradients of a cross-entropy loss must
agree in float32 (x-transformers computes its softmax in float32, so float64 is not an option).
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    "torch", reason="parity extra not installed: pip install -e '.[parity]'"
)
with warnings.catch_warnings():  # x-transformers 1.27 still uses torch.cuda.amp.autocast
    warnings.simplefilter("ignore", FutureWarning)
    x_transformers = pytest.importorskip(
        "x_transformers", reason="parity extra not installed: pip install -e '.[parity]'"
    )
tnn = torch.nn
F = torch.nn.functional

from ssl_vqvae.transformer import FULL_EMBEDDING, TOKEN_INDEX, MaskGITTransformer  # noqa: E402

# SPEC §4 defaults; N = 45 tokens (e.g. Wafer, SPEC §2.2), K = 32 codes.
K, N, NUM_CLASSES = 32, 45, 3
EMBED, HIDDEN, DEPTH, HEADS, FF_MULT = 64, 256, 4, 2, 1
BATCH = 3
MASK_FRACTION = 0.3
LOGIT_ATOL = 1e-4  # logits reach ~27; measured max |diff| 2e-5
# Per-parameter gradient tolerance relative to the gradient's largest entry (measured <= 2e-6).
GRAD_RTOL = 1e-5
VARIANTS = (TOKEN_INDEX, FULL_EMBEDDING)

Path = tuple[str, ...]


class TorchPrior(tnn.Module):
    """The reference prior: token-index (§4.2) or full-embedding (§4.3) stem and head.

    The transformer is x-transformers with the reference's exact constructor arguments,
    including `use_abs_pos_emb=False` handed to the `Encoder`, where 1.27.19 silently ignores
    it; the wrapper's own absolute position embedding therefore stays on.
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        if variant == TOKEN_INDEX:
            self.tok_emb = tnn.Embedding(K + 1, EMBED)  # last row: mask token
            self.bias = tnn.Parameter(torch.zeros(N, K + 1))
        else:
            self.codebook = tnn.Parameter(torch.randn(K, EMBED))  # finetuned codebook
            self.mask_emb = tnn.Parameter(torch.randn(EMBED))
        self.pos_emb = tnn.Embedding(N + 1, EMBED)
        self.class_condition_emb = tnn.Embedding(NUM_CLASSES + 1, EMBED)  # last row: null class
        self.ln = tnn.LayerNorm(EMBED, eps=1e-12)
        self.blocks = x_transformers.ContinuousTransformerWrapper(
            dim_in=EMBED,
            dim_out=EMBED,
            max_seq_len=N + 1,
            attn_layers=x_transformers.Encoder(
                dim=HIDDEN,
                depth=DEPTH,
                heads=HEADS,
                use_rmsnorm=True,
                ff_mult=FF_MULT,
                use_abs_pos_emb=False,
            ),
        )
        head = [tnn.Linear(EMBED, EMBED), tnn.GELU(), tnn.LayerNorm(EMBED, eps=1e-12)]
        if variant == FULL_EMBEDDING:
            head.append(tnn.Linear(EMBED, K, bias=True))
        self.token_prediction = tnn.Sequential(*head)

    def forward(self, tokens: "torch.Tensor", class_ids: "torch.Tensor") -> "torch.Tensor":
        """tokens: int64 [B, N] in 0..K (K = mask); class_ids: int64 [B] -> logits [B, N, K]."""
        if self.variant == TOKEN_INDEX:
            embed = self.tok_emb(tokens)
        else:
            codes = F.embedding(tokens.clamp(max=K - 1), self.codebook)
            embed = torch.where((tokens == K)[..., None], self.mask_emb, codes)
        embed = self.ln(embed + self.pos_emb.weight[: tokens.shape[1]])
        embed = torch.cat([self.class_condition_emb(class_ids)[:, None], embed], dim=1)
        out = self.token_prediction(self.blocks(embed))[:, 1:]
        if self.variant == TOKEN_INDEX:
            out = (out @ self.tok_emb.weight.T + self.bias)[..., :-1]
        return out


def _param_map(variant: str, ref: TorchPrior) -> dict[Path, "torch.nn.Parameter"]:
    """Our Flax parameter path -> the torch parameter holding the same weights."""
    wrapper = ref.blocks
    mapping: dict[Path, torch.nn.Parameter] = {
        ("pos_emb",): ref.pos_emb.weight,
        ("emb_norm", "scale"): ref.ln.weight,
        ("emb_norm", "bias"): ref.ln.bias,
        ("class_emb", "embedding"): ref.class_condition_emb.weight,
        ("proj_in", "kernel"): wrapper.project_in.weight,
        ("hidden_pos_emb",): wrapper.pos_emb.emb.weight,
        ("final_norm", "scale"): wrapper.attn_layers.final_norm.g,
        ("proj_out", "kernel"): wrapper.project_out.weight,
        ("head_dense", "kernel"): ref.token_prediction[0].weight,
        ("head_dense", "bias"): ref.token_prediction[0].bias,
        ("head_norm", "scale"): ref.token_prediction[2].weight,
        ("head_norm", "bias"): ref.token_prediction[2].bias,
    }
    layers = wrapper.attn_layers.layers
    for i in range(DEPTH):
        (attn_norm, _, _), attn, _ = layers[2 * i]
        (ff_norm, _, _), ff, _ = layers[2 * i + 1]
        block = f"block_{i}"
        mapping[(block, "attn_norm", "scale")] = attn_norm.g
        for ours, theirs in [("query", "to_q"), ("key", "to_k"), ("value", "to_v")]:
            mapping[(block, "attn", ours, "kernel")] = getattr(attn, theirs).weight
        mapping[(block, "attn", "out", "kernel")] = attn.to_out.weight
        mapping[(block, "mlp_norm", "scale")] = ff_norm.g
        ff_in, ff_out = ff.ff[0][0], ff.ff[-1]
        mapping[(block, "mlp_in", "kernel")] = ff_in.weight
        mapping[(block, "mlp_in", "bias")] = ff_in.bias
        mapping[(block, "mlp_out", "kernel")] = ff_out.weight
        mapping[(block, "mlp_out", "bias")] = ff_out.bias
    if variant == TOKEN_INDEX:
        mapping[("tok_emb", "embedding")] = ref.tok_emb.weight
        mapping[("logit_bias",)] = ref.bias
    else:
        mapping[("codebook", "embedding")] = ref.codebook
        mapping[("mask_emb",)] = ref.mask_emb
        mapping[("head_out", "kernel")] = ref.token_prediction[3].weight
        mapping[("head_out", "bias")] = ref.token_prediction[3].bias
    return mapping


def _to_torch_layout(path: Path, value: np.ndarray) -> np.ndarray:
    # Flax Dense kernels are [in, out]; torch Linear weights are [out, in].
    return value.T if path[-1] == "kernel" else value


def _flat(tree) -> dict[Path, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): np.asarray(leaf) for path, leaf in flat}


def _assert_close(ours: np.ndarray, ref: np.ndarray, rtol: float, name: str = "") -> None:
    """`max |ours - ref| <= rtol * max |ref|`: a tolerance on the array's own scale."""
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != torch shape {ref.shape}"
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, f"{name}: the torch reference is all zeros, nothing is compared"
    err = float(np.max(np.abs(ours - ref)))
    assert err <= rtol * scale, f"{name}: max |diff| {err:.2e} > {rtol:.0e} * {scale:.2e}"


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    """Random codes with ~30% mask ids, and class ids that include the null class."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, K, size=(BATCH, N))
    tokens = np.where(rng.random((BATCH, N)) < MASK_FRACTION, K, tokens).astype(np.int32)
    class_ids = np.array([0, NUM_CLASSES, 2], np.int32)  # NUM_CLASSES = null (unconditional)
    return tokens, class_ids


def _targets() -> np.ndarray:
    return np.random.default_rng(1).integers(0, K, size=(BATCH, N)).astype(np.int32)


@functools.cache
def _run(variant: str) -> dict:
    """Forward + CE-loss gradients in Flax and in torch with the same weights."""
    model = MaskGITTransformer(
        codebook_size=K, num_tokens=N, num_classes=NUM_CLASSES, variant=variant
    )
    tokens, class_ids = _inputs()
    targets = _targets()
    init = jax.jit(functools.partial(model.init, train=False))
    params = init(jax.random.key(0), tokens, class_ids)["params"]
    # Norm gains/biases and the logit bias start constant; randomise them so that a gain applied
    # in the wrong place, a swapped scale/bias or an ignored bias shows up in the comparison.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))

    def perturb_if_constant(p: jax.Array) -> jax.Array:
        key = next(keys)
        return p + 0.1 * jax.random.normal(key, p.shape) if jnp.all(p == p.ravel()[0]) else p

    params = jax.tree.map(perturb_if_constant, params)

    def loss_fn(p):
        logits = model.apply({"params": p}, tokens, class_ids, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return loss, logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    ref = TorchPrior(variant)
    mapping = _param_map(variant, ref)
    ours = _flat(params)
    with torch.no_grad():
        for path, param in mapping.items():
            param.copy_(torch.tensor(_to_torch_layout(path, ours[path])))
    ref_logits = ref(torch.from_numpy(tokens).long(), torch.from_numpy(class_ids).long())
    ref_loss = F.cross_entropy(ref_logits.reshape(-1, K), torch.from_numpy(targets).long().ravel())
    ref_loss.backward()
    return {
        "mapping": mapping,
        "ref": ref,
        "logits": np.asarray(logits),
        "ref_logits": ref_logits.detach().numpy(),
        "loss": float(loss),
        "ref_loss": ref_loss.item(),
        "grads": _flat(grads),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_maps_one_to_one(variant):
    """Every Flax parameter has one torch counterpart of the same shape, and vice versa.

    A missing piece on either side (e.g. no final RMSNorm, a bias where torch has none) fails here.
    """
    res = _run(variant)
    ours = res["grads"]  # same tree structure as the params
    mapping = res["mapping"]
    assert set(ours) == set(mapping)
    mapped = {id(p) for p in mapping.values()}
    unmapped = [name for name, p in res["ref"].named_parameters() if id(p) not in mapped]
    assert not unmapped, f"torch parameters without a Flax counterpart: {unmapped}"
    assert len(mapped) == len(mapping), "two Flax parameters map to the same torch parameter"
    for path, param in mapping.items():
        assert _to_torch_layout(path, ours[path]).shape == tuple(param.shape), path


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_x_transformers(variant):
    res = _run(variant)
    assert res["logits"].shape == (BATCH, N, K)
    np.testing.assert_allclose(res["logits"], res["ref_logits"], rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(res["loss"], res["ref_loss"], rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_x_transformers(variant):
    """Cross-entropy gradients agree for every parameter (attention, norms, embeddings, head)."""
    res = _run(variant)
    for path, param in res["mapping"].items():
        assert param.grad is not None, path
        ours = _to_torch_layout(path, res["grads"][path])
        _assert_close(ours, param.grad.numpy(), GRAD_RTOL, "/".join(path))
