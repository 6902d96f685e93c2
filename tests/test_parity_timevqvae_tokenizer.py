"""Parity of the release's stage-1 tokenizer blocks with `timevqvae` 1.0.1 (PyTorch, float32).

The package's `VQVAE(in_channels=1, input_length=150)` (its defaults: n_fft 4, init_dim 4,
hid_dim 128, widths 8 / 32, 2 ResBlocks, 1024 codes of dim 8, k-means init) is perturbed
(weight-norm gains != ||v||, BatchNorm affine), k-means-initialised and given BatchNorm
statistics by one training forward, and copied into `ReleaseTokenizer` below, which assembles
`release_codec` and `projected_quantizer` as the package's `VQVAE.forward`. Both then run the
same batch in eval mode and in train mode (dropout off on both sides): every intermediate
(encoder latents, quantiser outputs, decoded series), the two reconstruction losses and, in
train mode, the updated BatchNorm statistics and EMA codebook states are compared.
"""

import copy
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the peers extra: make peers")
timevqvae = pytest.importorskip("timevqvae", reason="needs the peers extra: make peers")

from timevqvae.utils.nn import quantize  # noqa: E402
from timevqvae.vqvae import VQVAE  # noqa: E402
from timevqvae_weights import disable_dropout, flax_variables  # noqa: E402

from ssl_vqvae import release_codec, stft  # noqa: E402
from ssl_vqvae.projected_quantizer import ProjectedQuantizer  # noqa: E402

BATCH, LENGTH, CHANNELS, N_FFT = 4, 150, 1, 4
WIDTHS = {"lf": 8, "hf": 32}  # the package's downsampled_width_l / _h
SUFFIX = {"lf": "l", "hf": "h"}  # the package's module name suffixes
ATOL = 1e-4
CODEBOOK_RTOL = 1e-5  # unused codes reach ~1e5 after the EMA step: compare them relatively
PARAMETERS = 85_076  # trainable parameters of the package's model


class ReleaseTokenizer(nn.Module):
    """Both branches as the package's `VQVAE.forward`, with every intermediate returned."""

    dropout_rate: float = 0.3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict:
        targets = dict(
            zip(("lf", "hf"), release_codec.frequency_targets(x, N_FFT, LENGTH), strict=True)
        )
        u = stft.stft(x, N_FFT, window="hann", normalized=True)
        out = {}
        for kind, suffix in SUFFIX.items():
            rate = release_codec.compute_downsample_rate(LENGTH, N_FFT, WIDTHS[kind])
            rows = release_codec.branch_rows(u, kind)
            z = release_codec.ReleaseEncoder(
                kind, rate, dropout_rate=self.dropout_rate, name=f"encoder_{suffix}"
            )(rows, train=train)
            vq = ProjectedQuantizer(name=f"vq_model_{suffix}")(z, train=train)
            decoded = release_codec.ReleaseDecoder(
                kind,
                rate,
                dropout_rate=self.dropout_rate,
                out_channels=2 * CHANNELS,
                name=f"decoder_{suffix}",
            )(vq.quantized, train=train)
            x_hat = release_codec.rows_to_time(decoded, kind, N_FFT, LENGTH)
            out[kind] = {"z": z, "vq": vq, "x_hat": x_hat, "target": targets[kind]}
        out["x_recon"] = out["lf"]["x_hat"] + out["hf"]["x_hat"]
        out["LF.time"] = jnp.mean(jnp.square(out["lf"]["target"] - out["lf"]["x_hat"]))
        out["HF.time"] = jnp.mean(jnp.abs(out["hf"]["target"] - out["hf"]["x_hat"]))
        return out


def _series(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6 * np.pi, LENGTH)
    x = np.sin(t[None, :, None] * rng.uniform(0.5, 3.0, (BATCH, 1, CHANNELS)))
    return (x + 0.3 * rng.standard_normal((BATCH, LENGTH, CHANNELS))).astype(np.float32)


def _to_torch(x: np.ndarray) -> "torch.Tensor":
    return torch.tensor(x.transpose(0, 2, 1).copy())


