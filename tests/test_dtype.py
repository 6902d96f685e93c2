"""Mixed precision (`model.dtype`, `prior.dtype`): bfloat16 compute, float32 params and losses.

Tolerances. bfloat16 keeps 8 significand bits: one rounding is off by up to 2^-9 ~ 2e-3
relative (one ulp, 2^-8 ~ 3.9e-3). Each tolerance below is about 3x the worst relative error
measured on these tiny configs (GunPoint batches, 5 seeds), stated beside it:
- reconstruction and commitment terms: averages of many squared errors, ~6e-4 measured;
- SSL terms: a few percent, because they are differences of near-equal numbers (1 - C_ii,
  z1 - z2, 1 - sqrt(var)) of projections computed in bfloat16 through the encoder;
- the prior's logits: ~6e-3 in relative norm, about three roundings deep (the trunk's matmuls).
Gradients are not compared: with SSL they are discontinuous at roundoff level (max-pooling of
tied codewords routes the gradient to one of the ties), so even in float32 a 1e-6 relative
change of the input moves the VIbCReg gradient by ~36 % (relative norm). Training is checked
instead: a few bfloat16 steps lower each stage's loss.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_vqvae import config_lib, data, pipeline, stage1, stage2, train_state, validation
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.errors import UserError
from ssl_vqvae.prior_objective import prior_loss
from ssl_vqvae.sampling import MaskingConvention
from ssl_vqvae.transformer import MaskGITTransformer
from ssl_vqvae.vqvae import VQVAE

BATCH = 16
RECON_TERMS = ("time_mse", "tf_mse", "aug_time_mse", "aug_tf_mse", "commit_loss")
SSL_TERMS = ("ssl_loss", "vibcreg_invariance", "vibcreg_variance", "vibcreg_covariance")
RECON_RTOL = 2e-3  # measured <= 6.3e-4
SSL_RTOL = 0.15  # measured <= 5.4e-2 (VIbCReg's variance hinge); Barlow Twins 4.8e-2
LOSS_RTOL = 1e-2  # the total stage-1 loss; measured <= 3.1e-3
CODE_RTOL = 2e-2  # perplexity, moved by reassigned tokens; measured <= 5.6e-3
MAX_REASSIGNED = 0.01  # fraction of tokens whose nearest code changes; measured <= 1 in 720
LOGITS_RTOL = 2e-2  # ||bf16 - f32|| / ||f32|| of the prior's logits; measured <= 5.8e-3
PRIOR_LOSS_RTOL = 2e-3  # per-sample masked-token cross-entropy; measured <= 6.4e-4


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a)


def _dtypes(tree):
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)}


def _stage1_settings(dtype):
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    config.model.dtype = dtype
    return validation.validate(config)


@pytest.fixture(scope="module")
def gunpoint():
    return data.load_ucr("GunPoint")


@pytest.fixture(scope="module")
def tokenizers(gunpoint):
    """The tiny VIbCReg tokenizer in both dtypes, float32-initialised variables and a batch."""
    models = {
        dtype: stage1.build_model(_stage1_settings(dtype), gunpoint.length, 1)
        for dtype in ("float32", "bfloat16")
    }
    batch = pipeline.BatchRows(gunpoint.train, BATCH, 0, ("window_warp", "amplitude_resize"))(0)
    batch = {key: jnp.asarray(value) for key, value in batch.items()}
    init = jax.jit(functools.partial(models["float32"].init, train=False))
    return models, init(jax.random.key(0), batch["x"]), batch


def _loss_fn(model):
    """The trainer's `(params, variables, batch, rng) -> (loss, (metrics, variables))`."""
    return stage1.make_loss_fn(model, _stage1_settings(model.dtype).ssl)


def _grad_args(variables, batch):
    """`_loss_fn` arguments: params, the mutable collections, the batch and an rng."""
    rest = {key: value for key, value in variables.items() if key != "params"}
    return variables["params"], rest, batch, jax.random.key(1)


def test_float32_is_the_default_and_never_rounds_to_bfloat16(tokenizers):
    models, variables, batch = tokenizers
    assert VQVAE(length=150).dtype == "float32"
    assert MaskGITTransformer(codebook_size=4, num_tokens=3, num_classes=2).dtype == "float32"
    assert config_lib.load_config_file("stage1_vqvae").model.dtype == "float32"
    assert config_lib.load_config_file("stage2_maskgit").prior.dtype == "float32"
    jaxprs = {}
    for dtype, model in models.items():
        grad_fn = jax.value_and_grad(_loss_fn(model), has_aux=True)
        jaxprs[dtype] = str(jax.make_jaxpr(grad_fn)(*_grad_args(variables, batch)))
    assert "bf16" not in jaxprs["float32"]
    assert "bf16" in jaxprs["bfloat16"]
    assert _dtypes(variables) == {"float32"}


