"""Encoder / decoder layers: token-grid arithmetic, transposed conv, resize, shapes, BN, dropout."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import layers
from ssl_vqvae.stft import istft, num_frames, stft

N_FFT = 8
DOWNSAMPLED_WIDTH = 8
STFT_HEIGHT = N_FFT // 2 + 1

# SPEC §2.2 table (name, L, n_down, W = F, W') plus GunPoint.
TOKEN_GRID_TABLE = [
    ("ECG5000", 140, 3, 71, 8),
    ("ElectricDevices", 96, 2, 49, 12),
    ("FordA/FordB", 500, 4, 251, 15),
    ("Mallat/StarLightCurves", 1024, 6, 513, 8),
    ("ShapesAll", 512, 5, 257, 8),
    ("SonyAIBORobotSurface1", 70, 2, 36, 9),
    ("SonyAIBORobotSurface2", 65, 2, 33, 8),
    ("Symbols", 398, 4, 200, 12),
    ("TwoPatterns", 128, 3, 65, 8),
    ("UWaveGestureLibraryAll", 945, 5, 473, 14),
    ("Wafer", 152, 3, 77, 9),
    ("GunPoint", 150, 3, 76, 9),
]


@pytest.mark.parametrize("name,length,n_down,width,width_down", TOKEN_GRID_TABLE)
def test_token_grid_table(name, length, n_down, width, width_down):
    assert layers.num_downsample_blocks(length, N_FFT, DOWNSAMPLED_WIDTH) == n_down, name
    assert num_frames(length, N_FFT) == width, name
    assert layers.encoded_width(width, n_down) == width_down, name


def test_downsample_rate_rounding_and_short_series():
    assert layers.downsample_rate(7, N_FFT, DOWNSAMPLED_WIDTH) == 1  # L < downsampled_width
    assert layers.downsample_rate(24, N_FFT, DOWNSAMPLED_WIDTH) == 2  # round(1.5) = 2
    assert layers.downsample_rate(40, N_FFT, DOWNSAMPLED_WIDTH) == 2  # round(2.5) = 2 (even)
    assert layers.downsample_rate(8, N_FFT, DOWNSAMPLED_WIDTH) == 0  # round(0.5) = 0
    assert layers.num_downsample_blocks(8, N_FFT, DOWNSAMPLED_WIDTH) == 1
    assert layers.downsample_rate(150, 16, DOWNSAMPLED_WIDTH) == 6  # round(150 / 3 / 8)


# ---------------------------------------------------------------- resize (align_corners=True)


def np_resize_align_corners(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Textbook corner-aligned bilinear interpolation, one output pixel at a time."""
    batch, h, w, c = x.shape

    def source(i, n_in, n_out):
        pos = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = int(np.floor(pos))
        return lo, min(lo + 1, n_in - 1), pos - lo

    out = np.zeros((batch, out_h, out_w, c))
    for i in range(out_h):
        h0, h1, a = source(i, h, out_h)
        for j in range(out_w):
            w0, w1, b = source(j, w, out_w)
            out[:, i, j] = (
                (1 - a) * (1 - b) * x[:, h0, w0]
                + (1 - a) * b * x[:, h0, w1]
                + a * (1 - b) * x[:, h1, w0]
                + a * b * x[:, h1, w1]
            )
    return out


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [
        ((5, 8), (5, 13)),
        ((5, 64), (5, 33)),
        ((3, 4), (7, 9)),
        ((5, 7), (1, 1)),
        ((1, 1), (3, 4)),
        ((1, 6), (5, 11)),
        ((5, 7), (5, 7)),
    ],
)
def test_resize_matches_numpy_formula(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
    y = layers.resize_bilinear_align_corners(jnp.asarray(x), out_hw)
    chex.assert_shape(y, (2, *out_hw, 3))
    np.testing.assert_allclose(np.asarray(y), np_resize_align_corners(x, *out_hw), atol=1e-6)
    # Corners map exactly (a size-1 output axis takes the first row/column).
    np.testing.assert_array_equal(np.asarray(y[:, 0, 0]), x[:, 0, 0])
    if min(out_hw) > 1:
        np.testing.assert_array_equal(np.asarray(y[:, -1, -1]), x[:, -1, -1])


def test_resize_rejects_bad_size():
    with pytest.raises(ValueError, match="out_hw"):
        layers.resize_bilinear_align_corners(jnp.zeros((1, 5, 8, 2)), (5, 0))


# ---------------------------------------------------------------- transposed convolution


def np_torch_conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """PyTorch ConvTranspose2d(k=(3, 4), s=(1, 2), p=(1, 1)) by its scatter definition.

    x: [B, H, W, in] (NHWC), weight: PyTorch layout [in, out, 3, 4] -> [B, H, 2W, out].
    """
    batch, h, w, _ = x.shape
    _, c_out, kh, kw = weight.shape
    full = np.zeros((batch, h - 1 + kh, 2 * (w - 1) + kw, c_out))
    for i in range(h):
        for j in range(w):
            full[:, i : i + kh, 2 * j : 2 * j + kw] += np.einsum(
                "bc,cokl->bklo", x[:, i, j], weight
            )
    return full[:, 1 : 1 + h, 1 : 1 + 2 * w] + bias


@pytest.fixture(scope="module")
def conv_transpose_case():
    """Random input, UpsampleConv params and cotangent for [2, 5, 7, 3] -> [2, 5, 14, 4]."""
    rng = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(rng[0], (2, 5, 7, 3))
    params = layers.UpsampleConv(4).init(rng[1], x)["params"]
    params = {**params, "bias": jax.random.normal(rng[2], (4,))}
    cotangent = jax.random.normal(rng[3], (2, 5, 14, 4))
    return x, params, cotangent


def lax_conv_transpose(x, params):
    dn = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_transpose(x, params["kernel"], (1, 2), ((1, 1), (2, 2)), dimension_numbers=dn)
    return y + params["bias"]


def polyphase(x, params):
    return layers.UpsampleConv(4).apply({"params": params}, x)


def test_upsample_conv_equals_lax_conv_transpose(conv_transpose_case):
    x, params, cotangent = conv_transpose_case
    chex.assert_shape(params["kernel"], (3, 4, 3, 4))
    y = polyphase(x, params)
    chex.assert_shape(y, (2, 5, 14, 4))
    chex.assert_trees_all_close(y, lax_conv_transpose(x, params), atol=1e-5, rtol=1e-5)

    def grads(fn):
        return jax.grad(lambda x, p: jnp.sum(fn(x, p) * cotangent), argnums=(0, 1))(x, params)

    chex.assert_trees_all_close(grads(polyphase), grads(lax_conv_transpose), atol=1e-5, rtol=1e-5)


def test_upsample_conv_weights_interchangeable_with_flax_conv_transpose(conv_transpose_case):
    x, params, _ = conv_transpose_case
    flax_module = nn.ConvTranspose(4, (3, 4), strides=(1, 2), padding=((1, 1), (2, 2)))
    chex.assert_trees_all_equal_shapes(flax_module.init(jax.random.key(1), x)["params"], params)
    y = flax_module.apply({"params": params}, x)
    chex.assert_trees_all_close(polyphase(x, params), y, atol=1e-5, rtol=1e-5)


def test_upsample_conv_is_pytorch_conv_transpose_with_flipped_kernel(conv_transpose_case):
    x, params, _ = conv_transpose_case
    # PyTorch weight [in, out, kh, kw] == our kernel [kh, kw, in, out] flipped on both axes.
    torch_weight = np.transpose(np.asarray(params["kernel"])[::-1, ::-1], (2, 3, 0, 1))
    expected = np_torch_conv_transpose(np.asarray(x), torch_weight, np.asarray(params["bias"]))
    np.testing.assert_allclose(np.asarray(polyphase(x, params)), expected, atol=1e-5)


# ---------------------------------------------------------------- encoder / decoder


def conv_params(kh: int, kw: int, c_in: int, c_out: int) -> int:
    return kh * kw * c_in * c_out + c_out


def expected_param_count(hidden: int, res_blocks: int, n_down: int, channels: int) -> int:
    """Hand count of SPEC §2.3/§2.4 (all convs have biases; BN has scale and bias)."""
    d, two_c = hidden, 2 * channels
    bn = 2 * d
    encoder = (
        conv_params(3, 4, two_c, d) + bn
        + (n_down - 1) * (conv_params(3, 4, d, d) + bn)
        + res_blocks * (conv_params(3, 3, d, d) + bn + conv_params(1, 1, d, d) + bn)
    )  # fmt: skip
    decoder = (
        res_blocks * (conv_params(3, 3, d, d) + conv_params(1, 1, d, d) + bn)
        + (n_down - 1) * (conv_params(3, 4, d, d) + bn)
        + conv_params(3, 4, d, two_c)
        + conv_params(3, 4, two_c, two_c)
    )  # fmt: skip
    return encoder + decoder


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_autoencoder(length: int, channels: int, hidden: int, res_blocks: int, batch=2):
    """Shapes only (jax.eval_shape, nothing compiled): variables, z, decoded map, series."""
    n_down = layers.num_downsample_blocks(length, N_FFT, DOWNSAMPLED_WIDTH)
    encoder = layers.Encoder(num_down=n_down, hidden_dim=hidden, num_res_blocks=res_blocks)
    decoder = layers.Decoder(
        out_channels=2 * channels, num_up=n_down, hidden_dim=hidden, num_res_blocks=res_blocks
    )

    def run(x):
        u = stft(x, N_FFT)
        enc_vars = encoder.init(jax.random.key(0), u, train=False)
        z = encoder.apply(enc_vars, u, train=False)
        dec_vars = decoder.init(jax.random.key(1), z, u.shape[1:3], train=False)
        u_hat = decoder.apply(dec_vars, z, u.shape[1:3], train=False)
        return enc_vars, dec_vars, u, z, u_hat, istft(u_hat, N_FFT)

    return n_down, jax.eval_shape(run, jax.ShapeDtypeStruct((batch, length, channels), jnp.float32))


@pytest.mark.parametrize(
    "length,channels,width,width_down",
    [(150, 1, 76, 9), (24, 2, 13, 6), (251, 1, 126, 7), (65, 3, 33, 8)],
)
def test_autoencoder_shapes(length, channels, width, width_down):
    _, (_, _, u, z, u_hat, x_hat) = abstract_autoencoder(length, channels, 16, 1)
    chex.assert_shape(u, (2, STFT_HEIGHT, width, 2 * channels))
    chex.assert_shape(z, (2, STFT_HEIGHT, width_down, 16))
    chex.assert_shape(u_hat, u.shape)  # exactly the STFT size
    chex.assert_shape(x_hat, (2, 2 * (length // 2), channels))
    assert z.dtype == u_hat.dtype == jnp.float32


@pytest.mark.parametrize(
    "hidden,res_blocks,pinned_encoder,pinned_decoder",
    [(16, 1, 9328, 9300), (64, 4, 265792, 265140)],
)
def test_param_counts_gunpoint(hidden, res_blocks, pinned_encoder, pinned_decoder):
    n_down, (enc_vars, dec_vars, *_) = abstract_autoencoder(150, 1, hidden, res_blocks)
    assert n_down == 3
    total = count(enc_vars["params"]) + count(dec_vars["params"])
    assert count(enc_vars["params"]) == pinned_encoder
    assert count(dec_vars["params"]) == pinned_decoder
    assert total == expected_param_count(hidden, res_blocks, n_down, channels=1)
    # Every BN has a running mean and variance: encoder n_down + 2 R, decoder R + n_down - 1.
    num_bn = (n_down + 2 * res_blocks) + (res_blocks + n_down - 1)
    assert count(enc_vars["batch_stats"]) + count(dec_vars["batch_stats"]) == num_bn * 2 * hidden


# Tiny runnable config shared by the tests below: L = 64 -> W = 33, two halvings -> W' = 8.
TINY_HIDDEN = 8
TINY_ENCODER = layers.Encoder(num_down=2, hidden_dim=TINY_HIDDEN, num_res_blocks=1)
TINY_DECODER = layers.Decoder(out_channels=2, num_up=2, hidden_dim=TINY_HIDDEN, num_res_blocks=1)


@functools.partial(jax.jit, static_argnames="train")
def tiny_autoencode(enc_vars, dec_vars, u, *, train):
    """(u_hat, new encoder batch_stats, new decoder batch_stats); no dropout rng passed."""
    z, enc_state = TINY_ENCODER.apply(enc_vars, u, train=train, mutable=["batch_stats"])
    u_hat, dec_state = TINY_DECODER.apply(
        dec_vars, z, u.shape[1:3], train=train, mutable=["batch_stats"]
    )
    return u_hat, enc_state["batch_stats"], dec_state["batch_stats"]


@jax.jit
def tiny_param_grads(enc_vars, dec_vars, u):
    def loss(enc_params, dec_params):
        u_hat, *_ = tiny_autoencode(
            {**enc_vars, "params": enc_params}, {**dec_vars, "params": dec_params}, u, train=True
        )
        return jnp.mean((u_hat - u) ** 2)

    return jax.grad(loss, argnums=(0, 1))(enc_vars["params"], dec_vars["params"])


@pytest.fixture(scope="module")
def tiny_setup():
    """u: [4, 5, 33, 2] (L = 64) and the initial encoder / decoder variables."""

    @jax.jit
    def setup(key):
        keys = jax.random.split(key, 3)
        u = stft(jax.random.normal(keys[0], (4, 64, 1)), N_FFT)
        enc_vars = TINY_ENCODER.init(keys[1], u, train=False)
        z = TINY_ENCODER.apply(enc_vars, u, train=False)
        dec_vars = TINY_DECODER.init(keys[2], z, u.shape[1:3], train=False)
        return u, enc_vars, dec_vars

    return setup(jax.random.key(0))


def test_batch_stats_update_in_train_and_not_in_eval(tiny_setup):
    u, enc_vars, dec_vars = tiny_setup
    u_hat, enc_stats, dec_stats = tiny_autoencode(enc_vars, dec_vars, u, train=True)
    chex.assert_shape(u_hat, u.shape)
    chex.assert_tree_all_finite(u_hat)
    for old, new in [(enc_vars["batch_stats"], enc_stats), (dec_vars["batch_stats"], dec_stats)]:
        chex.assert_trees_all_equal_structs(old, new)
        for leaf_old, leaf_new in zip(
            jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new), strict=True
        ):
            assert not np.allclose(leaf_old, leaf_new)

    _, enc_eval, dec_eval = tiny_autoencode(enc_vars, dec_vars, u, train=False)
    chex.assert_trees_all_equal(enc_eval, enc_vars["batch_stats"])
    chex.assert_trees_all_equal(dec_eval, dec_vars["batch_stats"])


def test_decoder_randomness_is_dropout_only(tiny_setup):
    """Train-mode decoder outputs vary with the dropout rng only when the rate is non-zero, and
    eval mode ignores it (the encoder's side: `test_dropout_needs_rng_only_when_active`)."""
    u, enc_vars, dec_vars = tiny_setup
    z = TINY_ENCODER.apply(enc_vars, u, train=False)
    decoder = layers.Decoder(
        out_channels=2, num_up=2, hidden_dim=TINY_HIDDEN, num_res_blocks=1, dropout_rate=0.5
    )

    def run(module, seed, train):
        rngs = {"dropout": jax.random.key(seed)}
        out, _ = module.apply(
            dec_vars, z, u.shape[1:3], train=train, rngs=rngs, mutable=["batch_stats"]
        )
        return out

    chex.assert_trees_all_equal(run(decoder, 3, True), run(decoder, 3, True))
    assert not np.allclose(run(decoder, 3, True), run(decoder, 4, True))
    chex.assert_trees_all_equal(run(TINY_DECODER, 3, True), run(TINY_DECODER, 4, True))
    chex.assert_trees_all_equal(run(decoder, 3, False), run(decoder, 4, False))
    chex.assert_trees_all_close(run(decoder, 3, False), run(TINY_DECODER, 3, False))


def test_gradients_reach_every_layer(tiny_setup):
    u, enc_vars, dec_vars = tiny_setup
    grads = tiny_param_grads(enc_vars, dec_vars, u)
    chex.assert_tree_all_finite(grads)
    # Kernels and BN scales all get signal; conv biases right before a train-mode BN do not
    # (the BN removes them), so they are only checked for finiteness.
    flat = flax.traverse_util.flatten_dict({"encoder": grads[0], "decoder": grads[1]})
    for path, grad in flat.items():
        if path[-1] in ("kernel", "scale"):
            assert np.abs(grad).max() > 0, path


def test_dropout_needs_rng_only_when_active(tiny_setup):
    u, enc_vars, _ = tiny_setup
    encoder = layers.Encoder(num_down=2, hidden_dim=TINY_HIDDEN, num_res_blocks=1, dropout_rate=0.5)
    apply = functools.partial(encoder.apply, enc_vars, u, mutable=["batch_stats"])
    with pytest.raises(flax.errors.InvalidRngError):
        apply(train=True)
    z_eval, _ = apply(train=False)
    z_a, _ = apply(train=True, rngs={"dropout": jax.random.key(3)})
    z_b, _ = apply(train=True, rngs={"dropout": jax.random.key(3)})
    z_c, _ = apply(train=True, rngs={"dropout": jax.random.key(4)})
    chex.assert_trees_all_equal(z_a, z_b)
    assert not np.allclose(z_a, z_c)
    # Eval mode ignores dropout: same as the rate-0 encoder with the same weights.
    z_no_dropout, _ = TINY_ENCODER.apply(enc_vars, u, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_close(z_eval, z_no_dropout)


def test_bad_configuration_raises():
    u = jnp.zeros((1, STFT_HEIGHT, 5, 2))
    with pytest.raises(ValueError, match="num_down"):
        layers.Encoder(num_down=0).init(jax.random.key(0), u, train=False)
    with pytest.raises(ValueError, match="width"):
        layers.Encoder(num_down=3).init(jax.random.key(0), u, train=False)
    with pytest.raises(ValueError, match="hidden_dim"):
        layers.Decoder(out_channels=2, num_up=1, hidden_dim=8).init(
            jax.random.key(0), jnp.zeros((1, STFT_HEIGHT, 4, 6)), (5, 9), train=False
        )
    with pytest.raises(ValueError, match="num_up"):
        layers.Decoder(out_channels=2, num_up=0, hidden_dim=8).init(
            jax.random.key(0), jnp.zeros((1, STFT_HEIGHT, 4, 8)), (5, 9), train=False
        )
