"""Parity of `branch_prior.TwoBranchPrior` with the LF/HF priors of the `timevqvae` 1.0.1 release.

The release's `MaskGIT` is built exactly as in its README (on a `VQVAE(in_channels=1,
input_length=150)` that has seen one batch, which sets the token counts 9 / 74), its two
`BidirectionalTransformer`s' weights are perturbed (so that weight-norm gains, LayerNorm and
BatchNorm affines, q/k scales and running statistics all differ from their initial constants)
and copied into our parameters; logits must agree in eval and train mode.
"""

import copy
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the peers extra: make peers")
timevqvae = pytest.importorskip("timevqvae", reason="needs the peers extra: make peers")
from timevqvae.maskgit import MaskGIT, PriorModelConfig  # noqa: E402
from timevqvae.vqvae import VQVAE  # noqa: E402

from ssl_vqvae.branch_prior import TwoBranchPrior  # noqa: E402

N_CLASSES, CODEBOOK, EMBED = 2, 1024, 128
LF_CONFIG = {"hidden_dim": 128, "n_layers": 4, "heads": 2, "ff_mult": 1}
HF_CONFIG = {"hidden_dim": 32, "n_layers": 1, "heads": 1, "ff_mult": 1}
MASKGIT_TRAINABLE = 1_453_476  # the release's MaskGIT, README configuration, input length 150
BATCH = 3
ATOL = 2e-5  # measured max |diff| <= 3.4e-6 on logits up to ~3.3

Path = tuple[str, ...]


@functools.cache
def _release() -> MaskGIT:
    def config(c: dict) -> PriorModelConfig:
        return PriorModelConfig(**c, use_rmsnorm=True, p_unconditional=0.2)

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        vqvae = VQVAE(in_channels=1, input_length=150)
        with torch.no_grad():
            vqvae(torch.randn(4, 1, 150))  # sets the encoders' token counts, as the README's run
        maskgit = MaskGIT(
            vqvae=vqvae,
            lf_choice_temperature=10.0,
            hf_choice_temperature=0.0,
            lf_num_sampling_steps=10,
            hf_num_sampling_steps=10,
            lf_codebook_size=CODEBOOK,
            hf_codebook_size=CODEBOOK,
            transformer_embedding_dim=EMBED,
            lf_prior_model_config=config(LF_CONFIG),
            hf_prior_model_config=config(HF_CONFIG),
            classifier_free_guidance_scale=1.0,
            n_classes=N_CLASSES,
        )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for branch in (maskgit.transformer_l, maskgit.transformer_h):
            for name, tensor in [*branch.named_parameters(), *branch.named_buffers()]:
                if name.endswith("num_batches_tracked"):
                    continue
                noise = torch.rand(tensor.shape, generator=gen)
                if name.endswith("weight_g") or name.endswith("running_var"):
                    tensor.mul_(0.5 + noise)  # positive scales stay positive
                elif name.endswith(("scale", "weight", "bias", "running_mean")):
                    tensor.add_(0.2 * (noise - 0.5))
    return maskgit


def _branch_map(branch) -> dict[str, dict[Path, np.ndarray]]:
    """Our {'params', 'batch_stats'} paths -> torch values (channels-last) of one branch."""
    t = {name: p.detach().numpy() for name, p in branch.named_parameters()}
    t.update({name: b.numpy() for name, b in branch.named_buffers()})
    params: dict[Path, np.ndarray] = {}

    def plain(ours: str, theirs: str, transpose: bool = False) -> None:
        params[(*ours.split("/"), "kernel" if transpose else "scale")] = (
            t[f"{theirs}.weight"].T if transpose else t[f"{theirs}.weight"]
        )
        if f"{theirs}.bias" in t:
            params[(*ours.split("/"), "bias")] = t[f"{theirs}.bias"]

    def normed(ours: str, theirs: str) -> None:
        v = t[f"{theirs}.weight_v"]
        layout = {1: lambda a: a, 2: np.transpose, 3: lambda a: a.transpose(2, 1, 0)}[v.ndim]
        params[(*ours.split("/"), "weight_v")] = layout(v)
        params[(*ours.split("/"), "weight_g")] = t[f"{theirs}.weight_g"].reshape(-1)
        if f"{theirs}.bias" in t:
            params[(*ours.split("/"), "bias")] = t[f"{theirs}.bias"]

    for table in ("tok_emb_l", "tok_emb_h"):
        if f"{table}.weight" in t:
            params[(table, "embedding")] = t[f"{table}.weight"]
    params[("pos_emb",)] = t["pos_emb.weight"]
    params[("class_emb", "embedding")] = t["class_condition_emb.weight"]
    plain("proj_in", "proj_in", transpose=True)
    for i in range(len(branch.blocks.layers)):
        attn, ff = f"blocks.layers.{i}.0", f"blocks.layers.{i}.1"
        params[(f"attn_{i}", "null_kv")] = t[f"{attn}.null_kv"][:, :, 0]
        params[(f"attn_{i}", "q_scale")] = t[f"{attn}.q_scale"]
        params[(f"attn_{i}", "k_scale")] = t[f"{attn}.k_scale"]
        plain(f"attn_{i}/norm", f"{attn}.norm")
        plain(f"attn_{i}/norm_out", f"{attn}.norm_out")
        for name in ("to_q", "to_kv", "to_out"):
            normed(f"attn_{i}/{name}", f"{attn}.{name}")
        plain(f"ff_{i}/norm", f"{ff}.0")
        normed(f"ff_{i}/dense_in", f"{ff}.1")
        normed(f"ff_{i}/inner_norm", f"{ff}.3")
        plain(f"ff_{i}/dense_out", f"{ff}.4", transpose=True)
    normed("head_dense", "pred_head.0")
    plain("head_norm", "pred_head.2")
    normed("head_out", "pred_head.3")
    stats: dict[Path, np.ndarray] = {}
    if "projector.conv.0.weight_v" in t:
        normed("projector/conv_in", "projector.conv.0")
        plain("projector/norm", "projector.conv.2")
        normed("projector/conv_out", "projector.conv.3")
        stats[("projector", "norm", "mean")] = t["projector.conv.2.running_mean"]
        stats[("projector", "norm", "var")] = t["projector.conv.2.running_var"]
    return {"params": params, "batch_stats": stats}


