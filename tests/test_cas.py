"""CAS pieces: synthetic class counts, the val_acc_ema statistic and the FCN training loop."""

import dataclasses
import json

import chex
import jax
import numpy as np
import pytest

from ssl_vqvae import metric_log, sharding
from ssl_vqvae.checkpoints import Checkpointer
from ssl_vqvae.evaluation import cas, classifier, fcn_cache
from ssl_vqvae.evaluation.fcn_outputs import fcn_outputs

# ----------------------------------------------------------------------------- class counts


@pytest.mark.parametrize(
    "real_counts",
    [(24, 26), (292, 177, 10, 2, 19), (3, 5, 7, 1, 4, 5), (10,) * 60],
    ids=["GunPoint", "ECG5000", "Symbols-like", "ShapesAll"],
)
def test_small_train_sets_are_scaled_to_about_1000_keeping_proportions(real_counts):
    labels = np.repeat(np.arange(len(real_counts)), real_counts)
    np.random.default_rng(0).shuffle(labels)
    counts = cas.synthetic_class_counts(labels, len(real_counts))

    total = sum(real_counts)
    # The reference: Python's round of count * (1000 / N), class by class.
    np.testing.assert_array_equal(counts, [round(c * 1000 / total) for c in real_counts])
    proportions = np.asarray(real_counts) / total
    np.testing.assert_allclose(counts, 1000 * proportions, atol=0.5)
    assert abs(counts.sum() - 1000) <= len(real_counts) / 2
    assert counts.dtype == np.int64


def test_large_train_sets_keep_their_counts():
    real_counts = (600, 300, 100, 8926 - 1000)
    labels = np.repeat(np.arange(4), real_counts)
    np.testing.assert_array_equal(cas.synthetic_class_counts(labels, 4), real_counts)


def test_classes_absent_from_train_get_no_samples():
    np.testing.assert_array_equal(
        cas.synthetic_class_counts(np.array([0, 0, 2, 2]), 3, min_total=8), [4, 0, 4]
    )


