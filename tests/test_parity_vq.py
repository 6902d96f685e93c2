"""Parity of the EMA vector quantiser (SPEC §2.5) with vector-quantize-pytorch 0.7.3.

The reference's `models/stage1/vq.py` is lucidrains' module taken between releases 0.6.0 and
0.7.3 (it has 0.7's `heads`, not yet 0.7.3's `x.float()` cast). Release 0.7.3 is the nearest
published version; its `EuclideanCodebook` computes the same thing in float32: argmax of
`-||z - e||^2`, lookup before the EMA step, `n <- γn + (1-γ)count`, `m <- γm + (1-γ)Σz`,
Laplace-smoothed counts, `e = m / ñ`, initial `n = 0`, `m = e0`; `VectorQuantize` adds the
straight-through output and `mse(sg(z_q), z)` commitment loss. The reference's own changes
(an `ema_update` switch, perplexity bookkeeping, Categorical instead of Gumbel-max sampling for
τ > 0) do not touch this path. Both run in float32 from the same codebook on the same batches.
"""

import functools
import importlib.metadata
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="parity extra not installed: pip install -e '.[parity]'"
)
with warnings.catch_warnings():  # 0.7.3 still uses torch.cuda.amp.autocast
    warnings.simplefilter("ignore", FutureWarning)
    vqp = pytest.importorskip(
        "vector_quantize_pytorch", reason="parity extra not installed: pip install -e '.[parity]'"
    )
REF_VERSION = "0.7.3"
if importlib.metadata.version("vector-quantize-pytorch") != REF_VERSION:
    pytest.skip(f"needs vector-quantize-pytorch=={REF_VERSION}", allow_module_level=True)

from ssl_vqvae.quantizer import VQ_COLLECTION, QuantizerOutput, VectorQuantizer  # noqa: E402

K, D, DECAY, EPS, BETA = 32, 64, 0.9, 1e-5, 1.0  # SPEC §2.5
BATCH, TOKENS = 4, 45
NOISE = 0.3
STEPS = 4
# Float32 on both sides; dead codes reach ~1e5 after one step, so codebook-like arrays are
# compared element-wise with a relative tolerance.
RTOL, ATOL = 1e-5, 1e-5

VQ = VectorQuantizer(codebook_size=K, dim=D, decay=DECAY, eps=EPS, commitment_weight=BETA)


@jax.jit
def _step(state: dict, z: jax.Array, weights: jax.Array) -> tuple[QuantizerOutput, dict, tuple]:
    """One training call, plus d/dz of `sum(weights * z_q)` and of the commitment loss."""

    def apply(z):
        return VQ.apply({VQ_COLLECTION: state}, z, train=True, mutable=[VQ_COLLECTION])

    out, mutated = apply(z)
    st_grad = jax.grad(lambda z: jnp.sum(weights * apply(z)[0].quantized))(z)
    commit_grad = jax.grad(lambda z: apply(z)[0].commit_loss)(z)
    return out, mutated[VQ_COLLECTION], (st_grad, commit_grad)


@jax.jit
def _eval(state: dict, z: jax.Array) -> tuple[QuantizerOutput, dict]:
    return VQ.apply({VQ_COLLECTION: state}, z, train=False, mutable=[VQ_COLLECTION])


def _initial_state() -> dict:
    return VQ.init(jax.random.key(0), jnp.zeros((BATCH, TOKENS, D)), train=False)[VQ_COLLECTION]


def _batches() -> tuple[np.ndarray, np.ndarray]:
    """STEPS input batches float32 [BATCH, TOKENS, D] and random output-gradient weights.

    Vectors scatter around the first half of the initial codes, so several codes are in use
    at every step and the other half stays empty (exercising the Laplace smoothing).
    """
    codebook = np.asarray(_initial_state()["codebook"])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, K // 2, size=(STEPS, BATCH, TOKENS))
    z = codebook[picks] + NOISE * rng.standard_normal((STEPS, BATCH, TOKENS, D))
    weights = rng.standard_normal((BATCH, TOKENS, D))
    return z.astype(np.float32), weights.astype(np.float32)


def _ours_and_ref() -> tuple[dict, "torch.nn.Module"]:
    """Our initial `vq` state and the library quantiser started from the same codebook."""
    state = _initial_state()
    ref = vqp.VectorQuantize(
        dim=D, codebook_size=K, decay=DECAY, eps=EPS, commitment_weight=BETA
    )  # defaults: no k-means init, no dead-code expiry, argmax assignment, one head
    codebook = torch.tensor(np.asarray(state["codebook"]))
    with torch.no_grad():
        # The library's own init convention: EMA sums start as a copy of the codebook, counts at 0.
        ref._codebook.embed.copy_(codebook)
        ref._codebook.embed_avg.copy_(codebook)
    return state, ref