def _nest(flat: dict[Path, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value)
    return tree


def _flat(tree) -> dict[Path, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _prior(**overrides) -> TwoBranchPrior:
    maskgit = _release()
    return TwoBranchPrior(
        num_tokens_lf=maskgit.num_tokens_l,
        num_tokens_hf=maskgit.num_tokens_h,
        codebook_size_lf=CODEBOOK,
        codebook_size_hf=CODEBOOK,
        num_classes=N_CLASSES,
        embed_dim=EMBED,
        **{f"lf_{k}": v for k, v in LF_CONFIG.items()},
        **{f"hf_{k}": v for k, v in HF_CONFIG.items()},
        **overrides,
    )


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    """LF / HF ids with ~30% mask ids (id 1024)."""
    maskgit = _release()
    rng = np.random.default_rng(0)

    def ids(n: int) -> np.ndarray:
        tokens = rng.integers(0, CODEBOOK, size=(BATCH, n))
        return np.where(rng.random((BATCH, n)) < 0.3, CODEBOOK, tokens).astype(np.int32)

    return ids(maskgit.num_tokens_l), ids(maskgit.num_tokens_h)


@functools.cache
def _variables() -> dict:
    maskgit = _release()
    lf, hf = _branch_map(maskgit.transformer_l), _branch_map(maskgit.transformer_h)
    return {
        "params": {"lf": _nest(lf["params"]), "hf": _nest(hf["params"])},
        "batch_stats": {"hf": _nest(hf["batch_stats"])},
    }


def _torch_logits(branch, tokens_lf, tokens_hf, class_ids) -> np.ndarray:
    cond = None if class_ids is None else torch.from_numpy(class_ids).long()[:, None]
    args = [torch.from_numpy(tokens_lf).long()]
    if tokens_hf is not None:
        args.append(torch.from_numpy(tokens_hf).long())
    with torch.no_grad():
        return branch(*args, class_condition=cond).numpy()


def test_parameter_tree_and_count_match_the_release():
    """Every parameter and statistic maps one-to-one with equal shapes; trainable counts agree."""
    maskgit = _release()
    tokens_lf, tokens_hf = _inputs()
    shapes = jax.eval_shape(
        functools.partial(_prior().init, train=False),
        jax.random.key(0),
        tokens_lf,
        tokens_hf,
        np.zeros(BATCH, np.int32),
    )
    assert _flat(shapes) == _flat(_variables())
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))
    release = sum(p.numel() for p in maskgit.parameters() if p.requires_grad)
    assert count == release == MASKGIT_TRAINABLE
    for branch in (maskgit.transformer_l, maskgit.transformer_h):
        mapped = _branch_map(branch)
        n_params = sum(v.size for v in mapped["params"].values())
        assert n_params == sum(p.numel() for p in branch.parameters())


@pytest.mark.parametrize("kind", ["lf", "hf"])
@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
def test_eval_logits_match(kind, conditional):
    maskgit = _release()
    maskgit.eval()
    tokens_lf, tokens_hf = _inputs()
    class_ids = np.array([0, 1, 1], np.int32)
    ours_ids = class_ids if conditional else np.full(BATCH, N_CLASSES, np.int32)
    prior = _prior()
    if kind == "lf":
        ours = prior.apply(_variables(), tokens_lf, ours_ids, train=False, method="lf_logits")
        ref = _torch_logits(
            maskgit.transformer_l, tokens_lf, None, class_ids if conditional else None
        )
    else:
        ours = prior.apply(
            _variables(), tokens_lf, tokens_hf, ours_ids, train=False, method="hf_logits"
        )
        ref = _torch_logits(
            maskgit.transformer_h, tokens_lf, tokens_hf, class_ids if conditional else None
        )
    n = tokens_lf.shape[1] if kind == "lf" else tokens_hf.shape[1]
    assert ours.shape == ref.shape == (BATCH, n, CODEBOOK) and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_train_mode_hf_matches(rate):
    """Train mode: BatchNorm on batch statistics, its running-stat update, and the deterministic
    ends of both drops (rate 0: nothing dropped; rate 1: every non-mask token embedding zeroed
    and every class replaced by the null class)."""
    branch = copy.deepcopy(_release().transformer_h)  # the shared model stays in eval mode
    branch.emb_dropout, branch.p_unconditional = rate, rate
    branch.train()
    tokens_lf, tokens_hf = _inputs()
    class_ids = np.array([0, 1, 1], np.int32)
    ours, updates = _prior(emb_dropout=rate, p_unconditional=rate).apply(
        _variables(),
        tokens_lf,
        tokens_hf,
        class_ids,
        train=True,
        method="hf_logits",
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
    )
    ref = _torch_logits(branch, tokens_lf, tokens_hf, class_ids)
    bn = branch.projector.conv[2]
    ref_mean, ref_var = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=ATOL)
    norm = updates["batch_stats"]["hf"]["projector"]["norm"]
    np.testing.assert_allclose(np.asarray(norm["mean"]), ref_mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm["var"]), ref_var, rtol=1e-5, atol=1e-5)