@pytest.mark.parametrize(
    "labels, num_classes, match",
    [
        (np.array([0, 3]), 3, "class ids"),
        (np.array([], int), 2, "non-empty"),
        (np.array([[0, 1]]), 2, "1-D"),
    ],
)
def test_class_counts_reject_bad_labels(labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        cas.synthetic_class_counts(labels, num_classes)


# ----------------------------------------------------------------------------- val_acc_ema


def test_ema_matches_the_closed_form():
    accuracies = np.random.default_rng(1).uniform(size=37)
    rate, start = 0.01, 0.3
    weights = rate * (1 - rate) ** np.arange(len(accuracies))[::-1]
    expected = np.sum(weights * accuracies) + (1 - rate) ** len(accuracies) * start
    np.testing.assert_allclose(classifier.ema_update(start, accuracies, rate), expected, rtol=1e-12)
    assert classifier.ema_update(0.0, []) == 0.0


def test_batch_accuracies_weigh_every_batch_equally():
    correct = np.array([1, 1, 0, 1, 0, 0, 1], bool)
    np.testing.assert_allclose(classifier.batch_accuracies(correct, 3), [2 / 3, 1 / 3, 1.0])


def test_validator_loop_state_round_trips():
    validator = classifier.Validator(None, None, None, 8, None)
    assert validator.loop_state() == {"val_acc_ema": 0.0}
    validator.restore_loop_state({"val_acc_ema": 0.37})
    assert validator.ema == 0.37 and validator.loop_state() == {"val_acc_ema": 0.37}


# ----------------------------------------------------------------------------- training


NUM_CLASSES, LENGTH = 3, 24


def _toy_split(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes differ in frequency, so an FCN can separate them."""
    y = rng.integers(0, NUM_CLASSES, num)
    t = np.arange(LENGTH)
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t / LENGTH) + 0.1 * rng.standard_normal((num, LENGTH))
    return x[..., None].astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    train, test = _toy_split(rng, 16), _toy_split(rng, 12)
    workdir = tmp_path_factory.mktemp("fcn")
    run = classifier.fit_classifier(
        *train, *test, NUM_CLASSES, workdir, num_epochs=3, seed=0, description="test fcn"
    )
    return run, train, test, workdir


def test_logged_val_acc_ema_follows_the_recurrence(trained):
    run, _, _, workdir = trained
    evals = [r for r in metric_log.read_metrics(workdir) if classifier.EMA_METRIC in r]
    assert [r["step"] for r in evals] == [1, 2, 3]  # 16 series, batch 16: one step per epoch
    # 12 test series fit in one validation batch, so each validation adds one accuracy.
    ema = 0.0
    for record in evals:
        ema = 0.01 * record["eval/accuracy"] + 0.99 * ema
        np.testing.assert_allclose(record[classifier.EMA_METRIC], ema, rtol=1e-12)
    np.testing.assert_allclose(run.val_acc_ema, ema, rtol=1e-12)
    assert run.test_accuracy == evals[-1]["eval/accuracy"]
    # The EMA travels with each checkpoint, so a resumed run continues it exactly.
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        assert checkpointer.read_stored(3)["record"]["evaluator"] == {"val_acc_ema": ema}
    finally:
        checkpointer.close()


def test_summary_and_outputs(trained):
    run, _, test, workdir = trained
    summary = json.loads((workdir / fcn_cache.SUMMARY_FILE).read_text())
    assert summary["num_epochs"] == 3 and summary["num_steps"] == 3
    assert summary["test_accuracy"] == run.test_accuracy
    mesh = sharding.make_mesh()
    probs, features = fcn_outputs(run.model, run.variables, test[0], mesh)
    chex.assert_shape(probs, (12, NUM_CLASSES))
    chex.assert_shape(features, (12, 128))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.mean(probs.argmax(axis=1) == test[1]), run.test_accuracy)


def test_finished_run_is_restored_not_retrained(trained):
    run, train, test, workdir = trained
    lines = (workdir / "metrics.jsonl").read_text()
    again = classifier.fit_classifier(*train, *test, NUM_CLASSES, workdir, num_epochs=3, seed=0)
    assert (workdir / "metrics.jsonl").read_text() == lines
    assert again.test_accuracy == run.test_accuracy and again.model == run.model
    chex.assert_trees_all_equal(jax.device_get(again.variables), jax.device_get(run.variables))


def test_folder_of_other_settings_is_refused(trained):
    _, train, test, workdir = trained
    with pytest.raises(ValueError, match="num_epochs"):
        classifier.fit_classifier(*train, *test, NUM_CLASSES, workdir, num_epochs=4)
    with pytest.raises(ValueError, match="data_digest"):
        classifier.fit_classifier(
            *train, test[0] + 1.0, test[1], NUM_CLASSES, workdir, num_epochs=3
        )


def test_bad_labels_are_rejected(tmp_path):
    x, y = _toy_split(np.random.default_rng(2), 8)
    with pytest.raises(ValueError, match="y_test"):
        classifier.fit_classifier(x, y, x, y + NUM_CLASSES, NUM_CLASSES, tmp_path, num_epochs=1)


def test_cached_synthetic_set_is_keyed_by_the_decoding_settings(tiny_experiment):
    """A changed sampling setting must not reuse a synthetic set sampled under the old one."""
    from ssl_vqvae.api import Experiment

    experiment = Experiment.load(tiny_experiment, require_prior=True)
    counts = np.array([3, 5])
    base = cas._generator_key(experiment, counts, seed=0)
    assert cas._generator_key(experiment, counts, seed=0) == base
    assert cas._generator_key(experiment, counts, seed=1) != base
    settings = experiment.stage2_settings
    for field, value in (("num_steps", 7), ("choice_temperature", 2.0), ("guidance_scale", 2.0)):
        sampling = dataclasses.replace(settings.sampling, **{field: value})
        changed = dataclasses.replace(
            experiment, stage2_settings=dataclasses.replace(settings, sampling=sampling)
        )
        assert cas._generator_key(changed, counts, seed=0) != base, field
