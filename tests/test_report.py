"""report.md: notes on numbers that cannot be read as they stand, paths relative to the workdir."""

import pathlib

import pytest

from ssl_vqvae.evaluation import classifier, report


def _report(workdir: pathlib.Path, **overrides) -> dict:
    values = {
        "workdir": str(workdir),
        "dataset": "GunPoint",
        "ssl_method": "vibcreg",
        "augmentations": "warp",
        "seed": 1,
        "svm_accuracy": 0.8,
        "knn_accuracy": 0.7,
        "fid": 3.0,
        "is_mean": 1.6,
        "is_std": 0.1,
        "generated_class_fractions": [0.55, 0.45],
        "num_test": 150,
        "num_generated": 256,
        "eval_length": 150,
        "fcn_test_accuracy": 0.99,
        "fcn_epochs": 1000,
        "fcn_steps": 1000,
        "fcn_dir": str(pathlib.Path.home() / ".cache" / "ssl_vqvae" / "fcn" / "GunPoint"),
        "cas_accuracy": 0.9,
        "cas_val_acc_ema": 0.88,
        "cas_ema_batches": 1000,
        "cas_num_train": 1000,
        "cas_epochs": 1000,
        "cas_steps": 4000,
        "codebook_usage": 0.5,
        "token_perplexity": 7.0,
    }
    return {**values, **overrides}


def test_readable_numbers_get_no_notes(tmp_path):
    assert report.notes(_report(tmp_path)) == []


def test_is_of_one_with_an_accurate_fcn_says_the_samples_fall_in_one_class(tmp_path):
    note = report.notes(
        _report(tmp_path, is_mean=1.0, is_std=0.0, generated_class_fractions=[0.02, 0.98])
    )
    assert len(note) == 1
    assert (
        "IS 1.00 is about 1" in note[0] and "98% of the unconditional samples in class 1" in note[0]
    )
    # From a classifier that cannot tell the real classes apart, IS says nothing about the samples.
    (note,) = report.notes(_report(tmp_path, is_mean=1.0, fcn_test_accuracy=0.5))
    assert note.startswith("The FID/IS FCN classifies only 50% of the real test series")


@pytest.mark.parametrize("num_batches, noted", [(3, True), (229, True), (230, False)])
def test_cas_ema_note_names_the_batches_it_saw(tmp_path, num_batches, noted):
    found = report.notes(_report(tmp_path, cas_ema_batches=num_batches, cas_val_acc_ema=0.02))
    assert bool(found) == noted
    if noted:
        assert f"saw only {num_batches} validation batches" in found[0]
        assert "needs 230 batches" in found[0]


def test_ema_weight_matches_the_classifier_ema():
    accuracy = 0.8
    ema = classifier.ema_update(0.0, [accuracy] * 7)
    assert ema == pytest.approx(accuracy * report.ema_weight(7))


@pytest.mark.parametrize(
    "num_steps, per_epoch, every, num_test, batch",
    [(9, 2, 1, 150, 256), (40, 4, 10, 600, 256), (1, 1, 1, 10, 4)],
)
def test_ema_batches_counts_fit_validations(num_steps, per_epoch, every, num_test, batch):
    summary = {
        "num_steps": num_steps,
        "steps_per_epoch": per_epoch,
        "eval_every_epochs": every,
        "num_test": num_test,
        "batch_size": batch,
    }
    eval_every = every * per_epoch
    validations = sum(  # the rule of `training.fit`
        done % eval_every == 0 or done == num_steps for done in range(1, num_steps + 1)
    )
    per_validation = len(classifier.batch_accuracies([True] * num_test, batch))
    assert report.ema_batches(summary) == validations * per_validation


def test_report_md_paths_are_relative(tmp_path):
    workdir = tmp_path / "runs" / "gp"
    results = _report(workdir, cas_ema_batches=2)
    report.write_report(results, workdir / "eval")
    markdown = (workdir / "eval" / "report.md").read_text()
    assert str(tmp_path) not in markdown and str(pathlib.Path.home()) not in markdown
    assert "# Evaluation of gp" in markdown and "`~/.cache/ssl_vqvae/fcn/GunPoint`" in markdown
    assert "(in `eval/`)" in markdown and "## Notes" in markdown
