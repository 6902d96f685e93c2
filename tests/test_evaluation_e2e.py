"""End-to-end evaluation of the shared tiny experiment, the probe, errors and the reproduce grid.

The session fixture `tiny_experiment` (conftest.py) is exactly the tiny vibcreg-warp seed-1 run
of the grid, so it is copied into a `benchmarks/reproduce.py` grid: the grid resumes both stages
(nothing is left to train) and runs `evaluate_experiment` on it, which is the evaluation that the
tests below inspect. Nothing is written into the fixture itself.
"""

import json
import math
import pathlib
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA

from ssl_vqvae import Experiment, load_ucr, metric_log
from ssl_vqvae.evaluate import evaluate_experiment, linear_probes, stft_round_trip
from ssl_vqvae.evaluation import classifier, report

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402
import thesis_results  # noqa: E402

FCN_EPOCHS, CAS_EPOCHS, SEED, CAS_MIN_SAMPLES = 1, 1, 1, 100
GRID_VARIANTS = ["vqvae", "vibcreg-warp"]
FAKE_METRIC = 0.02
NUMBER_KEYS = {
    "svm_accuracy",
    "knn_accuracy",
    "fid",
    "is_mean",
    "is_std",
    "cas_accuracy",
    "cas_val_acc_ema",
    "fcn_test_accuracy",
    "codebook_usage",
    "token_perplexity",
}
ACCURACY_KEYS = {
    "svm_accuracy",
    "knn_accuracy",
    "cas_accuracy",
    "cas_val_acc_ema",
    "fcn_test_accuracy",
    "codebook_usage",
}
FIGURES = ("real_vs_generated.png", "fcn_features_pca.png", "codebook_usage.png")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fcn_cache")


@pytest.fixture(scope="module")
def grid(tiny_experiment, tmp_path_factory, cache_dir):
    """(settings, records of the first grid call) for GunPoint x (vqvae, vibcreg-warp) x seed 1."""
    root = tmp_path_factory.mktemp("grid")
    settings = reproduce.GridSettings(
        root=root,
        fcn_epochs=FCN_EPOCHS,
        cas_epochs=CAS_EPOCHS,
        tiny=True,
        cache_dir=str(cache_dir),
        cas_min_samples=CAS_MIN_SAMPLES,
    )
    shutil.copytree(tiny_experiment, reproduce.run_dir(root, "GunPoint", "vibcreg-warp", SEED))
    # vqvae/seed1 counts as finished: only its report exists.
    finished = reproduce.run_dir(root, "GunPoint", "vqvae", SEED) / "eval"
    finished.mkdir(parents=True)
    fake = {key: FAKE_METRIC for key, *_ in reproduce.METRICS}
    (finished / "report.json").write_text(json.dumps(fake))
    return settings, reproduce.run_grid(["GunPoint"], GRID_VARIANTS, [SEED], settings)


@pytest.fixture(scope="module")
def evaluated(grid):
    """(workdir, report) of the evaluated tiny experiment."""
    settings, _ = grid
    workdir = reproduce.run_dir(settings.root, "GunPoint", "vibcreg-warp", SEED)
    return workdir, json.loads((workdir / "eval" / "report.json").read_text())


def test_report_has_every_metric_and_finite_values(evaluated):
    workdir, results = evaluated
    assert NUMBER_KEYS <= set(results)
    for key in NUMBER_KEYS:
        assert math.isfinite(results[key]), key
    for key in ACCURACY_KEYS:
        assert 0.0 <= results[key] <= 1.0, key
    assert results["is_mean"] >= 1.0 and results["fid"] >= -1e-6
    assert results["dataset"] == "GunPoint" and results["ssl_method"] == "vibcreg"
    assert results["num_test"] == 150 and results["num_generated"] == 256
    assert results["eval_length"] == 150  # 2 * floor(150 / 2)
    assert results["cas_num_train"] == 100  # 50 GunPoint train series scaled by 2
    assert results["cas_steps"] == CAS_EPOCHS and results["fcn_epochs"] == FCN_EPOCHS


