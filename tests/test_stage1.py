"""Stage-1 model, loss, train step (sharded and not), end-to-end training and resume."""

import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_vqvae import artifacts, config_lib, data, pipeline, sharding, stage1, train_state
from ssl_vqvae.vqvae import VQVAE

GUNPOINT_LENGTH = 150


def _init_state(model, optimizer, x_shape, rng):
    """The trainer's fresh state of `model` for inputs of `x_shape`."""
    example = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return train_state.module_init(model, optimizer, example, train=False)(rng)


def _train_step(model, optimizer, ssl_config):
    """The trainer's raw step: the generic update of the stage-1 loss."""
    return train_state.make_train_step(stage1.make_loss_fn(model, ssl_config), optimizer)


def _param_count(config, length=GUNPOINT_LENGTH):
    model = stage1.build_model(config, length, 1)
    x = jnp.zeros((4, length, 1))
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
    return train_state.count_params(shapes["params"]), model


def _tokenizer_formula(d, res, num_down, c=1):
    """Hand count of SPEC §2.3-2.4: convs with bias, BatchNorm scale+bias."""
    down_first = 12 * 2 * c * d + d + 2 * d
    down_rest = (num_down - 1) * (12 * d * d + d + 2 * d)
    enc_res = res * ((9 * d * d + d) + 2 * d + (d * d + d) + 2 * d)
    dec_res = res * ((9 * d * d + d) + (d * d + d) + 2 * d)
    up_rest = (num_down - 1) * (12 * d * d + d + 2 * d)
    up_last = (12 * d * 2 * c + 2 * c) + (12 * (2 * c) ** 2 + 2 * c)
    return down_first + down_rest + enc_res + dec_res + up_rest + up_last


def _projector_formula(d_in, h, o, iternorm):
    return (d_in * h + h) + 2 * h + (h * h + h) + 2 * h + (h * o + o) + (2 * o if iternorm else 0)


# Pinned totals, by hand: with 3 down blocks the tokenizer has 48d^2 + 63d + 52 + res(20d^2 + 10d)
# parameters, the projector (width h) 2dh + 2h^2 + 7h, plus 2h for IterNorm's affine (VIbCReg).
#   d=16, res=1:  12288 + 1008 + 52 + 5280             = 18_628;  h=32: 1024 + 2048 + 224 (+64)
#   d=64, res=4:  196608 + 4032 + 52 + 4 * 82560       = 530_932
#   h=4096, d=64: 524288 + 33554432 + 28672 = 34_107_392 (+8192 with IterNorm)
@pytest.mark.parametrize(
    "method, arg, d, res, proj, pinned",
    [
        ("none", "tiny", 16, 1, 0, 18_628),
        ("vibcreg", "tiny", 16, 1, 32, 18_628 + 3_360),
        ("none", None, 64, 4, 0, 530_932),
        ("barlowtwins", None, 64, 4, 4096, 530_932 + 34_107_392),
        ("vibcreg", None, 64, 4, 4096, 530_932 + 34_107_392 + 8_192),
    ],
)
def test_parameter_counts_pinned(method, arg, d, res, proj, pinned):
    count, model = _param_count(
        config_lib.load_config_file(f"{config_lib.STAGE1_CONFIGS[method]}:{arg or ''}")
    )
    expected = _tokenizer_formula(d, res, num_down=3)  # GunPoint: L=150 -> 3 down blocks
    if proj:
        expected += _projector_formula(2 * d, proj, proj, iternorm=method == "vibcreg")
    assert count == expected == pinned
    assert model.token_grid == (5, 9)


@pytest.fixture(scope="module")
def gunpoint():
    return data.load_ucr("GunPoint")


@pytest.fixture(scope="module")
def tiny_setup(gunpoint):
    """Model, optimizer, raw step and a first batch for the tiny VIbCReg config."""
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    model = stage1.build_model(config, gunpoint.length, 1)
    optimizer = train_state.make_optimizer(optax.constant_schedule(1e-3), 1e-3)
    names = ("window_warp", "amplitude_resize")
    batches = pipeline.BatchRows(gunpoint.train, 16, seed=0, augmentations=names)
    state = _init_state(model, optimizer, (16, gunpoint.length, 1), jax.random.key(0))
    step = chex.assert_max_traces(_train_step(model, optimizer, config.ssl), n=1)
    return model, optimizer, step, state, batches


def _copy(tree):
    """A private copy: the compiled step donates (deletes) the state it is given."""
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture(scope="module")
def sharded_step(tiny_setup):
    return train_state.compile_step(tiny_setup[2], sharding.make_mesh())


def _step_on(devices, model, optimizer, ssl_config, state, batch):
    mesh = sharding.make_mesh(devices)
    step = train_state.compile_step(_train_step(model, optimizer, ssl_config), mesh)
    return jax.device_get(
        step(
            sharding.replicate(_copy(state), mesh),
            sharding.shard_batch(batch, mesh),
            jax.random.key(1),
        )
    )