def test_bfloat16_params_and_outputs_are_float32_and_convolutions_bfloat16(tokenizers):
    models, variables, batch = tokenizers
    model = models["bfloat16"]
    # The same float32 variables whatever the compute dtype: checkpoints load into either.
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), batch["x"]
    )
    assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == jax.tree.map(
        lambda a: (a.shape, a.dtype), variables
    )
    outputs, state = jax.eval_shape(
        lambda v: model.apply(
            v,
            batch["x"],
            batch["x_aug"],
            train=True,
            capture_intermediates=True,
            mutable=["intermediates", "batch_stats", "vq"],
        ),
        variables,
    )
    assert _dtypes(outputs) == {"float32", "int32"}
    assert _dtypes({k: v for k, v in state.items() if k != "intermediates"}) == {"float32"}
    captured = state["intermediates"]

    def dtype_of(*path):
        node = captured
        for key in path:
            node = node[key]
        return {str(leaf.dtype) for leaf in jax.tree.leaves(node["__call__"])}

    for path in [
        ("encoder", "DownBlock_0", "Conv_0"),
        ("encoder", "ResBlock_0", "Conv_1"),
        ("encoder", "BatchNorm_0"),  # computed in float32, handed back in bfloat16
        ("decoder", "UpsampleConv_1"),
        ("projector", "Dense_2"),
    ]:
        assert dtype_of(*path) == {"bfloat16"}, path
    for path in [("decoder",), ("projector",), ("projector", "IterNorm_0")]:
        assert dtype_of(*path) == {"float32"}, path
    assert dtype_of("quantizer") == {"float32", "int32"}


def test_bfloat16_stage1_loss_terms_match_float32(tokenizers):
    models, variables, batch = tokenizers
    args = _grad_args(variables, batch)
    results, tokens = {}, {}
    for dtype, model in models.items():
        grad_fn = jax.value_and_grad(_loss_fn(model), has_aux=True)
        assert _dtypes(jax.eval_shape(grad_fn, *args)) == {"float32"}  # loss, metrics, grads

        @jax.jit
        def forward(params, rest, batch, rng, model=model):
            metrics = _loss_fn(model)(params, rest, batch, rng)[1][0]
            return metrics, model.apply({"params": params, **rest}, batch["x"], method="tokenize")

        results[dtype], tokens[dtype] = forward(*args)
    reference, metrics = results["float32"], results["bfloat16"]
    errors = {key: _rel(reference[key], metrics[key]) for key in reference}
    print({key: f"{value:.1e}" for key, value in errors.items()})
    for keys, rtol in (
        (RECON_TERMS, RECON_RTOL),
        (SSL_TERMS, SSL_RTOL),
        (("loss",), LOSS_RTOL),
        (("perplexity", "codebook_usage"), CODE_RTOL),
    ):
        for key in keys:
            assert errors[key] <= rtol, (key, errors[key])
    assert np.mean(tokens["float32"] != tokens["bfloat16"]) <= MAX_REASSIGNED