def test_report_files(evaluated):
    workdir, results = evaluated
    out = workdir / "eval"
    assert results["workdir"] == str(workdir) and results["seed"] == SEED
    assert set(results["timings_s"]) >= {"linear probes", "FID and IS", "CAS"}
    markdown = (out / "report.md").read_text()
    assert report.markdown_table(results) in markdown
    assert "| GunPoint | vibcreg (warp) |" in markdown
    for name in FIGURES:
        assert (out / name).stat().st_size > 0, name
    cas_dir = out / "cas" / f"epochs{CAS_EPOCHS}_seed{SEED}"
    assert json.loads((cas_dir / "summary.json").read_text())["num_train"] == 100
    with np.load(cas_dir / "synthetic.npz") as synthetic:
        chex.assert_shape(synthetic["x"], (100, 150, 1))
        np.testing.assert_array_equal(np.bincount(synthetic["y"]), [48, 52])  # 24:26 real


def test_fcn_is_cached_per_dataset(evaluated, cache_dir):
    _, results = evaluated
    fcn_dir = pathlib.Path(results["fcn_dir"])
    assert fcn_dir == cache_dir / "GunPoint" / f"epochs{FCN_EPOCHS}"
    logged = (fcn_dir / "metrics.jsonl").read_text()
    run = classifier.load_or_train_fcn(load_ucr("GunPoint"), cache_dir, num_epochs=FCN_EPOCHS)
    assert (fcn_dir / "metrics.jsonl").read_text() == logged  # restored, not retrained
    assert run.test_accuracy == results["fcn_test_accuracy"]


def test_probe_runs_in_eval_mode_and_leaves_the_tokenizer_unchanged(tiny_experiment, monkeypatch):
    from ssl_vqvae.evaluation.probes import linear_probe_accuracies
    from ssl_vqvae.vqvae import VQVAE

    exp = Experiment.load(tiny_experiment)
    before = jax.tree.map(np.array, exp.tokenizer_variables)
    probed = []

    def spy(train_features, train_labels, test_features, test_labels):
        probed.extend([train_features, test_features])
        return linear_probe_accuracies(train_features, train_labels, test_features, test_labels)

    monkeypatch.setattr("ssl_vqvae.evaluate.linear_probe_accuracies", spy)
    accuracies = linear_probes(exp)
    chex.assert_trees_all_equal(jax.tree.map(np.array, exp.tokenizer_variables), before)
    # Eval mode: each series' features are its own eval-mode representation, computed alone.
    # A train-mode probe (BatchNorm on batch statistics) would make them depend on the batch.
    for features, split in zip(probed, (exp.dataset.train, exp.dataset.test), strict=True):
        for row in (0, len(split) - 1):
            alone = exp.tokenizer.apply(
                exp.tokenizer_variables,
                jnp.asarray(split.x[row : row + 1]),
                train=False,
                method=VQVAE.representation,
            )
            np.testing.assert_allclose(features[row], alone[0], rtol=1e-5, atol=1e-6)
    # Stage 1 ran the same eval-mode probe on its final state.
    final = [
        r for r in metric_log.read_metrics(tiny_experiment / "stage1") if "eval/svm_accuracy" in r
    ]
    assert accuracies["svm_accuracy"] == final[-1]["eval/svm_accuracy"]
    assert accuracies["knn_accuracy"] == final[-1]["eval/knn_accuracy"]


def test_workdir_without_stage2_names_the_missing_folder(tiny_experiment, tmp_path):
    shutil.copytree(tiny_experiment / "stage1", tmp_path / "stage1")
    with pytest.raises(FileNotFoundError, match=r"stage2 not found.*configs/stage2_maskgit.py"):
        evaluate_experiment(tmp_path, fcn_epochs=1, cas_epochs=1)
    with pytest.raises(FileNotFoundError, match=r"stage1 not found.*configs/stage1_vibcreg.py"):
        evaluate_experiment(tmp_path / "empty", fcn_epochs=1, cas_epochs=1)


