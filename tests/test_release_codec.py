"""The release tokenizer's blocks on their own (no torch): shapes, the transposed convolution
against its definition, the depthwise / 1x1 fast paths (values and gradients) against XLA's
convolutions, weight norm, resizing, frequency targets, k-means and the k-means initialised
projected quantiser, and gradient flow through a small branch."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import depthwise, release_codec, stft, weight_norm
from ssl_vqvae.projected_quantizer import KMeansVectorQuantizer, ProjectedQuantizer, kmeans
from ssl_vqvae.quantizer import ema_codebook_update

N_FFT = 4


@pytest.mark.parametrize(
    "kind, length, width, grid",
    [("lf", 150, 8, (1, 9)), ("hf", 150, 32, (2, 37)), ("lf", 40, 32, (1, 20))],
)
def test_shapes(kind, length, width, grid):
    """The package's geometry (L = 150: LF rate 19 -> 4 halvings, HF rate 5 -> 2; L = 40 with
    width 32: rate 1 -> one halving), via eval_shape (nothing is compiled)."""
    batch, channels = 2, 3
    rate = release_codec.compute_downsample_rate(length, N_FFT, width)
    u = jax.ShapeDtypeStruct(
        (batch, N_FFT // 2 + 1, stft.num_frames(length, N_FFT), 2 * channels), jnp.float32
    )
    rows = jax.eval_shape(lambda u: release_codec.branch_rows(u, kind), u)
    encoder = release_codec.ReleaseEncoder(kind, rate, hid_dim=16)
    decoder = release_codec.ReleaseDecoder(kind, rate, hid_dim=16, out_channels=2 * channels)

    def forward(rows):
        key = jax.random.key(0)
        z, _ = encoder.init_with_output(key, rows, train=False)
        decoded, _ = decoder.init_with_output(key, z, train=False)
        return z, decoded, release_codec.rows_to_time(decoded, kind, N_FFT, length)

    z, decoded, series = jax.eval_shape(forward, rows)
    assert (z.shape[1], z.shape[2]) == grid
    chex.assert_shape(z, (batch, *grid, 16))
    assert grid[1] == release_codec.encoded_width(u.shape[2], rate)
    chex.assert_shape(
        decoded, (batch, grid[0], release_codec.decoded_width(grid[1], rate), 2 * channels)
    )
    chex.assert_shape(series, (batch, length, channels))
    chex.assert_type([z, decoded, series], jnp.float32)


def _conv_transpose_by_definition(x, kernel, strides, padding, groups):
    """out[o, h*sh - ph + i, w*sw - pw + j] += x[c, h, w] * K[i, j, c, o'] (numpy, NHWC)."""
    batch, height, width, cin = x.shape
    kh, kw, _, out_g = kernel.shape
    in_g = cin // groups
    full = np.zeros(
        (batch, (height - 1) * strides[0] + kh, (width - 1) * strides[1] + kw, groups * out_g)
    )
    for c in range(cin):
        outs = slice((c // in_g) * out_g, (c // in_g + 1) * out_g)
        for h in range(height):
            for w in range(width):
                top, left = h * strides[0], w * strides[1]
                full[:, top : top + kh, left : left + kw, outs] += (
                    x[:, h, w, c, None, None, None] * kernel[None, :, :, c]
                )
    return full[:, padding[0] : full.shape[1] - padding[0], padding[1] : full.shape[2] - padding[1]]


@pytest.mark.parametrize(
    "groups, out_per_group, kernel_size, strides, padding",
    [
        (2, 3, (3, 4), (1, 2), (1, 1)),
        (1, 6, (1, 4), (1, 2), (0, 1)),
        (4, 2, (1, 1), (1, 1), (0, 0)),
        (4, 1, (3, 4), (1, 2), (1, 1)),  # depthwise: `depthwise.conv_transpose`
        (1, 3, (1, 1), (1, 1), (0, 0)),  # 1x1: a matmul
    ],
)
def test_conv_transpose_matches_its_definition(
    groups, out_per_group, kernel_size, strides, padding
):
    """4 input channels in `groups` groups, each giving `out_per_group` output channels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 4, out_per_group)).astype(np.float32)
    ours = weight_norm.conv_transpose_torch(
        jnp.asarray(x), jnp.asarray(kernel), strides, padding, groups
    )
    expected = _conv_transpose_by_definition(x, kernel, strides, padding, groups)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def _assert_same_vjp(fast, plain, args, atol=1e-5):
    """fast(*args) == plain(*args), and so are their VJPs for a random cotangent."""

    @jax.jit
    def both(args):
        out, fast_vjp = jax.vjp(fast, *args)
        expected, plain_vjp = jax.vjp(plain, *args)
        cotangent = jax.random.normal(jax.random.key(7), out.shape)
        return out, expected, fast_vjp(cotangent), plain_vjp(cotangent)

    out, expected, ours, theirs = both(args)
    np.testing.assert_allclose(out, expected, atol=atol)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for mine, ref in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(mine, ref, atol=atol)


def _grouped_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


@pytest.mark.parametrize(
    "shape, kernel_size, strides, padding",
    [
        ((2, 3, 9, 4), (3, 4), (1, 2), ((1, 1), (1, 1))),  # HF encoder block
        ((2, 1, 7, 3), (1, 3), (1, 1), ((0, 0), (1, 1))),  # LF residual block
        ((2, 4, 10, 3), (3, 3), (2, 3), ((1, 0), (2, 1))),  # unused last rows / columns
    ],
)
def test_depthwise_conv_matches_grouped_conv(shape, kernel_size, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((*kernel_size, 1, shape[-1])), jnp.float32)
    _assert_same_vjp(
        lambda x, k: depthwise.conv(x, k, strides, padding),
        lambda x, k: _grouped_conv(x, k, strides, padding),
        (x, kernel),
    )


@pytest.mark.parametrize(
    "shape, kernel_size, strides, padding",
    [
        ((2, 3, 9, 4), (3, 4), (1, 2), (1, 1)),  # HF decoder block
        ((2, 1, 7, 3), (1, 4), (1, 2), (0, 1)),  # LF decoder block
        ((2, 3, 5, 3), (3, 3), (2, 3), (1, 2)),
        ((2, 4, 5, 3), (2, 3), (3, 2), (0, 1)),  # kernel < stride: a phase without taps
    ],
)
def test_depthwise_conv_transpose_matches_dilated_conv(shape, kernel_size, strides, padding):
    """Against the plain formulation: the stride-dilated input convolved with the flipped
    kernel (torch's definition is checked in test_conv_transpose_matches_its_definition)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((*kernel_size, shape[-1], 1)), jnp.float32)

    def dilated(x, k):
        pads = [(t - 1 - p, t - 1 - p) for t, p in zip(kernel_size, padding, strict=True)]
        flipped = jnp.transpose(k, (0, 1, 3, 2))[::-1, ::-1]
        return jax.lax.conv_general_dilated(
            x, flipped, (1, 1), pads, strides, None, ("NHWC", "HWIO", "NHWC"), shape[-1]
        )

    _assert_same_vjp(
        lambda x, k: depthwise.conv_transpose(x, k, strides, padding), dilated, (x, kernel)
    )


@pytest.mark.parametrize(
    "features, kernel_size, strides, padding, groups, mode",
    [
        (4, (3, 4), (1, 2), ((1, 1), (1, 1)), 4, "replicate"),  # depthwise
        (6, (1, 1), (1, 1), ((0, 0), (0, 0)), 1, "zeros"),  # 1x1: a matmul
        (8, (3, 3), (1, 1), ((1, 1), (1, 1)), 4, "zeros"),  # XLA's grouped conv
    ],
)
def test_weight_norm_conv_fast_paths(features, kernel_size, strides, padding, groups, mode):
    """The layer (values and gradients) equals XLA's conv of its weight-normed kernel."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 9, 4))
    conv = weight_norm.WeightNormConv(features, kernel_size, strides, padding, groups, mode)
    params = conv.init(jax.random.key(1), x)["params"]

    def plain(params, x):
        if mode == "replicate":
            x = jnp.pad(x, ((0, 0), *padding, (0, 0)), mode="edge")
        kernel = weight_norm.weight_normalize(params["weight_v"], params["weight_g"], 3)
        pads = ((0, 0), (0, 0)) if mode == "replicate" else padding
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            strides,
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )
        return y + params["bias"]

    _assert_same_vjp(lambda p, x: conv.apply({"params": p}, x), plain, (params, x))


def test_weight_norm_gain_is_the_norm_over_the_other_axes():
    rng = np.random.default_rng(1)
    v = jnp.asarray(rng.standard_normal((3, 4, 5, 6)), jnp.float32)
    g = jnp.asarray(rng.uniform(0.5, 2.0, 5), jnp.float32)
    w = weight_norm.weight_normalize(v, g, 2)
    np.testing.assert_allclose(jnp.sqrt(jnp.sum(w**2, axis=(0, 1, 3))), g, rtol=1e-6)
    # Per-axis directions are kept.
    np.testing.assert_allclose(
        w[:, :, 1] / g[1], v[:, :, 1] / jnp.linalg.norm(v[:, :, 1]), rtol=1e-5, atol=1e-7
    )


def test_weight_norm_layers_start_as_their_plain_layers():
    """torch sets g = ||v|| at wrap time: the weight-normed layer starts as the plain one."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 4))
    conv = weight_norm.WeightNormConvTranspose(6, (3, 4), (1, 2), (1, 1), groups=2)
    variables = conv.init(jax.random.key(1), x)
    p = variables["params"]
    plain = weight_norm.ConvTranspose(6, (3, 4), (1, 2), (1, 1), groups=2)
    expected = plain.apply({"params": {"kernel": p["weight_v"], "bias": p["bias"]}}, x)
    np.testing.assert_allclose(conv.apply(variables, x), expected, atol=1e-5)
    chex.assert_shape(p["weight_g"], (4,))  # per *input* channel, as torch's dim=0
    norm = weight_norm.WeightNormLayerNorm()
    np.testing.assert_allclose(
        norm.apply(norm.init(jax.random.key(2), x), x),
        nn.LayerNorm(epsilon=1e-5).apply(
            {"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}, x
        ),
        atol=1e-5,
    )
    dense = weight_norm.WeightNormDense(3, use_bias=False)
    dense_vars = dense.init(jax.random.key(3), x)
    np.testing.assert_allclose(
        dense.apply(dense_vars, x), x @ dense_vars["params"]["weight_v"], atol=1e-5
    )


def test_snake():
    x = jnp.linspace(-3.0, 3.0, 12).reshape(1, 3, 4)
    variables = weight_norm.Snake().init(jax.random.key(0), x)
    a = variables["params"]["a"]
    assert a.shape == (4,) and bool(jnp.all((a >= 0.2) & (a <= 0.5)))
    np.testing.assert_allclose(
        weight_norm.Snake().apply(variables, x), x + jnp.sin(a * x) ** 2 / a, rtol=1e-6
    )


def test_resize_linear_half_pixel_centres():
    x = jnp.asarray([0.0, 1.0])[None, :, None]
    np.testing.assert_allclose(release_codec.resize_linear(x, 4)[0, :, 0], [0.0, 0.25, 0.75, 1.0])
    y = jnp.arange(6.0)[None, :, None]
    np.testing.assert_allclose(release_codec.resize_linear(y, 3)[0, :, 0], [0.5, 2.5, 4.5])
    np.testing.assert_array_equal(release_codec.resize_linear(y, 6), y)


def test_frequency_targets_split_the_series():
    """ISTFT is linear and, for n_fft 4 (hop 1), returns L samples: x_l + x_h == x."""
    x = jax.random.normal(jax.random.key(0), (2, 30, 2))
    x_l, x_h = release_codec.frequency_targets(x, N_FFT, 30)
    np.testing.assert_allclose(x_l + x_h, x, atol=1e-5)
    u_l = stft.stft(x_l, N_FFT, window="hann", normalized=True)
    assert float(jnp.max(jnp.abs(u_l[:, 0]))) > 0.1  # the LF band carries row 0 ...
    assert float(jnp.max(jnp.abs(u_l[:, 1:]))) < 1.0  # ... and much less elsewhere


def _bucket_means(samples, means):
    buckets = np.argmin(((samples[:, None] - means[None]) ** 2).sum(-1), axis=1)
    return buckets, {k: samples[buckets == k].mean(0) for k in np.unique(buckets)}


@pytest.mark.parametrize("num_samples", [60, 5])
def test_kmeans_is_a_lloyd_fixed_point(num_samples):
    """Separated blobs: the means are their buckets' averages; empty clusters keep a sample."""
    rng = np.random.default_rng(0)
    centres = 10.0 * rng.standard_normal((3, 4))
    samples = (
        centres[rng.integers(0, 3, num_samples)] + 0.1 * rng.standard_normal((num_samples, 4))
    ).astype(np.float32)
    means, sizes = kmeans(jnp.asarray(samples), 8, 10, jax.random.key(0))
    means = np.asarray(means)
    buckets, averages = _bucket_means(samples, means)
    assert int(sizes.sum()) == num_samples
    np.testing.assert_array_equal(np.asarray(sizes), np.bincount(buckets, minlength=8))
    for k in range(8):
        if k in averages:
            np.testing.assert_allclose(means[k], averages[k], atol=1e-5)
        else:
            assert np.min(np.abs(samples - means[k]).sum(-1)) == 0.0


def _nearest(flat: jax.Array, codebook: jax.Array) -> jax.Array:
    return jnp.argmin(jnp.sum((flat[:, None] - codebook[None]) ** 2, -1), axis=1)


def test_projected_quantizer_initialises_by_kmeans_once():
    quantizer = ProjectedQuantizer(dim=6, codebook_size=16, codebook_dim=3)
    z = jax.random.normal(jax.random.key(0), (2, 4, 5, 6))
    variables = quantizer.init(jax.random.key(1), z, train=False)
    state = variables["vq"]["vq"]
    assert not bool(state["initted"]) and not np.any(state["codebook"])
    # Immutable and not initted: the zero codebook assigns every vector to code 0.
    assert not np.any(quantizer.apply(variables, z, train=False).indices)

    def project_in(z):
        return quantizer.apply(variables, z, method=lambda m, z: m.project_in(z)).reshape(-1, 3)

    # First mutable call: k-means (seeded by the stored seed), lookup, then one EMA step.
    out, new = quantizer.apply(variables, z, train=True, mutable=["vq"])
    flat = project_in(z)
    means, sizes = kmeans(flat, 16, 10, jax.random.key(state["kmeans_seed"]))
    nearest = _nearest(flat, means)
    np.testing.assert_array_equal(out.indices.reshape(-1), nearest)
    np.testing.assert_allclose(out.commit_loss, jnp.mean((flat - means[nearest]) ** 2), rtol=1e-5)
    lookup = quantizer.apply(variables, out.indices, method=lambda m, i: m.project_out(means[i]))
    np.testing.assert_allclose(out.quantized, lookup, atol=1e-6)
    size, _, codebook = ema_codebook_update(
        sizes.astype(jnp.float32), means, flat, nearest, 0.8, 1e-5
    )
    new_state = new["vq"]["vq"]
    assert bool(new_state["initted"])
    np.testing.assert_allclose(new_state["cluster_size"], size, rtol=1e-6)
    np.testing.assert_allclose(new_state["codebook"], codebook, rtol=1e-5)
    np.testing.assert_allclose(
        quantizer.apply({**variables, **new}, out.indices, method="lookup"),
        quantizer.apply(variables, out.indices, method=lambda m, i: m.project_out(codebook[i])),
        atol=1e-6,
    )

    # A second call looks up the current codebook and takes an EMA step, no new k-means.
    again, newer = quantizer.apply({**variables, **new}, z + 0.5, train=True, mutable=["vq"])
    flat2 = project_in(z + 0.5)
    np.testing.assert_array_equal(again.indices.reshape(-1), _nearest(flat2, codebook))
    _, _, expected = ema_codebook_update(
        new_state["cluster_size"],
        new_state["embed_sum"],
        flat2,
        again.indices.reshape(-1),
        0.8,
        1e-5,
    )
    np.testing.assert_allclose(newer["vq"]["vq"]["codebook"], expected, rtol=1e-5, atol=1e-6)


def test_without_kmeans_the_codebook_starts_initted_and_random():
    vq = KMeansVectorQuantizer(codebook_size=8, dim=3, kmeans_init=False)
    state = vq.init(jax.random.key(0), jnp.zeros((4, 3)), train=False)["vq"]
    assert bool(state["initted"]) and "kmeans_seed" not in state
    assert float(jnp.std(state["codebook"])) > 0.1


def _filled(abstract: dict, seed: int) -> dict:
    """Concrete variables for an abstract tree, from numpy (compiling a Flax init's many random
    draws costs seconds on CPU): Snake's `a` in [0.2, 0.5], gains and scales in [0.5, 1.5],
    everything else N(0, 0.3^2); the `vq` state as initialised (zeros, not initted)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if path[0].key == "vq":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "a":
            return jnp.asarray(rng.uniform(0.2, 0.5, leaf.shape), leaf.dtype)
        if name in ("weight_g", "scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_gradients_reach_every_parameter():
    """A small LF branch: encoder -> quantiser (straight-through) -> decoder -> series."""
    length, channels = 32, 1
    rate = release_codec.compute_downsample_rate(length, N_FFT, 8)  # 4: two halvings
    x = jax.random.normal(jax.random.key(0), (2, length, channels))
    sizes = dict(hid_dim=8, n_resnet_blocks=1, dropout_rate=0.1)

    class Branch(nn.Module):
        @nn.compact
        def __call__(self, x):
            u = stft.stft(x, N_FFT, window="hann", normalized=True)
            z = release_codec.ReleaseEncoder("lf", rate, **sizes)(
                release_codec.branch_rows(u, "lf"), train=True
            )
            vq = ProjectedQuantizer(dim=8, codebook_size=4, codebook_dim=2)(z, train=True)
            rows = release_codec.ReleaseDecoder("lf", rate, **sizes, out_channels=2)(
                vq.quantized, train=True
            )
            x_hat = release_codec.rows_to_time(rows, "lf", N_FFT, length)
            return jnp.mean((x_hat - x) ** 2) + vq.commit_loss

    model = Branch()
    rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2)}
    variables = _filled(jax.eval_shape(lambda: model.init(rngs, x)), 0)

    def loss(params):
        mutable = ["batch_stats", "vq"]
        variables_ = {**variables, "params": params}
        return model.apply(variables_, x, rngs={"dropout": jax.random.key(3)}, mutable=mutable)[0]

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(grad))), jax.tree_util.keystr(path)
        assert float(jnp.max(jnp.abs(grad))) > 0, jax.tree_util.keystr(path)
