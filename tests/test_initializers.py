"""Parameter initialisation as PyTorch does it (SPEC §7.10), layer type by layer type.

The expected bound of every weight and bias is 1/sqrt(fan_in) with fan_in read from torch's own
`_calculate_fan_in_and_fan_out` on the equivalent torch layer when torch is installed (that is
where the transposed convolution's unusual fan-in comes from), else from the documented rule.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import config_lib, initializers, layers, ssl, stage1
from ssl_vqvae.evaluation.fcn import FCN
from ssl_vqvae.transformer import MaskGITTransformer


def _torch_fan_in(kind: str, in_ch: int, out_ch: int, kernel: tuple[int, ...]) -> int:
    """fan_in of the torch layer `kind`, from torch itself if available."""
    try:
        import torch
    except ImportError:
        return (out_ch if kind == "convT" else in_ch) * math.prod(kernel)
    layer = {
        "linear": lambda: torch.nn.Linear(in_ch, out_ch),
        "conv1d": lambda: torch.nn.Conv1d(in_ch, out_ch, kernel),
        "conv2d": lambda: torch.nn.Conv2d(in_ch, out_ch, kernel),
        "convT": lambda: torch.nn.ConvTranspose2d(in_ch, out_ch, kernel),
    }[kind]()
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
    return fan_in


def _assert_torch_uniform(values, fan_in: int, *, dense_sample: bool = True) -> None:
    """All values inside ±1/sqrt(fan_in); with many values, they fill it like a uniform does."""
    values = np.asarray(values).ravel()
    bound = 1.0 / math.sqrt(fan_in)
    assert np.all(np.abs(values) <= bound + 1e-7)
    if dense_sample and values.size >= 500:
        assert np.abs(values).max() > 0.95 * bound
        np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.1)


def _init(module, *args, **kwargs):
    return module.init(jax.random.key(0), *args, **kwargs)


def test_down_block_conv():
    params = _init(layers.DownBlock(64), jnp.zeros((2, 5, 20, 2)), train=False)["params"]
    fan_in = _torch_fan_in("conv2d", 2, 64, (3, 4))
    assert fan_in == 24
    _assert_torch_uniform(params["Conv_0"]["kernel"], fan_in)
    _assert_torch_uniform(params["Conv_0"]["bias"], fan_in, dense_sample=False)
    assert np.any(params["Conv_0"]["bias"] != 0)


def test_res_block_convs():
    params = _init(layers.ResBlock(True), jnp.zeros((2, 5, 8, 64)), train=False)["params"]
    for name, kernel in (("Conv_0", (3, 3)), ("Conv_1", (1, 1))):
        fan_in = _torch_fan_in("conv2d", 64, 64, kernel)
        _assert_torch_uniform(params[name]["kernel"], fan_in)
        _assert_torch_uniform(params[name]["bias"], fan_in, dense_sample=False)


def test_transposed_conv_uses_torch_fan_in_from_out_channels():
    """torch's ConvTranspose2d(64, 2) fan-in is 2 * 3 * 4 = 24, not 64 * 12."""
    params = _init(layers.UpsampleConv(2), jnp.zeros((2, 5, 8, 64)))["params"]
    fan_in = _torch_fan_in("convT", 64, 2, (3, 4))
    assert fan_in == 24
    _assert_torch_uniform(params["kernel"], fan_in)
    _assert_torch_uniform(params["bias"], fan_in, dense_sample=False)
    assert np.abs(params["kernel"]).max() > 0.9 / math.sqrt(24)  # not the 1/sqrt(768) range


def test_projector_dense_layers():
    params = _init(ssl.Projector(hidden_dim=256, output_dim=128), jnp.zeros((4, 128)), train=False)[
        "params"
    ]
    for name, fan_in in (("Dense_0", 128), ("Dense_1", 256), ("Dense_2", 256)):
        assert _torch_fan_in("linear", fan_in, 1, ()) == fan_in
        _assert_torch_uniform(params[name]["kernel"], fan_in)
        _assert_torch_uniform(params[name]["bias"], fan_in)


def test_fcn_conv1d_and_head():
    params = _init(FCN(num_classes=3), jnp.zeros((2, 32, 1)), train=False)["params"]
    in_ch = 1
    for i, (out_ch, k) in enumerate(((128, 8), (256, 5), (128, 3))):
        fan_in = _torch_fan_in("conv1d", in_ch, out_ch, (k,))
        _assert_torch_uniform(params[f"Conv_{i}"]["kernel"], fan_in)
        _assert_torch_uniform(params[f"Conv_{i}"]["bias"], fan_in, dense_sample=False)
        in_ch = out_ch
    _assert_torch_uniform(params["Dense_0"]["kernel"], 128, dense_sample=False)
    _assert_torch_uniform(params["Dense_0"]["bias"], 128, dense_sample=False)


def test_prior_linear_layers_and_embeddings():
    model = MaskGITTransformer(
        codebook_size=32, num_tokens=45, num_classes=2, variant="full_embedding"
    )
    params = _init(model, jnp.zeros((2, 45), jnp.int32), jnp.zeros((2,), jnp.int32), train=False)[
        "params"
    ]
    block = params["block_0"]
    for name in ("query", "key", "value"):
        _assert_torch_uniform(block["attn"][name]["kernel"], 256)
    _assert_torch_uniform(block["attn"]["out"]["kernel"], 128)
    _assert_torch_uniform(block["mlp_in"]["kernel"], 256)
    _assert_torch_uniform(block["mlp_in"]["bias"], 256, dense_sample=False)
    _assert_torch_uniform(params["proj_in"]["kernel"], 64)
    _assert_torch_uniform(params["proj_out"]["kernel"], 256)
    _assert_torch_uniform(params["head_out"]["kernel"], 64)
    # Embeddings stay N(0, 1), as torch's nn.Embedding and torch.randn.
    np.testing.assert_allclose(np.std(params["pos_emb"]), 1.0, rtol=0.1)


def test_flax_scheme_keeps_flax_defaults():
    params = _init(
        layers.DownBlock(64, param_init=initializers.FLAX), jnp.zeros((2, 5, 20, 2)), train=False
    )["params"]
    np.testing.assert_array_equal(params["Conv_0"]["bias"], 0.0)
    # lecun-normal: std 1/sqrt(24), so values beyond the torch bound 1/sqrt(24) occur.
    assert np.abs(params["Conv_0"]["kernel"]).max() > 1.0 / math.sqrt(24)


@pytest.mark.parametrize("scheme", initializers.SCHEMES)
def test_config_selects_the_scheme_for_the_whole_tokenizer(scheme):
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    default = config_lib.load_config_file("stage1_vibcreg")
    assert default.model.init == initializers.TORCH
    config.model.init = scheme
    model = stage1.build_model(config, 150, 1)
    real = model.init(jax.random.key(0), jnp.zeros((4, 150, 1)), train=False)["params"]
    biases = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(real)
        if path[-1].key == "bias" and "BatchNorm" not in jax.tree_util.keystr(path)
    ]
    all_zero = all(np.all(np.asarray(b) == 0) for b in biases)
    assert all_zero == (scheme == initializers.FLAX)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="init must be one of"):
        initializers.layer_init("xavier", 10)
