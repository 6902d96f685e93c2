"""`train.reference_probe_pass`: the reference's state-mutating final probe (SPEC §7.12)."""

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_vqvae import artifacts, config_lib, data, sharding, stage1, train_state, training
from ssl_vqvae.artifacts import DataInfo, ModelSpec
from ssl_vqvae.data import Split
from ssl_vqvae.input_pipeline import TrainBatches
from ssl_vqvae.metric_log import read_metrics
from ssl_vqvae.vqvae import MUTABLE_COLLECTIONS

TOY_SPEC = ModelSpec("FCN", {"num_classes": 2}, DataInfo("toy", 1, 1, 2, 0.0, 1.0))


def _toy_step(state: train_state.TrainState, batch, rng):
    del rng
    new_state = state.replace(step=state.step + 1, params=state.params + jnp.mean(batch["x"]))
    return new_state, {"loss": jnp.mean(batch["x"])}


def _finalize(state: train_state.TrainState):
    return state.replace(variables={"stats": state.variables["stats"] + 100.0}), {"extra": 1.0}


@pytest.mark.parametrize("with_finalize", [False, True])
def test_fit_saves_and_returns_the_finalized_state(tmp_path, with_finalize):
    mesh = sharding.make_mesh()
    split = Split(np.arange(8, dtype=np.float32).reshape(8, 1, 1), np.zeros(8, np.int32))
    state = train_state.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jnp.zeros(()),
        opt_state=jnp.zeros(()),
        variables={"stats": jnp.ones(3)},
    )
    loop = training.LoopConfig(num_steps=3, log_every=1, eval_every=100, checkpoint_every=2)
    final = training.fit(
        workdir=tmp_path,
        factory=train_state.StateFactory(lambda rng: state, jax.random.key(0)),
        spec=TOY_SPEC,
        train_step=_toy_step,
        batches=TrainBatches(split, 4, seed=0, mesh=mesh),
        mesh=mesh,
        rng=jax.random.key(0),
        loop=loop,
        finalize=_finalize if with_finalize else None,
    )
    expected = 101.0 if with_finalize else 1.0
    np.testing.assert_array_equal(final.variables["stats"], np.full(3, expected))
    assert int(final.step) == 3
    restored = artifacts.load_model(tmp_path, mesh).variables
    chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(final.model_variables()))
    logged = [r for r in read_metrics(tmp_path) if "eval/extra" in r]
    assert [r["step"] for r in logged] == ([3] if with_finalize else [])


def _encode_and_quantize(model, x):
    return model.quantize(model.encode(x, train=True)[1], train=True).indices


@pytest.fixture(scope="module")
def on_and_off(tiny_experiment, tmp_path_factory):
    """(workdir of a run with the option on, the tiny experiment's stage-1 folder: option off).

    The on-run resumes the off-run from its step-4 checkpoint, so up to the final pass both
    trained the same steps on the same batches. Its stored config says the option was on from
    the start (the workdir guard refuses to switch it in a resumed run).
    """
    workdir = tmp_path_factory.mktemp("reference_probe_pass")
    shutil.copytree(tiny_experiment / "stage1", workdir / "stage1")
    shutil.rmtree(workdir / "stage1" / "checkpoints" / "8")
    stored_path = workdir / "stage1" / "config.json"
    stored = json.loads(stored_path.read_text())
    stored["train"]["reference_probe_pass"] = True
    stored_path.write_text(json.dumps(stored, indent=2) + "\n")
    config = config_lib.load_config_file("stage1_vibcreg:tiny")
    assert not config.train.reference_probe_pass
    config.train.reference_probe_pass = True
    stage1.train_and_evaluate(config, str(workdir))
    return workdir / "stage1", tiny_experiment / "stage1"


def test_saved_tokenizer_holds_the_train_then_test_pass(on_and_off):
    on_dir, off_dir = on_and_off
    mesh = sharding.make_mesh()
    loaded_on, loaded_off = artifacts.load_model(on_dir, mesh), artifacts.load_model(off_dir, mesh)
    model = loaded_on.module
    on, off = jax.device_get(loaded_on.variables), jax.device_get(loaded_off.variables)
    config = json.loads((on_dir / "config.json").read_text())
    dataset = data.load_ucr(config["data"]["dataset"])

    # The train-mode pass, restated: encoder + quantiser on train then test batches, in order.
    apply = jax.jit(
        lambda variables, x: model.apply(
            variables, x, method=_encode_and_quantize, mutable=list(MUTABLE_COLLECTIONS)
        )
    )
    expected = dict(off)
    batch_size = config["data"]["batch_size"]
    for split in (dataset.train, dataset.test):
        for start in range(0, len(split), batch_size):
            _, updated = apply(expected, split.x[start : start + batch_size])
            expected.update(jax.device_get(updated))

    chex.assert_trees_all_close(on["params"], off["params"], rtol=1e-6, atol=1e-7)
    for name in MUTABLE_COLLECTIONS:
        chex.assert_trees_all_close(on[name], expected[name], rtol=1e-5, atol=1e-6)
    # The pass moved the codebook and the encoder's BN statistics, not the decoder's.
    on_codebook = on["vq"]["quantizer"]["codebook"]
    assert np.abs(on_codebook - off["vq"]["quantizer"]["codebook"]).max() > 1e-2
    on_bn, off_bn = on["batch_stats"], off["batch_stats"]
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), on_bn["encoder"], off_bn["encoder"])
    assert max(jax.tree.leaves(moved)) > 1e-3
    chex.assert_trees_all_close(on_bn["decoder"], off_bn["decoder"], rtol=1e-6, atol=1e-7)

    records = [r for r in read_metrics(on_dir) if "eval/train_mode_svm_accuracy" in r]
    assert [r["step"] for r in records] == [8]
    assert 0 <= records[0]["eval/train_mode_knn_accuracy"] <= 1