@pytest.fixture(scope="module")
def package_model() -> "VQVAE":
    """The package's model, perturbed, with codebooks and BatchNorm statistics from one batch."""
    torch.manual_seed(0)
    np.random.seed(0)  # the package draws Snake's `a` from numpy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's deprecated weight_norm
        model = VQVAE(in_channels=CHANNELS, input_length=LENGTH)
    disable_dropout(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight_g"):
                param.mul_(0.5 + torch.rand(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        model.train()
        model(_to_torch(_series(1)))
    return model


def _package_forward(model: "VQVAE", x: np.ndarray) -> dict:
    """The package's forward, step by step, in our layouts."""
    xt = _to_torch(x)
    targets = dict(zip(("lf", "hf"), model._compute_frequency_targets(xt), strict=True))
    out = {}
    for kind, suffix in SUFFIX.items():
        z = getattr(model, f"encoder_{suffix}")(xt)
        z_q, indices, vq_loss, perplexity = quantize(z, getattr(model, f"vq_model_{suffix}"))
        x_hat = getattr(model, f"decoder_{suffix}")(z_q)
        out[kind] = {
            "z": z.permute(0, 2, 3, 1),
            "quantized": z_q.permute(0, 2, 3, 1),
            "indices": indices.reshape(z.shape[0], *z.shape[2:]),
            "commit_loss": torch.as_tensor(vq_loss["commit_loss"]),
            "perplexity": perplexity,
            "x_hat": x_hat.transpose(1, 2),
            "target": targets[kind].transpose(1, 2),
        }
    return jax.tree.map(lambda t: t.detach().numpy(), out)


def _max_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != package {ref.shape}"
    return float(np.max(np.abs(ours.astype(np.float64) - ref)))


def _compare(ours: dict, package_steps: dict, package_output) -> dict[str, float]:
    """Asserts every compared array within ATOL (indices equal); returns the max abs diffs."""
    diffs = {}
    for kind in SUFFIX:
        mine, ref = ours[kind], package_steps[kind]
        np.testing.assert_array_equal(mine["vq"].indices, ref["indices"])
        pairs = {
            "z": mine["z"],
            "quantized": mine["vq"].quantized,
            "commit_loss": mine["vq"].commit_loss,
            "perplexity": mine["vq"].perplexity,  # compared relatively
            "x_hat": mine["x_hat"],
            "target": mine["target"],
        }
        for name, value in pairs.items():
            diffs[f"{kind}.{name}"] = _max_diff(value, ref[name])
        # exp(entropy) of up to ~300 codes: float32 rounding of the sum shows at ~1e-4 absolute.
        diffs[f"{kind}.perplexity"] /= max(float(ref["perplexity"]), 1.0)
    diffs["x_recon"] = _max_diff(
        ours["x_recon"], package_output.x_recon.detach().numpy().transpose(0, 2, 1)
    )
    for name in ("LF.time", "HF.time"):
        diffs[name] = _max_diff(ours[name], package_output.recons_loss[name].detach().numpy())
    for name, diff in diffs.items():
        assert diff <= ATOL, f"{name}: max |ours - package| = {diff:.3g}"
    return diffs


def _run(package_model: "VQVAE", train: bool, x: np.ndarray):
    """(ours, package step by step, package forward, package after, our new state)."""
    variables = jax.tree.map(jnp.asarray, flax_variables(package_model))
    steps_model, forward_model = copy.deepcopy(package_model), copy.deepcopy(package_model)
    for model in (steps_model, forward_model):
        model.train(train)
    with torch.no_grad():
        steps = _package_forward(steps_model, x)
        output = forward_model(_to_torch(x))
    module = ReleaseTokenizer(dropout_rate=0.0 if train else 0.3)
    apply = jax.jit(
        lambda v, x: module.apply(v, x, train=train, mutable=["batch_stats", "vq"] if train else [])
    )
    ours, new_state = apply(variables, jnp.asarray(x))
    return ours, steps, output, steps_model, new_state


def test_variables_cover_the_flax_tree_and_count(package_model):
    ours = jax.eval_shape(
        lambda: ReleaseTokenizer().init(
            jax.random.key(0), jnp.zeros((BATCH, LENGTH, CHANNELS)), train=False
        )
    )
    copied = flax_variables(package_model)
    shapes = jax.tree.map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), ours)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), copied) == shapes
    trainable = sum(p.numel() for p in package_model.parameters() if p.requires_grad)
    assert trainable == PARAMETERS
    assert sum(a.size for a in jax.tree.leaves(ours["params"])) == PARAMETERS


def test_eval_forward_matches(package_model):
    ours, steps, output, _, _ = _run(package_model, False, _series(2))
    chex.assert_shape(ours["lf"]["z"], (BATCH, 1, 9, 128))
    chex.assert_shape(ours["hf"]["z"], (BATCH, 2, 37, 128))
    chex.assert_shape(ours["x_recon"], (BATCH, LENGTH, CHANNELS))
    diffs = _compare(ours, steps, output)
    assert diffs["lf.commit_loss"] == diffs["hf.commit_loss"] == 0.0  # no commitment in eval


def test_train_forward_and_state_updates_match(package_model):
    ours, steps, output, after, new_state = _run(package_model, True, _series(3))
    _compare(ours, steps, output)
    for kind in SUFFIX:
        assert steps[kind]["commit_loss"] > 0
    expected = flax_variables(after)
    stats = jax.tree.map(_max_diff, new_state["batch_stats"], expected["batch_stats"])
    assert max(jax.tree.leaves(stats)) <= ATOL
    for suffix in SUFFIX.values():
        mine, ref = (
            new_state["vq"][f"vq_model_{suffix}"]["vq"],
            expected["vq"][f"vq_model_{suffix}"]["vq"],
        )
        assert bool(mine["initted"]) and bool(ref["initted"])
        np.testing.assert_allclose(mine["cluster_size"], ref["cluster_size"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(mine["embed_sum"], ref["embed_sum"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(mine["codebook"], ref["codebook"], rtol=CODEBOOK_RTOL, atol=ATOL)