def test_stft_round_trip_drops_the_last_sample_of_odd_lengths():
    x = np.random.default_rng(0).standard_normal((3, 151, 1)).astype(np.float32)
    y = stft_round_trip(x, 8)
    chex.assert_shape(y, (3, 150, 1))
    np.testing.assert_allclose(y, x[:, :150], atol=1e-5)  # ISTFT(STFT(x)) = x
    np.testing.assert_allclose(stft_round_trip(jnp.asarray(x[:, :150]), 8), x[:, :150], atol=1e-5)


def test_pca_matches_sklearn():
    features = np.random.default_rng(3).standard_normal((40, 6)) * np.arange(1, 7)
    projected, ratio = report.pca_2d(features)
    reference = PCA(n_components=2).fit(features)
    expected = reference.transform(features)
    signs = np.sign(np.sum(projected * expected, axis=0))  # axes are defined up to sign
    np.testing.assert_allclose(projected * signs, expected, atol=1e-8)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-8)


def test_thesis_tables_average_to_the_published_means():
    published_means = {  # the "mean of 13" rows of SPEC §5.5
        "svm_accuracy": (65.4, 74.6, 76.0, 71.3, 74.8, 74.8, 71.2),
        "knn_accuracy": (58.9, 69.1, 71.1, 64.7, 67.3, 69.4, 64.0),
        "fid": (8.92, 9.59, 8.98, 7.92, 8.90, 8.79, 7.72),
        "is_mean": (2.15, 2.47, 2.43, 2.46, 2.48, 2.45, 2.46),
        "cas_val_acc_ema": (75.7, 76.2, 76.5, 78.1, 78.8, 80.1, 81.0),
    }
    for metric, means in published_means.items():
        table = thesis_results.RESULTS[metric]
        assert len(table) == 13
        ours = np.mean([[row[i][0] for i in range(7)] for row in table.values()], axis=0)
        # Both sides are rounded to the published decimals: one unit of the last digit apart.
        np.testing.assert_allclose(ours, means, atol=0.01 if metric in ("fid", "is_mean") else 0.1)
    assert thesis_results.published("fid", "Wafer", "vibcreg-gauss") == (2.84, 0.29)
    assert thesis_results.published("fid", "GunPoint", "vqvae") is None
    assert tuple(reproduce.VARIANTS) == thesis_results.VARIANTS


def test_reproduce_grid_writes_results_and_skips_finished_runs(grid, evaluated):
    settings, records = grid
    run, results = evaluated
    assert [r["skipped"] for r in records] == [True, False]
    assert records[1]["report"] == results
    wall = json.loads((run / reproduce.WALL_TIME_FILE).read_text())
    assert set(wall) == {"stage1_s", "stage2_s", "evaluate_s", "total_s"}
    assert records[0]["wall_time"] is None and records[1]["wall_time"] == wall
    table = (settings.root / "results.md").read_text()
    assert "## FID (lower is better)" in table and "| dataset | vqvae | vibcreg-warp |" in table
    assert "| GunPoint | 2.0±0.0 (n=1) vs — |" in table  # fake SVM 0.02; not a thesis dataset
    assert f"{results['fid']:.2f}±0.00 (n=1) vs —" in table
    assert "| GunPoint | vqvae | 1 | — | — | — | — |" in table

    again = reproduce.run_grid(["GunPoint"], GRID_VARIANTS, [SEED], settings)
    assert [r["skipped"] for r in again] == [True, True]
    assert json.loads((run / reproduce.WALL_TIME_FILE).read_text()) == wall
    assert (settings.root / "results.md").read_text() == table