@pytest.mark.parametrize("method", ["none", "vibcreg"])
def test_one_step_on_four_devices_equals_one_device(method, gunpoint):
    """The sharded step is the single-device math.

    For SSL methods only the forward values are compared: max-pooling the straight-through
    codewords `z + sg(e - z)` meets near-exact ties (many positions share a codeword), so
    reduction-order rounding of z (~1e-7) may route the max's gradient to another tied
    position; the gradients are then equally valid but not equal.
    """
    config = config_lib.load_config_file(f"{config_lib.STAGE1_CONFIGS[method]}:tiny")
    model = stage1.build_model(config, gunpoint.length, 1)
    # Plain SGD: Adam would blow roundoff-level gradients (biases before BatchNorm) up to +-lr.
    optimizer = optax.sgd(0.1)
    augmentations = () if method == "none" else ("window_warp", "amplitude_resize")
    batch = pipeline.BatchRows(gunpoint.train, 16, 0, augmentations)(0)
    state = _init_state(model, optimizer, batch["x"].shape, jax.random.key(0))
    assert jax.device_count() == 4
    state4, metrics4 = _step_on(jax.devices(), model, optimizer, config.ssl, state, batch)
    state1, metrics1 = _step_on(jax.devices()[:1], model, optimizer, config.ssl, state, batch)
    forward = {k: v for k, v in metrics1.items() if k != "grad_norm"}
    chex.assert_trees_all_close({k: metrics4[k] for k in forward}, forward, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state4.variables, state1.variables, rtol=1e-4, atol=1e-5)
    if method == "none":
        chex.assert_trees_all_close(metrics4["grad_norm"], metrics1["grad_norm"], rtol=1e-5)
        chex.assert_trees_all_close(state4.params, state1.params, rtol=1e-4, atol=1e-6)


def test_loss_decreases_without_recompiling(tiny_setup, sharded_step):
    _, _, _, state, batches = tiny_setup
    mesh = sharding.make_mesh()
    state = sharding.replicate(_copy(state), mesh)
    losses = []
    for index in range(30):
        state, metrics = sharded_step(
            state, sharding.shard_batch(batches(index), mesh), jax.random.key(2)
        )
        losses.append(float(metrics["time_mse"] + metrics["tf_mse"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert int(state.step) == 30


def test_gradients_reach_encoder_but_not_codebook(tiny_setup, gunpoint):
    model, _, _, state, _ = tiny_setup
    x = jnp.asarray(gunpoint.train.x[:8])
    config = config_lib.load_config_file("stage1_vibcreg:tiny").ssl

    def ssl_only(params):
        outputs, _ = model.apply(
            {"params": params, **state.variables},
            x,
            x * 1.1,
            train=True,
            mutable=["batch_stats", "vq"],
        )
        return stage1.ssl_loss(config, outputs["proj"], outputs["proj_aug"])[0]

    grads = jax.grad(ssl_only)(state.params)
    encoder_norm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads["encoder"]))
    assert encoder_norm > 0  # through the straight-through estimator and the augmented view
    decoder_norm = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads["decoder"]))
    assert decoder_norm == 0  # the SSL loss does not involve the decoder
    assert "vq" in state.variables and "quantizer" not in state.params


def test_tokenize_and_decode_shapes(tiny_setup, gunpoint):
    model, _, _, state, _ = tiny_setup
    variables = {"params": state.params, **state.variables}
    x = jnp.asarray(gunpoint.test.x[:4])
    tokens = model.apply(variables, x, method=VQVAE.tokenize)
    chex.assert_shape(tokens, (4, 45))
    assert tokens.dtype == jnp.int32 and int(tokens.max()) < model.codebook_size
    series = model.apply(variables, tokens, method=VQVAE.decode_tokens)
    chex.assert_shape(series, (4, 150, 1))
    np.testing.assert_allclose(
        series, model.apply(variables, x, method=VQVAE.reconstruct), atol=1e-5
    )


def test_end_to_end_artifacts(tiny_experiment):
    run = tiny_experiment / "stage1"
    assert (run / "config.json").is_file() and (run / "checkpoints" / "8").is_dir()
    records = [r for r in _metrics(run) if "eval/time_mse" in r]
    assert records and "eval/svm_accuracy" in records[-1] and "eval/knn_accuracy" in records[-1]
    assert list((run / "plots").glob("reconstruction_*.png"))
    assert list((run / "tensorboard").iterdir())


def _metrics(run):
    from ssl_vqvae.metric_log import read_metrics

    return read_metrics(run)


def test_resume_continues_and_restores_state_exactly(tiny_experiment, tmp_path, capsys):
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_experiment / "stage1", workdir / "stage1")
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.train.num_steps = 12
    final = stage1.train_and_evaluate(config, str(workdir))
    assert "resumed from step 8" in capsys.readouterr().out
    assert int(final.step) == 12
    steps = [r["step"] for r in _metrics(workdir / "stage1") if "train/loss" in r]
    assert steps == [4, 8, 12]
    restored = artifacts.load_model(workdir / "stage1", sharding.make_mesh())
    assert restored.step == 12
    chex.assert_trees_all_equal(
        jax.device_get(restored.variables), jax.device_get(final.model_variables())
    )


def test_bad_config_values_fail_clearly(tmp_path):
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.ssl.method = "simsiam"
    with pytest.raises(ValueError, match="ssl.method='simsiam'"):
        stage1.train_and_evaluate(config, str(tmp_path))
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.ssl.augmentations = "warp,jitter"
    with pytest.raises(ValueError, match="jitter"):
        stage1.train_and_evaluate(config, str(tmp_path))
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.data.dataset = "NoSuchSet"
    with pytest.raises(FileNotFoundError, match="'NoSuchSet' not found"):
        stage1.train_and_evaluate(config, str(tmp_path))