def _ref_state(ref: "torch.nn.Module") -> dict[str, np.ndarray]:
    book = ref._codebook
    return {
        "codebook": book.embed.numpy().copy(),
        "cluster_size": book.cluster_size.numpy().copy(),
        "embed_sum": book.embed_avg.numpy().copy(),
    }


def _assert_state_close(ours: dict, ref: dict[str, np.ndarray], err_msg: str) -> None:
    for name, value in ref.items():
        np.testing.assert_allclose(
            ours[name], value, rtol=RTOL, atol=ATOL, err_msg=f"{err_msg}: {name}"
        )


@functools.cache
def _train_run() -> list[dict]:
    """STEPS training calls on both sides; per step our results and the library's."""
    batches, weights = _batches()
    state, ref = _ours_and_ref()
    ref.train()
    steps = []
    for z in batches:
        out, state, (st_grad, commit_grad) = _step(state, jnp.asarray(z), jnp.asarray(weights))
        z_ref = torch.tensor(z, requires_grad=True)
        quantized, indices, loss = ref(z_ref)
        (ref_st_grad,) = torch.autograd.grad(
            (torch.tensor(weights) * quantized).sum(), z_ref, retain_graph=True
        )
        (ref_commit_grad,) = torch.autograd.grad(loss.sum(), z_ref)
        steps.append(
            {
                "ours": (out, jax.tree.map(np.asarray, state), st_grad, commit_grad),
                "ref": (quantized, indices, loss, _ref_state(ref), ref_st_grad, ref_commit_grad),
            }
        )
    return steps


def test_initial_state_follows_the_library_convention():
    """Our init: EMA sums = codebook, counts = 0, exactly what the library starts from."""
    state, ref = _ours_and_ref()
    _assert_state_close(jax.tree.map(np.asarray, state), _ref_state(ref), "init")
    np.testing.assert_array_equal(state["cluster_size"], np.zeros(K, np.float32))


@pytest.mark.parametrize("step", range(STEPS))
def test_training_step_matches_library(step):
    """Assignments, codewords (looked up before the EMA step), loss and updated EMA state."""
    out, state, _, _ = _train_run()[step]["ours"]
    quantized, indices, loss, ref_state, _, _ = _train_run()[step]["ref"]
    np.testing.assert_array_equal(out.indices, indices.numpy())
    assert K // 4 < np.unique(indices.numpy()).size <= K // 2  # many codes used, many empty
    np.testing.assert_allclose(
        out.quantized, quantized.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="z_q"
    )
    np.testing.assert_allclose(out.commit_loss, loss.item(), rtol=RTOL, err_msg="commit")
    _assert_state_close(state, ref_state, f"step {step}")


@pytest.mark.parametrize("step", [0, STEPS - 1])
def test_gradients_wrt_input_match_library(step):
    """Straight-through gradient (identity) and the commitment-loss gradient w.r.t. z."""
    _, _, st_grad, commit_grad = _train_run()[step]["ours"]
    _, _, _, _, ref_st_grad, ref_commit_grad = _train_run()[step]["ref"]
    np.testing.assert_allclose(st_grad, ref_st_grad.numpy(), rtol=RTOL, atol=1e-7)
    # 2 (z - e) / numel: tiny entries, so compare on their own scale.
    scale = float(np.abs(ref_commit_grad.numpy()).max())
    assert scale > 0
    np.testing.assert_allclose(commit_grad, ref_commit_grad.numpy(), rtol=0, atol=RTOL * scale)


def test_eval_matches_library_and_leaves_state_alone():
    """After training, eval-mode assignments and codewords agree and neither side updates."""
    batches, _ = _batches()
    _, state, _, _ = _train_run()[-1]["ours"]
    ref_state = _train_run()[-1]["ref"][3]
    ref = vqp.VectorQuantize(dim=D, codebook_size=K, decay=DECAY, eps=EPS, commitment_weight=BETA)
    with torch.no_grad():
        ref._codebook.embed.copy_(torch.tensor(ref_state["codebook"]))
        ref._codebook.embed_avg.copy_(torch.tensor(ref_state["embed_sum"]))
        ref._codebook.cluster_size.copy_(torch.tensor(ref_state["cluster_size"]))
    ref.eval()
    z = batches[0]
    out, mutated = _eval(state, jnp.asarray(z))
    with torch.no_grad():
        quantized, indices, loss = ref(torch.tensor(z))
    np.testing.assert_array_equal(out.indices, indices.numpy())
    np.testing.assert_allclose(out.quantized, quantized.numpy(), rtol=RTOL, atol=ATOL)
    assert float(out.commit_loss) == loss.item() == 0.0
    for name, value in _ref_state(ref).items():
        np.testing.assert_array_equal(value, ref_state[name], err_msg=f"library {name}")
        np.testing.assert_array_equal(mutated[VQ_COLLECTION][name], state[name], err_msg=name)
