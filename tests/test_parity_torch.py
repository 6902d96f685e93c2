"""Parity of the tokenizer building blocks and the FCN with the real PyTorch components.

Each test runs the torch op (or a network assembled here from `torch.nn` primitives following
SPEC §2.1-§2.4, §3.1, §3.3, §5.1) in float64 on the same inputs, with our float32 weights copied
across by parameter name, and compares values and, where training depends on them, gradients.
Tolerance: `max |ours - torch| <= RTOL * max |torch|` per array.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="parity extra not installed: pip install -e '.[parity]'"
)
F = torch.nn.functional
tnn = torch.nn

from ssl_vqvae import layers, ssl  # noqa: E402
from ssl_vqvae.augment import stft_round_trip  # noqa: E402
from ssl_vqvae.evaluation.fcn import FCN  # noqa: E402
from ssl_vqvae.stft import istft, stft  # noqa: E402

RTOL = 1e-5
N_FFT = 8  # SPEC §2.1
HOP = N_FFT // 4
AUG_N_FFT = 32  # SPEC §3.1
AUG_HOP = AUG_N_FFT // 4  # torch's default hop
KERNEL = (3, 4)  # down/up-sampling kernel (H, W), SPEC §2.3-§2.4
STRIDE = (1, 2)
LEAKY_SLOPE = 0.01
ZERO_GRAD = 1e-9  # torch gradients below this fraction of the largest one are analytically zero

Path = tuple[str, ...]


# ---------------------------------------------------------------- helpers


def to_torch(x) -> "torch.Tensor":
    """Any array -> float64 torch tensor (float32 inputs are represented exactly)."""
    return torch.tensor(np.asarray(x, np.float64))


def assert_close(ours, ref, rtol: float = RTOL, scale: float | None = None) -> None:
    """`max |ours - ref| <= rtol * scale`: our float32 result vs a float64 torch reference.

    `scale` defaults to `max |ref|`.
    """
    ours = np.asarray(ours, np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != torch shape {ref.shape}"
    if scale is None:
        scale = float(np.max(np.abs(ref))) or 1.0
    err = float(np.max(np.abs(ours - ref))) / scale
    assert err <= rtol, f"max relative error {err:.2e} > {rtol:.0e}"


def to_nchw(t: "torch.Tensor") -> "torch.Tensor":
    return t.permute(0, 3, 1, 2)


def nchw(x) -> "torch.Tensor":
    """Our NHWC array -> torch NCHW float64 tensor."""
    return to_nchw(to_torch(x))


def nhwc(t: "torch.Tensor") -> "torch.Tensor":
    return t.permute(0, 2, 3, 1)


def torch_weight(module: "tnn.Module", kernel: np.ndarray) -> np.ndarray:
    """A Flax kernel in the layout of the torch module's weight.

    Dense (in, out) -> (out, in); Conv (*spatial, in, out) -> (out, in, *spatial). Our transposed
    convolution uses its HWIO kernel as `lax.conv_transpose` does (a correlation over the
    dilated input), torch's ConvTranspose2d scatters with weight (in, out, kh, kw): the spatial
    axes are flipped.
    """
    if isinstance(module, tnn.Linear):
        return kernel.T
    if isinstance(module, tnn.ConvTranspose2d):
        return np.flip(kernel, (0, 1)).transpose(2, 3, 0, 1)
    if isinstance(module, tnn.Conv1d | tnn.Conv2d):
        return np.moveaxis(kernel, (-1, -2), (0, 1))
    raise TypeError(f"no weight layout for {type(module).__name__}")


def flax_kernel(module: "tnn.Module", weight: np.ndarray) -> np.ndarray:
    """Inverse of `torch_weight` (for gradients)."""
    if isinstance(module, tnn.Linear):
        return weight.T
    if isinstance(module, tnn.ConvTranspose2d):
        return np.flip(weight.transpose(2, 3, 0, 1), (0, 1))
    if isinstance(module, tnn.Conv1d | tnn.Conv2d):
        return np.moveaxis(weight, (0, 1), (-1, -2))
    raise TypeError(f"no weight layout for {type(module).__name__}")


def is_batch_norm(module: "tnn.Module") -> bool:
    return isinstance(module, tnn.BatchNorm1d | tnn.BatchNorm2d)


def load_into_torch(variables: dict, modules: dict[Path, "tnn.Module"]) -> None:
    """Copies Flax params (and BN batch_stats) into the torch modules named by their Flax path."""
    params = flax.traverse_util.flatten_dict(variables["params"])
    stats = flax.traverse_util.flatten_dict(variables.get("batch_stats", {}))
    used = set()
    with torch.no_grad():
        for path, module in modules.items():
            if is_batch_norm(module):
                pairs = [
                    (module.weight, params, "scale"),
                    (module.bias, params, "bias"),
                    (module.running_mean, stats, "mean"),
                    (module.running_var, stats, "var"),
                ]
                for target, tree, name in pairs:
                    target.copy_(to_torch(tree[(*path, name)]))
                    used.add((*path, name))
            else:
                kernel = np.asarray(params[(*path, "kernel")])
                module.weight.copy_(to_torch(torch_weight(module, kernel).copy()))
                module.bias.copy_(to_torch(params[(*path, "bias")]))
                used.update({(*path, "kernel"), (*path, "bias")})
    missing = (set(params) | set(stats)) - used
    assert not missing, f"Flax variables without a torch module: {missing}"


def torch_grads_as_flax(modules: dict[Path, "tnn.Module"]) -> dict[Path, np.ndarray]:
    """The torch parameter gradients, flattened under the Flax names and layouts."""
    grads = {}
    for path, module in modules.items():
        weight = module.weight.grad.numpy()
        grads[(*path, "bias")] = module.bias.grad.numpy()
        if is_batch_norm(module):
            grads[(*path, "scale")] = weight
        else:
            grads[(*path, "kernel")] = flax_kernel(module, weight)
    return grads


def assert_grads_close(ours: dict, modules: dict[Path, "tnn.Module"]) -> None:
    ours = flax.traverse_util.flatten_dict(ours)
    ref = torch_grads_as_flax(modules)
    assert set(ours) == set(ref)
    largest = max(float(np.max(np.abs(g))) for g in ref.values())
    for path in ours:
        scale = float(np.max(np.abs(ref[path])))
        # A bias followed by train-mode BN has an exactly zero gradient; ours is float32 round-off
        # of the other gradients, so judge it against the largest one.
        assert_close(ours[path], ref[path], scale=scale if scale > ZERO_GRAD * largest else largest)


def random_variables(model: nn.Module, *args, seed: int, **kwargs) -> dict:
    """Variables of `model.init(key, *args, **kwargs)`'s structure, filled with random values.

    Only the shapes come from Flax (`jax.eval_shape`, nothing compiled), so the test is independent
    of the initialisers. Kernels are U(+-1/sqrt(fan_in)); biases, BN scales and running
    statistics are random too, so that every copied quantity matters.
    """
    shapes = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path: Path, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
            value = rng.uniform(-bound, bound, shape)
        elif name == "bias":
            value = rng.normal(0.0, 0.3, shape)
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "mean":
            value = rng.normal(0.0, 0.5, shape)
        elif name == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:
            raise ValueError(f"unexpected variable {jax.tree_util.keystr(path)}")
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def torch_running_stats(modules: dict[Path, "tnn.Module"]) -> dict[Path, np.ndarray]:
    """Current torch running statistics under the Flax batch_stats names."""
    out = {}
    for path, module in modules.items():
        if is_batch_norm(module):
            out[(*path, "mean")] = module.running_mean.numpy().copy()
            out[(*path, "var")] = module.running_var.numpy().copy()
    return out


def assert_stats_close(ours: dict, ref: dict, kind: str) -> None:
    """Compares the running `kind` ("mean" or "var") of every BN layer."""
    paths = [p for p in ref if p[-1] == kind]
    assert paths and set(paths) == {p for p in ours if p[-1] == kind}
    for path in paths:
        assert_close(ours[path], ref[path])


# ---------------------------------------------------------------- STFT / ISTFT (SPEC §2.1)


def torch_hann(n_fft: int) -> "torch.Tensor":
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float64)


def torch_stft(x: "torch.Tensor") -> "torch.Tensor":
    """torch.stft with the SPEC §2.1 settings, in our layout: [B, L, C] -> [B, 5, W, 2C]."""
    batch, length, channels = x.shape
    spec = torch.stft(
        x.permute(0, 2, 1).reshape(batch * channels, length),
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window=torch_hann(N_FFT),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # [B*C, 5, W] complex
    _, height, width = spec.shape
    spec = torch.view_as_real(spec).reshape(batch, channels, height, width, 2)
    return spec.permute(0, 2, 3, 1, 4).reshape(batch, height, width, 2 * channels)


def torch_istft(u: "torch.Tensor") -> "torch.Tensor":
    """torch.istft (no target length) of our layout: [B, 5, W, 2C] -> [B, L', C]."""
    batch, height, width, two_c = u.shape
    channels = two_c // 2
    spec = u.reshape(batch, height, width, channels, 2).permute(0, 3, 1, 2, 4)
    spec = torch.view_as_complex(spec.reshape(batch * channels, height, width, 2).contiguous())
    y = torch.istft(
        spec,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window=torch_hann(N_FFT),
        center=True,
        normalized=False,
        onesided=True,
    )
    return y.reshape(batch, channels, -1).permute(0, 2, 1)


STFT_LENGTHS = [5, 20, 21]  # shortest allowed, even, odd


@pytest.mark.parametrize("length", STFT_LENGTHS)
def test_stft_matches_torch(length):
    x = np.random.default_rng(length).normal(size=(2, length, 3)).astype(np.float32)
    assert_close(stft(jnp.asarray(x), N_FFT), torch_stft(to_torch(x)))


@pytest.mark.parametrize("length", STFT_LENGTHS)
def test_istft_matches_torch_values_and_gradient(length):
    """A random (not STFT-consistent) spectrum: output length, values, d loss / d spectrum."""
    rng = np.random.default_rng(length)
    width = 1 + length // HOP
    u = rng.normal(size=(2, N_FFT // 2 + 1, width, 4)).astype(np.float32)
    r = rng.normal(size=(2, HOP * (width - 1), 2)).astype(np.float32)

    ours, vjp = jax.vjp(lambda v: istft(v, N_FFT), jnp.asarray(u))
    u_t = to_torch(u).requires_grad_()
    ref = torch_istft(u_t)
    assert ref.shape[1] == HOP * (length // HOP)
    assert_close(ours, ref)

    (ref * to_torch(r)).sum().backward()
    assert_close(vjp(jnp.asarray(r))[0], u_t.grad)


@pytest.mark.parametrize("length", STFT_LENGTHS)
def test_stft_istft_gradient_matches_torch(length):
    """d/dx of a nonlinear loss through STFT -> spectral mask -> ISTFT."""
    rng = np.random.default_rng(length)
    x = rng.normal(size=(2, length, 2)).astype(np.float32)
    mask = rng.normal(size=(2, N_FFT // 2 + 1, 1 + length // HOP, 4)).astype(np.float32)
    r = rng.normal(size=(2, HOP * (length // HOP), 2)).astype(np.float32)

    def loss(v):
        return jnp.sum(jnp.asarray(r) * jnp.tanh(istft(stft(v, N_FFT) * mask, N_FFT)))

    x_t = to_torch(x).requires_grad_()
    ref = torch.sum(to_torch(r) * torch.tanh(torch_istft(torch_stft(x_t) * to_torch(mask))))
    ref.backward()
    assert_close(loss(jnp.asarray(x)), ref)
    assert_close(jax.grad(loss)(jnp.asarray(x)), x_t.grad)


# ---------------------------------------------------------------- augmentation round trip (§3.1)


def torch_augment_round_trip(x: np.ndarray) -> np.ndarray:
    """The reference's call (float32, two-sided, torch defaults otherwise) padded back to L."""
    batch, length, channels = x.shape
    series = torch.tensor(x, dtype=torch.float32).permute(0, 2, 1).reshape(batch * channels, -1)
    window = torch.hann_window(AUG_N_FFT)
    spec = torch.stft(series, n_fft=AUG_N_FFT, window=window, return_complex=True, onesided=False)
    y = torch.istft(spec, n_fft=AUG_N_FFT, window=window, onesided=False)
    y = F.pad(y, (0, length - y.shape[-1]))
    return y.reshape(batch, channels, length).permute(0, 2, 1).numpy()


@pytest.mark.parametrize("length", [40, 41, 44, 46])  # L mod 8 = 0, 1, 4, 6
def test_augment_stft_round_trip_matches_torch(length):
    x = np.random.default_rng(length).normal(size=(3, length, 2)).astype(np.float32)
    ours = np.asarray(stft_round_trip(x))
    ref = torch_augment_round_trip(x)
    assert_close(ours, ref)
    kept = AUG_HOP * (length // AUG_HOP)
    assert np.all(ours[:, kept:] == 0.0), "the last L mod 8 samples must be exactly zero"
    assert_close(ours[:, :kept], x[:, :kept])


# ---------------------------------------------------------------- transposed conv and resize


def test_upsample_conv_matches_conv_transpose2d():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    r = rng.normal(size=(2, 5, 12, 4)).astype(np.float32)
    module = layers.UpsampleConv(features=4)
    params = random_variables(module, jnp.asarray(x), seed=1)["params"]

    torch_conv = tnn.ConvTranspose2d(3, 4, KERNEL, STRIDE, (1, 1)).double()
    modules = {(): torch_conv}
    load_into_torch({"params": params}, modules)

    def loss(p, v):
        y = module.apply({"params": p}, v)
        return jnp.sum(jnp.asarray(r) * y), y

    (_, ours), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        params, jnp.asarray(x)
    )
    x_t = nchw(x).requires_grad_()
    ref = nhwc(torch_conv(x_t))
    (ref * to_torch(r)).sum().backward()

    assert_close(ours, ref)
    assert_close(g_x, nhwc(x_t.grad))
    assert_grads_close(g_params, modules)


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((5, 7), (5, 16)), ((5, 16), (5, 7)), ((4, 9), (7, 5)), ((5, 9), (1, 3)), ((1, 4), (3, 8))],
)
def test_resize_matches_interpolate_align_corners(in_hw, out_hw):
    rng = np.random.default_rng(sum(in_hw + out_hw))
    x = rng.normal(size=(2, *in_hw, 3)).astype(np.float32)
    r = rng.normal(size=(2, *out_hw, 3)).astype(np.float32)
    ours, vjp = jax.vjp(lambda v: layers.resize_bilinear_align_corners(v, out_hw), jnp.asarray(x))

    x_t = nchw(x).requires_grad_()
    ref = nhwc(F.interpolate(x_t, size=out_hw, mode="bilinear", align_corners=True))
    (ref * to_torch(r)).sum().backward()
    assert_close(ours, ref)
    assert_close(vjp(jnp.asarray(r))[0], nhwc(x_t.grad))


# ---------------------------------------------------------------- networks built from torch.nn


class TorchEncoder(tnn.Module):
    """SPEC §2.3 from torch primitives: [replicate-pad Conv (3,4)/(1,2), BN, LReLU] x n_down, then
    (x + [LReLU, Conv3x3, BN, LReLU, Conv1x1](x) -> BN) x n_res. Dropout p = 0 is left out."""

    def __init__(self, in_channels: int, hidden: int, num_down: int, num_res: int):
        super().__init__()
        self.down = tnn.ModuleList(
            tnn.Sequential(
                tnn.Conv2d(
                    in_channels if i == 0 else hidden,
                    hidden,
                    KERNEL,
                    STRIDE,
                    padding=1,
                    padding_mode="replicate",
                ),
                tnn.BatchNorm2d(hidden),
                tnn.LeakyReLU(LEAKY_SLOPE),
            )
            for i in range(num_down)
        )
        self.res = tnn.ModuleList(
            tnn.Sequential(
                tnn.LeakyReLU(LEAKY_SLOPE),
                tnn.Conv2d(hidden, hidden, 3, padding=1),
                tnn.BatchNorm2d(hidden),
                tnn.LeakyReLU(LEAKY_SLOPE),
                tnn.Conv2d(hidden, hidden, 1),
            )
            for _ in range(num_res)
        )
        self.norms = tnn.ModuleList(tnn.BatchNorm2d(hidden) for _ in range(num_res))

    def forward(self, u: "torch.Tensor") -> "torch.Tensor":
        x = u
        for block in self.down:
            x = block(x)
        for f, norm in zip(self.res, self.norms, strict=True):
            x = norm(x + f(x))
        return x

    def flax_names(self) -> dict[Path, "tnn.Module"]:
        names = {}
        for i, block in enumerate(self.down):
            names[(f"DownBlock_{i}", "Conv_0")] = block[0]
            names[(f"DownBlock_{i}", "BatchNorm_0")] = block[1]
        for i, (f, norm) in enumerate(zip(self.res, self.norms, strict=True)):
            names[(f"ResBlock_{i}", "Conv_0")] = f[1]
            names[(f"ResBlock_{i}", "BatchNorm_0")] = f[2]
            names[(f"ResBlock_{i}", "Conv_1")] = f[4]
            names[(f"BatchNorm_{i}",)] = norm
        return names


class TorchDecoder(tnn.Module):
    """SPEC §2.4 from torch primitives: (x + [LReLU, Conv3x3, LReLU, Conv1x1](x) -> BN) x n_res,
    [ConvT d->d, BN, LReLU] x (num_up - 1), ConvT d->out, ConvT out->out, bilinear resize
    (align_corners=True)."""

    def __init__(self, out_channels: int, hidden: int, num_up: int, num_res: int):
        super().__init__()
        self.res = tnn.ModuleList(
            tnn.Sequential(
                tnn.LeakyReLU(LEAKY_SLOPE),
                tnn.Conv2d(hidden, hidden, 3, padding=1),
                tnn.LeakyReLU(LEAKY_SLOPE),
                tnn.Conv2d(hidden, hidden, 1),
            )
            for _ in range(num_res)
        )
        self.norms = tnn.ModuleList(tnn.BatchNorm2d(hidden) for _ in range(num_res))
        self.up = tnn.ModuleList(
            tnn.Sequential(
                tnn.ConvTranspose2d(hidden, hidden, KERNEL, STRIDE, (1, 1)),
                tnn.BatchNorm2d(hidden),
                tnn.LeakyReLU(LEAKY_SLOPE),
            )
            for _ in range(num_up - 1)
        )
        self.to_out = tnn.ConvTranspose2d(hidden, out_channels, KERNEL, STRIDE, (1, 1))
        self.out = tnn.ConvTranspose2d(out_channels, out_channels, KERNEL, STRIDE, (1, 1))

    def forward(self, z: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
        x = z
        for f, norm in zip(self.res, self.norms, strict=True):
            x = norm(x + f(x))
        for block in self.up:
            x = block(x)
        x = self.out(self.to_out(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def flax_names(self) -> dict[Path, "tnn.Module"]:
        names = {}
        for i, (f, norm) in enumerate(zip(self.res, self.norms, strict=True)):
            names[(f"ResBlock_{i}", "Conv_0")] = f[1]
            names[(f"ResBlock_{i}", "Conv_1")] = f[3]
            names[(f"BatchNorm_{i}",)] = norm
        for i, block in enumerate(self.up):
            names[(f"UpBlock_{i}", "UpsampleConv_0")] = block[0]
            names[(f"UpBlock_{i}", "BatchNorm_0")] = block[1]
        names[("UpsampleConv_0",)] = self.to_out
        names[("UpsampleConv_1",)] = self.out
        return names


class TorchFCN(tnn.Module):
    """SPEC §5.1 from torch primitives: [TF-SAME zero pad, Conv1d, BN1d, ReLU] x 3, GAP, Linear."""

    def __init__(self, in_channels: int, channels, kernel_sizes, num_classes: int):
        super().__init__()
        widths = (in_channels, *channels)
        self.kernel_sizes = kernel_sizes
        self.convs = tnn.ModuleList(
            tnn.Conv1d(widths[i], widths[i + 1], k) for i, k in enumerate(kernel_sizes)
        )
        self.norms = tnn.ModuleList(tnn.BatchNorm1d(c) for c in channels)
        self.head = tnn.Linear(channels[-1], num_classes)

    def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        h = x
        for conv, norm, k in zip(self.convs, self.norms, self.kernel_sizes, strict=True):
            # TensorFlow "SAME": the extra zero of an even kernel goes on the right.
            h = F.relu(norm(conv(F.pad(h, ((k - 1) // 2, k // 2)))))
        features = h.mean(dim=-1)
        return self.head(features), features

    def flax_names(self) -> dict[Path, "tnn.Module"]:
        names = {(f"Conv_{i}",): conv for i, conv in enumerate(self.convs)}
        names.update({(f"BatchNorm_{i}",): norm for i, norm in enumerate(self.norms)})
        names[("Dense_0",)] = self.head
        return names


def torch_projector(in_dim: int, hidden: int, out_dim: int) -> "tnn.Sequential":
    """SPEC §3.3: Linear -> BN1d -> ReLU -> Linear -> BN1d -> ReLU -> Linear."""
    return tnn.Sequential(
        tnn.Linear(in_dim, hidden),
        tnn.BatchNorm1d(hidden),
        tnn.ReLU(),
        tnn.Linear(hidden, hidden),
        tnn.BatchNorm1d(hidden),
        tnn.ReLU(),
        tnn.Linear(hidden, out_dim),
    )


PROJECTOR_NAMES = {
    ("Dense_0",): 0,
    ("BatchNorm_0",): 1,
    ("Dense_1",): 3,
    ("BatchNorm_1",): 4,
    ("Dense_2",): 6,
}


class LayersBatchNorm(nn.Module):
    """`layers._batch_norm`, the BN of every encoder / decoder block, switched by `train`."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return layers._batch_norm(train)(x)


@dataclasses.dataclass
class Twin:
    """One of our modules and its torch twin holding the same (randomised) weights and stats.

    `torch_input` maps a batch (a torch tensor in our layout) to the torch layout;
    `torch_forward` runs the torch network and returns its outputs in our layout, as a tuple.
    """

    model: nn.Module
    variables: dict
    net: "tnn.Module"
    modules: dict[Path, "tnn.Module"]
    input_shape: tuple[int, ...]
    torch_input: Callable[["torch.Tensor"], "torch.Tensor"]
    torch_forward: Callable[["torch.Tensor"], tuple]
    apply_kwargs: dict = dataclasses.field(default_factory=dict)

    def apply(self, variables: dict, x: jax.Array, *, train: bool):
        """Our forward pass: (outputs as a tuple, updated batch_stats or None)."""
        if train:
            out, updates = self.model.apply(
                variables, x, train=True, mutable=["batch_stats"], **self.apply_kwargs
            )
        else:
            out, updates = self.model.apply(variables, x, train=False, **self.apply_kwargs), None
        return (out if isinstance(out, tuple) else (out,)), updates


def make_twin(name: str) -> Twin:
    """Builds our module with random variables and its torch twin holding a copy of them."""
    apply_kwargs = {}
    if name == "batch_norm_2d":
        model, net = LayersBatchNorm(), tnn.BatchNorm2d(3)
        modules, input_shape = {("BatchNorm_0",): net}, (4, 5, 6, 3)
        torch_input, torch_forward = to_nchw, lambda x: (nhwc(net(x)),)
    elif name == "projector":
        model, net = ssl.Projector(hidden_dim=16, output_dim=8), torch_projector(10, 16, 8)
        modules, input_shape = {path: net[i] for path, i in PROJECTOR_NAMES.items()}, (6, 10)
        torch_input, torch_forward = (lambda t: t), (lambda x: (net(x),))
    elif name == "encoder":  # SPEC defaults: d = 64, 4 residual blocks
        model, net = layers.Encoder(num_down=2), TorchEncoder(2, 64, num_down=2, num_res=4)
        modules, input_shape = net.flax_names(), (3, 5, 13, 2)
        torch_input, torch_forward = to_nchw, lambda x: (nhwc(net(x)),)
    elif name == "decoder":
        model = layers.Decoder(out_channels=2, num_up=2)
        net = TorchDecoder(out_channels=2, hidden=64, num_up=2, num_res=4)
        modules, input_shape = net.flax_names(), (3, 5, 3, 64)
        apply_kwargs = {"output_hw": (5, 13)}
        torch_input, torch_forward = to_nchw, lambda x: (nhwc(net(x, (5, 13))),)
    elif name == "fcn":  # SPEC §5.1 defaults: channels (128, 256, 128), kernels (8, 5, 3)
        model, net = FCN(num_classes=3), TorchFCN(1, (128, 256, 128), (8, 5, 3), num_classes=3)
        modules, input_shape = net.flax_names(), (4, 20, 1)
        torch_input, torch_forward = (lambda t: t.permute(0, 2, 1)), net
    else:
        raise ValueError(f"unknown twin {name!r}")
    example = jnp.zeros(input_shape)
    variables = random_variables(model, example, train=False, seed=1, **apply_kwargs)
    net.double()
    load_into_torch(variables, modules)
    return Twin(
        model, variables, net, modules, input_shape, torch_input, torch_forward, apply_kwargs
    )


def batches(shape: tuple[int, ...], count: int, seed: int) -> list[np.ndarray]:
    """Random float32 batches with a non-zero mean, so BN's centring matters."""
    rng = np.random.default_rng(seed)
    return [(1.0 + 2.0 * rng.normal(size=shape)).astype(np.float32) for _ in range(count)]


TWINS = ["batch_norm_2d", "projector", "encoder", "decoder", "fcn"]


def run_train_steps(twin: Twin, inputs: list[np.ndarray]) -> tuple[list, list, list, list]:
    """Train-mode passes on successive batches on both sides.

    Returns our outputs, our batch_stats (flattened) after each step, and the same for torch.
    """
    variables = twin.variables
    ours, our_stats = [], []
    for x in inputs:
        out, updates = twin.apply(variables, jnp.asarray(x), train=True)
        variables = {**variables, **updates}
        ours.append(out)
        our_stats.append(flax.traverse_util.flatten_dict(updates["batch_stats"]))
    twin.net.train()
    refs, ref_stats = [], []
    with torch.no_grad():
        for x in inputs:
            refs.append(twin.torch_forward(twin.torch_input(to_torch(x))))
            ref_stats.append(torch_running_stats(twin.modules))
    return ours, our_stats, refs, ref_stats


@pytest.mark.parametrize("name", TWINS)
def test_train_mode_outputs_and_running_mean_match_torch(name):
    """Two train-mode steps: outputs (batch statistics) and running means after each step."""
    twin = make_twin(name)
    ours, our_stats, refs, ref_stats = run_train_steps(twin, batches(twin.input_shape, 2, seed=2))
    for out, ref, stats, ref_stat in zip(ours, refs, our_stats, ref_stats, strict=True):
        for o, t in zip(out, ref, strict=True):
            assert_close(o, t)
        assert_stats_close(stats, ref_stat, "mean")


@pytest.mark.parametrize("name", TWINS)
def test_running_var_matches_torch(name):
    """torch moves running_var towards the unbiased batch variance (n - 1), flax's BN would not."""
    twin = make_twin(name)
    _, our_stats, _, ref_stats = run_train_steps(twin, batches(twin.input_shape, 2, seed=2))
    for stats, ref_stat in zip(our_stats, ref_stats, strict=True):
        assert_stats_close(stats, ref_stat, "var")


@pytest.mark.parametrize("name", TWINS)
def test_eval_mode_matches_torch(name):
    """Eval mode normalises with the (randomised, copied) running statistics."""
    twin = make_twin(name)
    (x,) = batches(twin.input_shape, 1, seed=3)
    ours, _ = twin.apply(twin.variables, jnp.asarray(x), train=False)
    twin.net.eval()
    with torch.no_grad():
        refs = twin.torch_forward(twin.torch_input(to_torch(x)))
    for o, t in zip(ours, refs, strict=True):
        assert_close(o, t)


@pytest.mark.parametrize("name", TWINS)
def test_train_mode_gradients_match_torch(name):
    """Gradients of sum(r * outputs) w.r.t. all parameters and the input, in train mode."""
    twin = make_twin(name)
    (x,) = batches(twin.input_shape, 1, seed=4)
    outs, _ = twin.apply(twin.variables, jnp.asarray(x), train=True)
    rng = np.random.default_rng(5)
    cotangents = [rng.normal(size=o.shape).astype(np.float32) for o in outs]

    def loss(params, v):
        out, _ = twin.apply({**twin.variables, "params": params}, v, train=True)
        return sum(jnp.sum(r * o) for r, o in zip(cotangents, out, strict=True))

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(twin.variables["params"], jnp.asarray(x))

    twin.net.train()
    x_t = to_torch(x).requires_grad_()
    refs = twin.torch_forward(twin.torch_input(x_t))
    sum(torch.sum(to_torch(r) * t) for r, t in zip(cotangents, refs, strict=True)).backward()
    assert_grads_close(g_params, twin.modules)
    assert_close(g_x, x_t.grad)
