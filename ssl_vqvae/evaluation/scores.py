"""Generative-model metrics on classifier outputs: FID and IS (SPEC §5.2).

Both run on host in numpy/scipy (float64) on modest feature sets; they take arrays, so any
feature extractor (normally the FCN of `fcn.py`) can feed them.
"""

import warnings

import numpy as np
import scipy.linalg

SQRTM_EPS = 1e-6
LOG_EPS = 1e-16
PROB_SUM_ATOL = 1e-3


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D [num_samples, features] array, got {features.shape}"
        )
    if features.shape[0] < 2:
        raise ValueError(
            f"{name}: expected at least 2 rows for a covariance, got {features.shape[0]}"
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return features


def _sqrtm_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> np.ndarray:
    """Real part of sqrtm(sigma_a @ sigma_b); NaN/inf entries signal failure to the caller."""
    # Singular covariances (fewer samples than features) are expected here; the caller checks
    # finiteness and regularises, so scipy's singularity warning carries no extra information.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return np.real(scipy.linalg.sqrtm(sigma_a @ sigma_b))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (FID on FCN features).

    `||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))` with sample means and sample
    covariances (`np.cov`, ddof 1). The imaginary part of the matrix square root is dropped; if
    the square root is not finite, `SQRTM_EPS * I` is added to both covariances and it is retried.

    Args:
      features_a: [num_a, features] e.g. features of the real (test) set.
      features_b: [num_b, features] e.g. features of the generated set.

    Returns:
      The distance as a Python float (symmetric in its arguments up to round-off).
    """
    features_a = _check_features("features_a", features_a)
    features_b = _check_features("features_b", features_b)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features_b: expected {features_a.shape[1]} features like features_a, "
            f"got {features_b.shape[1]}"
        )
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(features_b, rowvar=False))

    covmean = _sqrtm_product(sigma_a, sigma_b)
    if not np.all(np.isfinite(covmean)):
        offset = SQRTM_EPS * np.eye(sigma_a.shape[0])
        covmean = _sqrtm_product(sigma_a + offset, sigma_b + offset)
        if not np.all(np.isfinite(covmean)):
            raise ValueError(
                "features: covariance square root is not finite even after regularising"
            )

    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def inception_score(
    probs: np.ndarray, num_splits: int = 10, rng: np.random.Generator | None = None
) -> tuple[float, float]:
    """Inception score of class probabilities, mean and std over `num_splits` parts.

    Rows are permuted by `rng.permutation(num_samples)` when `rng` is given (the input is not
    modified), then cut into `num_splits` equal parts of `num_samples // num_splits` rows, the
    remainder dropped. Each part scores `exp(mean_x KL(p(y|x) || p_bar(y)))` where `p_bar` is
    the part's mean prediction; `LOG_EPS` guards both logarithms.

    Args:
      probs: [num_samples, num_classes] rows of p(y|x), e.g. softmax of FCN logits.
      num_splits: number of parts; the spread over parts is the reported std.
      rng: optional generator for the shuffle.

    Returns:
      (mean, std) over parts, std being the population standard deviation (ddof 0).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(
            f"probs: expected a 2-D [num_samples, num_classes] array, got {probs.shape}"
        )
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs: expected finite non-negative probabilities")
    if not np.allclose(probs.sum(axis=1), 1.0, rtol=0.0, atol=PROB_SUM_ATOL):
        raise ValueError(f"probs: expected every row to sum to 1 (atol {PROB_SUM_ATOL})")
    if num_splits < 1 or probs.shape[0] < num_splits:
        raise ValueError(
            f"num_splits: expected 1 <= num_splits <= {probs.shape[0]} (the number of rows), "
            f"got {num_splits}"
        )
    if rng is not None:
        probs = probs[rng.permutation(probs.shape[0])]

    part_size = probs.shape[0] // num_splits
    parts = probs[: part_size * num_splits].reshape(num_splits, part_size, probs.shape[1])
    marginals = parts.mean(axis=1, keepdims=True)
    kl = np.sum(parts * (np.log(parts + LOG_EPS) - np.log(marginals + LOG_EPS)), axis=2)
    scores = np.exp(kl.mean(axis=1))
    return float(scores.mean()), float(scores.std())
