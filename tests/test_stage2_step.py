"""The stage-2 train step (SPEC §4.1, §4.4): class dropout, the frozen tokenizer as target
source, learning without retracing, and the sharded step equal to the single-device one."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_vqvae import config_lib, data, sharding, stage1, stage2, train_state, validation
from ssl_vqvae.vqvae import VQVAE

BATCH = 16
# Plain SGD: the update is linear in the gradient, so sharded and single-device steps can be
# compared to roundoff (Adam would blow roundoff-level gradients up to +-lr).
OPTIMIZER = optax.sgd(0.5)


@pytest.fixture(scope="module")
def setup():
    """A tiny tokenizer, the tiny full-embedding prior, its initial state and a batch.

    The freshly initialised codebook would send every latent to one code; replacing it by 16
    encoder latents of the batch (eval mode) gives varied targets.
    """
    gunpoint = data.load_ucr("GunPoint")
    settings = validation.validate(config_lib.load_config_file("stage1_vqvae:tiny"))
    tokenizer = stage1.build_model(settings, gunpoint.length, 1)
    x = jnp.asarray(gunpoint.train.x[:BATCH])
    example = jax.ShapeDtypeStruct(x.shape, x.dtype)
    init = train_state.module_init(tokenizer, optax.sgd(0.0), example, train=False)
    state = init(jax.random.key(0))
    variables = {"params": state.params, **jax.device_get(state.variables)}
    _, z = tokenizer.apply(variables, x, method=lambda m, x: m.encode(x, train=False))
    z = np.asarray(z).reshape(-1, tokenizer.hidden_dim)
    picks = np.random.default_rng(0).choice(len(z), tokenizer.codebook_size, replace=False)
    variables["vq"]["quantizer"]["codebook"] = jnp.asarray(z[picks])
    prior_settings = validation.validate(config_lib.load_config_file("stage2_maskgit:tiny")).prior
    variant = stage2.resolve_variant(prior_settings, "vibcreg")  # the prior of the SSL runs
    prior = stage2.build_prior(prior_settings, tokenizer, gunpoint.num_classes, variant)
    codebook = tokenizer.apply(variables, method=VQVAE.codebook)
    prior_state = stage2.init_prior(prior, OPTIMIZER)(jax.random.key(1), codebook)
    batch = {"x": gunpoint.train.x[:BATCH], "y": gunpoint.train.y[:BATCH].astype(np.int32)}
    return tokenizer, variables, prior, prior_state, batch


def _copy(tree):
    """A private copy: the compiled step donates (deletes) the state it is given."""
    return jax.tree.map(jnp.copy, tree)


def _raw_step(setup, **prior_overrides):
    tokenizer, _, prior, _, _ = setup
    config = config_lib.load_config_file("stage2_maskgit:tiny")
    config.prior.update(prior_overrides)
    settings = validation.validate(config).prior
    convention = stage2.masking_convention(settings.masking, prior.variant)
    loss_fn = stage2.make_loss_fn(prior, tokenizer, settings, convention)
    return train_state.make_train_step(loss_fn, OPTIMIZER)


def _spied_inputs(monkeypatch, setup, batch, num_steps, **prior_overrides):
    """Runs the raw step eagerly; returns the (tokens, class_ids) given to the prior loss."""
    seen = []

    def spy(prior, params, tokens, class_ids, rng, convention, *, train):
        seen.append((np.asarray(tokens), np.asarray(class_ids)))
        return jnp.zeros(tokens.shape[0])

    monkeypatch.setattr(stage2, "prior_loss", spy)
    _, variables, _, state, _ = setup
    step = _raw_step(setup, **prior_overrides)
    for _ in range(num_steps):
        state, _ = step(state, batch, jax.random.key(3), variables)
    return seen


@pytest.mark.parametrize("p", [0.2, 0.0])
def test_class_dropout_rate_and_null_id(setup, monkeypatch, p):
    _, _, prior, _, _ = setup
    labels = np.random.default_rng(0).integers(0, prior.num_classes, 4096).astype(np.int32)

    def no_tokenizer(tokenizer, variables, x, temperature, rng):
        """Only the class ids matter here: skip the tokenizer on this large batch."""
        return jnp.zeros((x.shape[0], prior.num_tokens), jnp.int32)

    monkeypatch.setattr(stage2, "tokenize", no_tokenizer)
    batch = {"x": np.zeros((len(labels), 1, 1), np.float32), "y": labels}
    seen = _spied_inputs(monkeypatch, setup, batch, num_steps=2, p_unconditional=p)
    drops = []
    for _, class_ids in seen:
        dropped = class_ids != labels
        np.testing.assert_array_equal(class_ids[dropped], prior.num_classes)  # the null id
        drops.append(dropped)
    if p == 0:
        assert not np.any(drops)
        return
    sigma = np.sqrt(p * (1 - p) / len(labels))  # binomial standard error, ~0.006
    for dropped in drops:
        assert abs(dropped.mean() - p) < 4.5 * sigma, dropped.mean()
        for label in range(prior.num_classes):  # the same rate in every class
            in_class = labels == label
            assert abs(dropped[in_class].mean() - p) < 4.5 * sigma * np.sqrt(
                len(labels) / in_class.sum()
            )
    assert not np.array_equal(drops[0], drops[1])  # a fresh draw every step


def test_targets_are_eval_mode_codes_of_the_frozen_tokenizer(setup, monkeypatch):
    tokenizer, variables, _, _, batch = setup
    ((tokens, _),) = _spied_inputs(
        monkeypatch, setup, batch, num_steps=1, token_sample_temperature=0.0
    )
    x = jnp.asarray(batch["x"])
    expected = tokenizer.apply(variables, x, method=VQVAE.tokenize)
    np.testing.assert_array_equal(tokens, expected)
    assert len(np.unique(tokens)) > 4  # varied targets
    # Train-mode BatchNorm (batch statistics) would give other codes.
    train_mode = tokenizer.apply(
        variables,
        x,
        method=lambda m, x: m.quantize(m.encode(x, train=True)[1], train=False).indices,
        mutable=["batch_stats"],
    )[0].reshape(BATCH, -1)
    assert np.mean(np.asarray(train_mode) != tokens) > 0.1


@pytest.fixture(scope="module")
def four_device_step(setup):
    """The step compiled over the 4-device mesh, failing if it is ever traced twice.

    Nearest-code targets: at temperature 1 this untrained tokenizer's codes are near uniform
    draws, which no prior can learn.
    """
    step = chex.assert_max_traces(_raw_step(setup, token_sample_temperature=0.0), n=1)
    return train_state.compile_step(step, sharding.make_mesh(), setup[1])


def test_loss_falls_without_retrace_and_tokenizer_stays_frozen(setup, four_device_step):
    _, variables, _, state, batch = setup
    before = jax.device_get(variables)
    mesh = sharding.make_mesh()
    state = sharding.replicate(_copy(state), mesh)
    losses = []
    for _ in range(25):
        state, metrics = four_device_step(
            state, sharding.shard_batch(batch, mesh), jax.random.key(2)
        )
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    assert int(state.step) == 25 and state.variables == {}
    assert set(before) == {"params", "batch_stats", "vq"}
    chex.assert_trees_all_equal(jax.device_get(variables), before)


def test_one_step_on_four_devices_equals_one_device(setup, four_device_step):
    _, variables, _, state, batch = setup
    assert jax.device_count() == 4
    results = []
    for devices, step in [
        (jax.devices(), four_device_step),
        (jax.devices()[:1], None),
    ]:
        mesh = sharding.make_mesh(devices)
        step = step or train_state.compile_step(
            _raw_step(setup, token_sample_temperature=0.0), mesh, variables
        )
        args = (sharding.replicate(_copy(state), mesh), sharding.shard_batch(batch, mesh))
        results.append(jax.device_get(step(*args, jax.random.key(4))))
    (state4, metrics4), (state1, metrics1) = results
    chex.assert_trees_all_close(metrics4, metrics1, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state4.params, state1.params, rtol=1e-5, atol=1e-5)
    assert float(metrics1["grad_norm"]) > 0.1


def test_initialisation_key_is_rbg_deterministic_and_seed_dependent():
    """StateFactory initialises from an "rbg" key made from the run's threefry key: the same seed
    gives the same parameters, another seed others, at the scale the initialiser sets."""
    example = jax.ShapeDtypeStruct((2, 256), jnp.float32)

    def factory(seed: int) -> train_state.StateFactory:
        init = train_state.module_init(nn.Dense(64), optax.sgd(0.1), example)
        return train_state.StateFactory(init, jax.random.key(seed))

    key = train_state.initialisation_key(jax.random.key(3))
    assert jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0, impl="rbg"))
    mesh = sharding.make_mesh()
    first, again, other = (factory(s).initialise(mesh).params for s in (3, 3, 4))
    kernel = np.asarray(first["kernel"])
    np.testing.assert_array_equal(kernel, np.asarray(again["kernel"]))
    assert not np.array_equal(kernel, np.asarray(other["kernel"]))
    # lecun_normal: std 1 / sqrt(fan_in) = 1 / 16; 16384 draws put the estimate within ~1 %.
    np.testing.assert_allclose(kernel.std(), 1 / 16, rtol=0.05)
    chex.assert_trees_all_equal_shapes(jax.eval_shape(lambda: first), factory(3).abstract().params)
