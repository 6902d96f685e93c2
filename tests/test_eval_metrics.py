"""Tests for FID, IS and the linear probes against closed forms and independent computations."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVC

from ssl_vqvae.evaluation import frechet_distance, inception_score, linear_probe_accuracies


def _with_exact_moments(rng: np.random.Generator, num: int, mean, cov) -> np.ndarray:
    """Samples whose sample mean and sample covariance (ddof 1) equal `mean` and `cov` exactly."""
    z = rng.standard_normal((num, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(np.asarray(cov)).T + np.asarray(mean)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    eigvals, eigvecs = np.linalg.eigh(a)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


# ----------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((200, 8))
    assert abs(frechet_distance(features, features)) < 1e-6


def test_fid_hand_computed_2d_example():
    # S_a, S_b share eigenvectors (1, 1) and (1, -1) with eigenvalues (3, 1) and (1, 9), so
    # sqrt(S_a S_b) has eigenvalues sqrt(3) and 3: FID = |(1, -2)|^2 + 4 + 10 - 2 (sqrt(3) + 3).
    rng = np.random.default_rng(1)
    a = _with_exact_moments(rng, 50, [1.0, 0.0], [[2.0, 1.0], [1.0, 2.0]])
    b = _with_exact_moments(rng, 70, [0.0, 2.0], [[5.0, -4.0], [-4.0, 5.0]])
    np.testing.assert_allclose(frechet_distance(a, b), 13.0 - 2.0 * np.sqrt(3.0), rtol=1e-9)


def test_fid_matches_symmetric_sqrt_formula_for_non_commuting_covariances():
    # tr sqrt(S_a S_b) = tr sqrt(S_a^1/2 S_b S_a^1/2): an independent, symmetric-only computation.
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5)) + 1.0
    b = rng.standard_normal((250, 5)) @ rng.standard_normal((5, 5))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sym_sqrt(sa)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(sa + sb) - 2.0 * np.trace(_sym_sqrt(root_a @ sb @ root_a))
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-8)


def test_fid_of_gaussian_samples_approaches_diagonal_closed_form():
    rng = np.random.default_rng(3)
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 1.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    a = mu_a + np.sqrt(var_a) * rng.standard_normal((50_000, 3))
    b = mu_b + np.sqrt(var_b) * rng.standard_normal((50_000, 3))
    closed_form = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    np.testing.assert_allclose(frechet_distance(a, b), closed_form, atol=0.1)


def test_fid_is_symmetric():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((100, 6)), 2.0 * rng.standard_normal((80, 6)) + 0.3
    np.testing.assert_allclose(frechet_distance(a, b), frechet_distance(b, a), rtol=1e-8)


def test_fid_with_fewer_samples_than_features_is_finite():
    features = np.random.default_rng(5).standard_normal((6, 16))
    fid = frechet_distance(features, features)
    assert np.isfinite(fid) and abs(fid) < 1e-3


def test_fid_regularises_when_the_matrix_sqrt_fails():
    # Exact singular covariances S_a = 2/3 diag(1, 1, 0) and S_b = 2/3 V V^T, for which
    # scipy's sqrtm(S_a S_b) returns NaN. S_a S_b has rank one with eigenvalue (4/9) * 10, so the
    # exact FID is 4/3 + 10 - 2 sqrt(40/9); the eps * I retry is off by O(sqrt(eps)).
    v = np.array([[2.0, 1.0, -2.0], [2.0, 1.0, -1.0]])
    e = np.eye(3)[:2]
    a, b = np.concatenate([e, -e]), np.concatenate([v, -v])
    expected = 4.0 / 3.0 + 10.0 - 2.0 * np.sqrt(40.0 / 9.0)
    np.testing.assert_allclose(frechet_distance(a, b), expected, atol=1e-2)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros(5), np.zeros((5, 2)), "features_a: expected a 2-D"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "features_b: expected 2 features"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "features_a: expected at least 2 rows"),
        (np.zeros((5, 2)), np.full((5, 2), np.nan), "features_b: expected finite"),
    ],
)
def test_fid_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# ----------------------------------------------------------------------------- IS


def _reference_inception_score(probs: np.ndarray, num_splits: int) -> tuple[float, float]:
    part = len(probs) // num_splits
    scores = []
    for i in range(num_splits):
        p = probs[i * part : (i + 1) * part]
        p_bar = p.mean(axis=0)
        kl = [np.sum(row * (np.log(row + 1e-16) - np.log(p_bar + 1e-16))) for row in p]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def test_is_of_uniform_predictions_is_one():
    mean, std = inception_score(np.full((100, 7), 1.0 / 7), rng=np.random.default_rng(0))
    np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)


def test_is_of_evenly_spread_one_hot_predictions_is_num_classes():
    num_classes, num_splits = 4, 5
    # Every part of 2 * num_classes consecutive rows holds each class twice.
    probs = np.tile(np.eye(num_classes), (2 * num_splits, 1))
    mean, std = inception_score(probs, num_splits=num_splits)
    np.testing.assert_allclose([mean, std], [num_classes, 0.0], atol=1e-9)


def test_is_matches_per_split_loop_with_and_without_shuffle():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.full(5, 0.3), size=103)  # remainder of 3 rows is dropped
    original = probs.copy()
    np.testing.assert_allclose(
        inception_score(probs, num_splits=10), _reference_inception_score(probs, 10), rtol=1e-12
    )
    shuffled = probs[np.random.default_rng(7).permutation(len(probs))]
    np.testing.assert_allclose(
        inception_score(probs, num_splits=10, rng=np.random.default_rng(7)),
        _reference_inception_score(shuffled, 10),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(probs, original)


@pytest.mark.parametrize(
    ("probs", "num_splits", "match"),
    [
        (np.full(10, 0.1), 2, "probs: expected a 2-D"),
        (np.full((10, 2), 0.4), 2, "probs: expected every row to sum to 1"),
        (np.tile([1.5, -0.5], (10, 1)), 2, "probs: expected finite non-negative"),
        (np.full((10, 2), 0.5), 11, "num_splits: expected"),
        (np.full((10, 2), 0.5), 0, "num_splits: expected"),
    ],
)
def test_is_rejects_bad_input(probs, num_splits, match):
    with pytest.raises(ValueError, match=match):
        inception_score(probs, num_splits=num_splits)


# ----------------------------------------------------------------------------- probes


def _blobs(rng: np.random.Generator, per_class: int, centers: np.ndarray, scale: float):
    labels = np.repeat(np.arange(len(centers)), per_class)
    return centers[labels] + scale * rng.standard_normal((len(labels), centers.shape[1])), labels


def test_probes_on_separable_data_are_perfect():
    rng = np.random.default_rng(8)
    centers = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 10.0, -5.0]])
    x_train, y_train = _blobs(rng, 20, centers, 0.5)
    x_test, y_test = _blobs(rng, 10, centers, 0.5)
    result = linear_probe_accuracies(x_train, y_train, x_test, y_test)
    assert result == {"svm_accuracy": 1.0, "knn_accuracy": 1.0}


def test_probes_match_independent_sklearn_pipeline_and_ignore_label_values():
    rng = np.random.default_rng(9)
    centers = rng.standard_normal((3, 4))
    x_train, y_train = _blobs(rng, 15, centers, 1.0)
    x_test, y_test = _blobs(rng, 12, centers, 1.0)
    svm = make_pipeline(MinMaxScaler(feature_range=(-1, 1)), SVC(kernel="linear", C=0.5))
    knn = make_pipeline(MinMaxScaler(feature_range=(-1, 1)), KNeighborsClassifier(n_neighbors=3))
    expected = {
        "svm_accuracy": svm.fit(x_train, y_train).score(x_test, y_test),
        "knn_accuracy": knn.fit(x_train, y_train).score(x_test, y_test),
    }
    result = linear_probe_accuracies(x_train, y_train, x_test, y_test, knn_k=3, svm_c=0.5)
    assert result == pytest.approx(expected)
    assert 0.0 < result["svm_accuracy"] < 1.0  # overlapping blobs: a non-trivial comparison

    relabel = np.array([-7, 3, 100])
    relabelled = linear_probe_accuracies(
        x_train, relabel[y_train], x_test, relabel[y_test], knn_k=3, svm_c=0.5
    )
    assert relabelled == result


def test_knn_k_is_capped_at_train_size():
    x_train, y_train = np.array([[0.0], [1.0], [10.0]]), np.array([0, 0, 1])
    result = linear_probe_accuracies(x_train, y_train, np.array([[0.5]]), np.array([0]), knn_k=5)
    assert result == {"svm_accuracy": 1.0, "knn_accuracy": 1.0}


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((4, 2)), np.arange(3), np.zeros((2, 2)), np.arange(2)), {}, "train_labels"),
        ((np.zeros((4, 2)), np.arange(4), np.zeros((2, 3)), np.arange(2)), {}, "test_features"),
        ((np.zeros((4, 2)), np.arange(4), np.zeros((2, 2)), np.zeros((2, 1))), {}, "test_labels"),
        ((np.zeros(4), np.arange(4), np.zeros((2, 2)), np.arange(2)), {}, "train_features"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2)), np.arange(2)), {}, "two classes"),
        ((np.zeros((4, 2)), np.arange(4), np.zeros((2, 2)), np.arange(2)), {"knn_k": 0}, "knn_k"),
    ],
)
def test_probes_reject_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_probe_accuracies(*args, **kwargs)