def test_bfloat16_train_steps_lower_the_stage1_loss(tokenizers, gunpoint):
    models, variables, _ = tokenizers
    optimizer = optax.adam(3e-3)
    batches = pipeline.BatchRows(gunpoint.train, BATCH, 0, ("window_warp", "amplitude_resize"))
    state = train_state.create_train_state(variables, optimizer)
    step = jax.jit(train_state.make_train_step(_loss_fn(models["bfloat16"]), optimizer))
    losses = []
    for index in range(12):
        state, metrics = step(state, batches(index), jax.random.key(2))
        losses.append(float(metrics["time_mse"] + metrics["tf_mse"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert _dtypes(state.params) == _dtypes(state.opt_state) - {"int32"} == {"float32"}


def _priors(tokenizer, variant):
    config = config_lib.load_config_file("stage2_maskgit:tiny")
    priors = {}
    for dtype in ("float32", "bfloat16"):
        config.prior.dtype = dtype
        settings = validation.validate(config).prior
        priors[dtype] = stage2.build_prior(settings, tokenizer, 2, variant)
    return priors


@pytest.mark.parametrize("variant", ["token_index", "full_embedding"])
def test_bfloat16_prior_logits_and_loss_match_float32(tokenizers, variant):
    priors = _priors(tokenizers[0]["float32"], variant)
    num_tokens, codebook_size = priors["float32"].num_tokens, priors["float32"].codebook_size
    token_rng, class_rng = jax.random.split(jax.random.key(3))
    # Ids up to codebook_size: the mask id is among the inputs; class 2 is the null class.
    tokens = jax.random.randint(token_rng, (BATCH, num_tokens), 0, codebook_size + 1)
    class_ids = jax.random.randint(class_rng, (BATCH,), 0, 3)
    params = priors["float32"].init(jax.random.key(4), tokens, class_ids, train=False)["params"]
    assert _dtypes(params) == {"float32"}
    same = priors["bfloat16"].init(jax.random.key(4), tokens, class_ids, train=False)["params"]
    assert jax.tree.all(jax.tree.map(np.array_equal, same, params))

    logits = {
        dtype: prior.apply({"params": params}, tokens, class_ids, train=False)
        for dtype, prior in priors.items()
    }
    assert logits["bfloat16"].dtype == jnp.float32
    error = _rel(logits["float32"], logits["bfloat16"])
    assert 0 < error <= LOGITS_RTOL, error
    default_apply = functools.partial(priors["float32"].apply, train=False)
    assert "bf16" not in str(jax.make_jaxpr(default_apply)({"params": params}, tokens, class_ids))

    _, state = priors["bfloat16"].apply(
        {"params": params},
        tokens,
        class_ids,
        train=False,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    for name in ("proj_in", "block_0", "final_norm", "proj_out"):
        assert captured[name]["__call__"][0].dtype == jnp.bfloat16, name
    for name in ("emb_norm", "head_dense", "head_norm"):
        assert captured[name]["__call__"][0].dtype == jnp.float32, name

    targets = jnp.minimum(tokens, codebook_size - 1)
    losses = {
        dtype: prior_loss(
            prior,
            params,
            targets,
            class_ids,
            jax.random.key(5),
            MaskingConvention.THESIS_REPLACE,
            train=True,
        )
        for dtype, prior in priors.items()
    }
    assert losses["bfloat16"].dtype == jnp.float32
    assert _rel(losses["float32"], losses["bfloat16"]) <= PRIOR_LOSS_RTOL


def test_bfloat16_train_steps_lower_the_prior_loss(tokenizers):
    prior = _priors(tokenizers[0]["float32"], "full_embedding")["bfloat16"]
    # Learnable targets: token n is n mod K, the same for every series.
    tokens = jnp.tile(jnp.arange(prior.num_tokens) % prior.codebook_size, (BATCH, 1))
    batch = {"tokens": tokens.astype(jnp.int32), "y": jnp.arange(BATCH, dtype=jnp.int32) % 2}

    def loss_fn(params, variables, batch, rng):
        losses = prior_loss(
            prior, params, batch["tokens"], batch["y"], rng, MaskingConvention.STANDARD, train=True
        )
        return jnp.mean(losses), ({}, variables)

    optimizer = optax.adam(3e-3)
    variables = prior.init(jax.random.key(0), batch["tokens"], batch["y"], train=False)
    state = train_state.create_train_state(variables, optimizer)
    step = jax.jit(train_state.make_train_step(loss_fn, optimizer))
    losses = []
    for _ in range(12):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert metrics["loss"].dtype == jnp.float32
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert _dtypes(state.params) == {"float32"}


def test_dtype_is_validated_and_recorded_in_the_model_spec():
    for name, field in (("stage1_vqvae", "model"), ("stage2_maskgit", "prior")):
        config = config_lib.load_config_file(name)
        config[field].dtype = "float16"
        with pytest.raises(UserError, match=f"{field}.dtype='float16'"):
            validation.validate(config)
    with pytest.raises(ValueError, match="dtype"):
        VQVAE(length=150, dtype="float16").init(
            jax.random.key(0), jnp.zeros((2, 150, 1)), train=False
        )
    with pytest.raises(ValueError, match="dtype"):
        MaskGITTransformer(codebook_size=4, num_tokens=3, num_classes=2, dtype="float16")
    model = VQVAE(length=150, dtype="bfloat16")
    spec = ModelSpec.of(model, DataInfo("GunPoint", 150, 1, 2, 0.0, 1.0))
    restored = ModelSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert restored.arguments["dtype"] == "bfloat16"
    assert restored.build() == model
