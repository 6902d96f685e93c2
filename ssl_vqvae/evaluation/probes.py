"""Linear-probe evaluation of tokenizer representations: SVM and KNN accuracy (SPEC §5.4)."""

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVC

SCALER_RANGE = (-1.0, 1.0)


def _check_split(name: str, features: np.ndarray, labels: np.ndarray) -> None:
    if features.ndim != 2:
        raise ValueError(
            f"{name}_features: expected a 2-D [num_samples, features] array, got {features.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{name}_labels: expected a 1-D [num_samples] array, got {labels.shape}")
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}_labels: expected {features.shape[0]} labels to match {name}_features, "
            f"got {labels.shape[0]}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{name}_features: expected at least one sample")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name}_features: expected finite values, found NaN or inf")


def linear_probe_accuracies(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    knn_k: int = 5,
    svm_c: float = 1.0,
) -> dict[str, float]:
    """Test accuracy of a linear SVM and a KNN fit on train features.

    Features are min-max scaled to [-1, 1] with the scaler fit on the train features only. The SVM
    is `SVC(kernel="linear", C=svm_c)`; the KNN uses Euclidean distance and uniform weights.
    Warning: `knn_k` is silently capped at the number of train samples, so tiny train sets get a
    smaller k than requested.

    Args:
      train_features: [num_train, features], e.g. pooled z_q of the train split.
      train_labels: [num_train] integer class labels (any values; at least two classes).
      test_features: [num_test, features].
      test_labels: [num_test] integer class labels.
      knn_k: number of neighbours.
      svm_c: SVM regularisation strength.

    Returns:
      {"svm_accuracy": float, "knn_accuracy": float}, each in [0, 1].
    """
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    _check_split("train", train_features, train_labels)
    _check_split("test", test_features, test_labels)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"test_features: expected {train_features.shape[1]} features like train_features, "
            f"got {test_features.shape[1]}"
        )
    if np.unique(train_labels).size < 2:
        raise ValueError("train_labels: expected at least two classes")
    if knn_k < 1:
        raise ValueError(f"knn_k: expected a positive integer, got {knn_k}")
    if svm_c <= 0:
        raise ValueError(f"svm_c: expected a positive float, got {svm_c}")

    scaler = MinMaxScaler(feature_range=SCALER_RANGE).fit(train_features)
    train_scaled = scaler.transform(train_features)
    test_scaled = scaler.transform(test_features)

    svm = SVC(kernel="linear", C=svm_c).fit(train_scaled, train_labels)
    knn = KNeighborsClassifier(n_neighbors=min(knn_k, train_features.shape[0]))
    knn.fit(train_scaled, train_labels)
    return {
        "svm_accuracy": float(svm.score(test_scaled, test_labels)),
        "knn_accuracy": float(knn.score(test_scaled, test_labels)),
    }
